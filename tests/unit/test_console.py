"""The console's phrasing: trial lines that fit 120 columns and carry the FP8 share, ETAs from
measured trial times, wrapped sentences, knob differences said once with their values, the
export command, and the short log prefix."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from orchestrator.outputs.console import (
    MESSAGE_WIDTH,
    WIDTH,
    duration,
    eta_seconds,
    kl_with_ci,
    sci,
    trial_line,
    wrap,
)

pytestmark = pytest.mark.unit

RESULT = {
    "kl_mean": 1.19e-4,
    "kl_ci_low": 1.15e-4,
    "kl_ci_high": 1.23e-4,
    "fp8_fraction": 0.25,
    "achieved_bits": 14.0,
}


def _point(control: str = "", strategy: str = "ends_bf16:1") -> SimpleNamespace:
    return SimpleNamespace(
        control=control, effective_bits=14.0, method="gradient", strategy=strategy, coverage=0.25
    )


def test_a_trial_line_gives_the_fp8_share_and_fits_after_its_time_prefix():
    line = trial_line(146, 146, "done", _point("random:19"), RESULT, 1215.0, 1000.0)
    assert line == (
        "146/146 control random:19 b=14 (gradient): FP8 25.0% (14.00 bits), "
        "KL 1.19e-4 [1.15, 1.23] | 1215s, ETA 1000s"
    )
    for p in (_point(), _point("ends_fixed:1")):
        assert len(trial_line(99, 99, "done", p, RESULT, 999.0, None)) <= MESSAGE_WIDTH
    failed = trial_line(3, 9, "FAILED", _point(), {}, 5.0, None)
    assert failed == "3/9 gradient ends_bf16:1 b=14 c=0.25: FAILED | 5s, no ETA yet"


def test_kl_and_its_interval_share_one_power_of_ten():
    assert kl_with_ci(1.92e-5, 1.84e-5, 1.98e-5) == "1.92e-5 [1.84, 1.98]"
    assert kl_with_ci(3.27e-4, 3.17e-4, 3.38e-4) == "3.27e-4 [3.17, 3.38]"
    assert kl_with_ci(float("nan"), 0.0, 1.0) == "nan [0, 1]"
    assert sci(0.000266) == "2.66e-4"


def test_the_eta_comes_from_measured_trial_times_not_from_start_up():
    # two trials of 30 s measured, 10 left, 2 at a time: 150 s whatever the start-up took
    assert eta_seconds([30.0, 30.0], 10, 2) == 150.0
    assert eta_seconds([18.0, 18.0, 6.0, 6.0, 6.0], 10, 2) == 30.0  # the warm-up does not count
    assert eta_seconds([0.0], 10, 2) is None  # only reused results: nothing measured yet
    assert eta_seconds([30.0], 0, 2) == 0.0


def test_wrap_keeps_whole_words_the_text_indent_and_a_continuation_indent():
    text = "  vs random " + " ".join(["word"] * 40)
    lines = wrap(text, 50, " " * 12)
    assert lines[0].startswith("  vs random word") and all(len(x) <= 50 for x in lines)
    assert all(x.startswith(" " * 12 + "word") for x in lines[1:])
    assert " ".join(x.strip() for x in lines) == text.strip()
    assert wrap("short") == ["short"] and duration(519) == "8 min 39 s" and duration(7) == "7 s"


def _entry(name: str, calib: int = 2) -> dict:
    return {
        "name": name,
        "knobs": {"method": "gradient", "num_calib_steps": calib, "num_score_steps": 4},
        "catalog_knobs": {"method": "kl_div", "num_calib_steps": 512, "num_score_steps": 64},
        "knobs_differ_from_catalog": ["method", "num_calib_steps", "num_score_steps"],
    }


def test_knob_differences_are_said_once_with_both_values():
    from orchestrator.outputs.summary import knob_lines

    lines = knob_lines([_entry("top25"), _entry("top50"), _entry("full")])
    assert " ".join(x.strip() for x in lines) == (
        "knobs unlike the catalog's recommendation, all schemes: method gradient (catalog: "
        "kl_div), num_calib_steps 2 (catalog: 512), num_score_steps 4 (catalog: 64)"
    )
    apart = knob_lines([_entry("top25"), _entry("top50", calib=8)])
    assert sum("top50" in x for x in apart) == 1 and all(len(x) <= WIDTH for x in apart)


def test_the_summary_ends_with_the_export_command_and_offers_the_knee(tmp_path):
    from orchestrator.outputs.summary import closing_lines

    done = SimpleNamespace(
        selection=SimpleNamespace(knee=object()),
        entries=(_entry("fp8_autoquant_top25"), _entry("fp8_autoquant_top50")),
    )
    lines = closing_lines(done, tmp_path, 519.4)  # type: ignore[arg-type]
    assert "--scheme takes fp8_autoquant_top25, fp8_autoquant_top50, knee" in lines[1]
    assert lines[-3:] == [
        f"  python -m orchestrator.export --output {tmp_path} \\",
        "      --scheme fp8_autoquant_top50 --dest checkpoints/fp8_autoquant_top50",
        "done in 8 min 39 s (wall time, start-up included)",
    ]


def test_export_finds_the_knee_by_name_when_the_sweep_wrote_its_plan(tmp_path: Path):
    from orchestrator.core.config import ConfigError
    from orchestrator.export.checkpoint import find_scheme

    knee = {"name": "knee", "plan_hash": "k1", "modules": "plans/k1.json"}
    doc = {"schemes": [{"name": "top25"}], "knee": knee, "front": ["k1"]}
    (tmp_path / "schemes.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    assert find_scheme(tmp_path, "knee") == knee
    with pytest.raises(ConfigError, match="choose one of top25, knee"):
        find_scheme(tmp_path, "kne")


def test_the_console_prefix_is_the_time_and_the_worker_and_the_level_only_when_not_info():
    from orchestrator.runtime.logs import ConsoleFormatter

    def record(level: int) -> logging.LogRecord:
        return logging.LogRecord("orchestrator.x", level, __file__, 1, "hello %s", ("you",), None)

    info = ConsoleFormatter("worker 1").format(record(logging.INFO))
    assert info.endswith(" [worker 1] hello you") and len(info) == len(
        "00:00:00 [worker 1] hello you"
    )
    assert ConsoleFormatter().format(record(logging.WARNING)).endswith(" WARNING hello you")

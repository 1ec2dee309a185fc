"""Every entry point answers a bad flag, a bad value and bad input the same way
(``orchestrator/cli.py``): exit 2, exactly one line on stderr, and no torch, Ray or MLflow loaded
to say so.

Each case runs ``python -m <entry point>`` as a user would, with Python's import-time report on
stderr: its lines are set aside to count the user's lines, and read to see what was imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit

HEAVY = {"torch", "ray", "mlflow", "transformers", "modelopt"}
# a command that imports none of HEAVY starts in about a second; torch alone takes longer than this
FAST_S = 15

# (entry point, arguments, what the one line says); {tmp} is the test's empty folder
CASES = [
    ("orchestrator.sweep", ["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
    (
        "orchestrator.sweep",
        ["--output", "{tmp}/out", "--set", "data.batch_size=two"],
        "--set data.batch_size=two: Input should be a valid integer",
    ),
    ("orchestrator.sweep", ["--set", "seed"], "--set 'seed': expected KEY=VALUE"),
    ("orchestrator.select", ["--output", "{tmp}", "--bogus-flag"], "unrecognized arguments"),
    ("orchestrator.select", ["--output", "{tmp}", "--max-kl", "abc"], "invalid float value"),
    ("orchestrator.select", ["--output", "{tmp}"], "{tmp}: no finished sweep"),
    ("orchestrator.select", [], "the following arguments are required: --output"),
    (
        "orchestrator.select",
        ["--output", "{tmp}", "--set", "seed=1"],
        "--set seed=1: select takes --set selection.max_kl, selection.objective, "
        "selection.catalog only",
    ),
    (
        "orchestrator.select",
        ["--output", "{tmp}", "--max-kl", "1e-4", "--set", "selection.max_kl=1e-3"],
        "--max-kl 0.0001 and --set selection.max_kl=1e-3 both set selection.max_kl; give one",
    ),
    (
        "orchestrator.compare_sweeps",
        ["--output", "{tmp}", "--against", "{tmp}", "--bogus-flag"],
        "unrecognized arguments",
    ),
    (
        "orchestrator.compare_sweeps",
        ["--output", "{tmp}", "--against", "{tmp}", "--objective", "ppl"],
        "argument --objective: invalid choice: 'ppl'",
    ),
    (
        "orchestrator.compare_sweeps",
        ["--output", "{tmp}", "--against", "{tmp}", "--set", "selection.objective=ppl"],
        "--set selection.objective=ppl: use one of kl_mean, image_kl_mean",
    ),
    (
        "orchestrator.compare_sweeps",
        ["--output", "{tmp}", "--against", "{tmp}"],
        "--output {tmp}: no finished sweep",
    ),
    ("orchestrator.compare_sweeps", ["--output", "{tmp}"], "missing --against"),
    ("orchestrator.compare_sweeps", ["{tmp}", "{tmp}"], "--output {tmp}: no finished sweep"),
    ("orchestrator.export", ["--check", "{tmp}", "--bogus-flag"], "unrecognized arguments"),
    ("orchestrator.export", ["--check", "{tmp}", "--format", "onnx"], "invalid choice: 'onnx'"),
    ("orchestrator.export", ["--scheme", "x"], "missing --output, --dest (or use --check DIR)"),
    ("orchestrator.export", ["--measure", "{tmp}"], "--measure {tmp}: no scheme.json"),
    ("orchestrator.export", ["--measure", "{tmp}/none"], "--measure {tmp}/none: not a folder"),
    (
        "orchestrator.export",
        ["--output", "{tmp}", "--scheme", "x", "--dest", "{tmp}/ckpt", "--set", "seed=1"],
        "--set seed=1: export takes no --set key",
    ),
    (
        "orchestrator.export",
        ["--output", "{tmp}", "--scheme", "x", "--dest", "{tmp}/ckpt"],
        "--output {tmp}: no schemes.yaml",
    ),
]


@pytest.mark.parametrize(
    ("module", "args", "needle"), CASES, ids=[f"{m[13:]}:{' '.join(a)}" for m, a, _ in CASES]
)
def test_bad_input_exits_2_with_one_line_and_no_heavy_import(tmp_path, module, args, needle):
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", module, *(a.format(tmp=tmp_path) for a in args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - start
    report = [ln for ln in proc.stderr.splitlines() if ln.startswith("import time:")]
    said = [ln for ln in proc.stderr.splitlines() if not ln.startswith("import time:")]
    imported = {ln.rsplit("|", 1)[-1].strip().split(".")[0] for ln in report}
    assert proc.returncode == 2, proc.stdout[-2000:] + "\n".join(said)[-2000:]
    assert len(said) == 1 and said[0].startswith("error: "), said
    assert needle.format(tmp=tmp_path) in said[0]
    assert not imported & HEAVY and took < FAST_S, (sorted(imported & HEAVY), took)
    assert not (tmp_path / "out").exists() and not (tmp_path / "ckpt").exists()


def _parsers() -> dict[str, object]:
    """Every entry point's parser, built in process (none imports torch, Ray or MLflow)."""
    from orchestrator import compare_sweeps, select, sweep
    from orchestrator.export import __main__ as export

    return {
        "sweep": sweep.parser(),
        "select": select.parser(),
        "compare_sweeps": compare_sweeps.parser(),
        "export": export.parser(),
    }


@pytest.mark.parametrize("name", ["sweep", "select", "compare_sweeps", "export"])
def test_every_entry_point_takes_output_set_and_verbose(name):
    """One grammar (issue 27): the sweep folder is --output everywhere, overrides are --set,
    the libraries' output is --verbose; --help shows --set's syntax with this command's keys."""
    text = _parsers()[name].format_help()
    for flag in ("--output DIR", "--set KEY=VALUE", "--verbose"):
        assert flag in text, text
    assert "--set KEY=VALUE overrides one config key" in text or "takes no config key" in text


def test_the_sweeps_help_shows_set_with_a_list_and_a_nested_key():
    text = _parsers()["sweep"].format_help()
    epilog = text[text.index("--set KEY=VALUE overrides") :]
    assert "--set search.coverage=[0.5,1.0]" in epilog  # a list
    assert "--set scoring.num_score_steps=8" in epilog  # a nested key
    assert "--set 'controls={random_seeds: 1, inverse: false}'" in epilog  # a section's fields


def test_a_flag_and_its_set_key_are_one_setting():
    """``select --max-kl`` is ``--set selection.max_kl``: both reach the same key, and a message
    about the value names the one the user typed."""
    from orchestrator.core.config import ConfigError, load_config, override_config

    p = _parsers()["select"]
    by_flag = p.overrides(p.parse_args(["--output", "x", "--max-kl", "1e-4"]), max_kl=1e-4)
    by_set = p.overrides(p.parse_args(["--output", "x", "--set", "selection.max_kl=1e-4"]))
    cfg = load_config()
    assert override_config(cfg, by_flag, "c.yaml") == override_config(cfg, by_set, "c.yaml")
    assert override_config(cfg, by_flag, "c.yaml").selection.max_kl == 1e-4
    zero = p.overrides(p.parse_args(["--output", "x", "--max-kl", "0"]), max_kl=0.0)
    with pytest.raises(ConfigError, match=r"^--max-kl 0.0: Input should be greater than 0$"):
        override_config(cfg, zero, "c.yaml")


def test_mlproject_runs_every_entry_point_with_the_clis_flags_and_defaults():
    """MLproject is the command line seen from ``mlflow run`` (issue 27: it lacked compare_sweeps
    and contradicted export's defaults): every entry point, each parameter one of its flags, each
    default the flag's. A parameter without a default is one the command needs; ``set`` defaults
    to the empty pair, which sets nothing."""
    import shlex

    import yaml

    from orchestrator.core.config import DEMO_CONFIG, load_config

    # what the CLI does with a flag left out, where that is not the flag's own default
    computed = {
        ("sweep", "config"): str(DEMO_CONFIG.relative_to(ROOT)),
        ("sweep", "output"): f"runs/{load_config(DEMO_CONFIG).name}",
    }
    doc = yaml.safe_load((ROOT / "MLproject").read_text())
    parsers = _parsers()
    assert set(doc["entry_points"]) == set(parsers)
    for name, entry in doc["entry_points"].items():
        argv = shlex.split(entry["command"])
        assert argv[:3] == ["python", "-m", f"orchestrator.{name}"]
        p = parsers[name]
        for param, spec in entry["parameters"].items():
            flag = f"--{param.replace('_', '-')}"
            assert flag in p._option_string_actions, (name, flag)
            assert argv[argv.index(flag) + 1] == f"{{{param}}}", (name, param)
            default = p.get_default(param)
            expected = "" if param == "set" else computed.get((name, param), default)
            if expected is None:
                assert "default" not in spec, (name, param)
            else:
                assert str(spec["default"]) == str(expected), (name, param)


def test_the_readme_has_one_exit_code_table_with_every_code():
    from orchestrator.cli import ExitCode

    text = (ROOT / "README.md").read_text()
    assert text.count("| exit | meaning | from |") == 1
    table = text[text.index("| exit | meaning | from |") :].split("\n\n")[0].splitlines()[2:]
    codes = {int(row.split("|")[1]) for row in table}
    assert codes == {int(c) for c in ExitCode} >= {128 + 2, 128 + 15}

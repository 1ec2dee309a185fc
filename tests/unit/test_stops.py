"""SIGTERM and SIGINT end a command with 143 and 130 and one line (``runtime/stops.py``), the
gentle way when a stage registered one, and within the grace when the clean stop is stuck; and
the one line that names the trials a sweep's schemes were chosen without (``core/missing.py``).

Each signal case is a real process sent a real signal; none starts Ray (the e2e reliability
tests do, ``tests/e2e/test_reliability.py``)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from orchestrator.core.missing import missing_entries, missing_line
from orchestrator.core.records import TrialResult
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

# a command (cli.command) that says "ready", then sleeps (the default) or waits the way a sweep's
# Tune round does: a gentle stop asked, then raise_if_stopped once the work notices
COMMAND = """
import sys, time
from pathlib import Path
from orchestrator import cli
from orchestrator.runtime import stops

@cli.command
def main() -> int:
    mode = sys.argv[1]
    if mode == "sleep":
        print("ready", flush=True)
        time.sleep(60)
        return 0
    if mode == "stuck":  # the gentle stop never comes: the watchdog ends it
        stops.GRACE_SECONDS = 1.0
        released = Path(sys.argv[2])
        with stops.on_overrun(lambda: released.write_text("released")):
            with stops.gently(lambda: True):
                print("ready", flush=True)
                time.sleep(60)
        return 0
    asked = []
    with stops.gently(lambda: asked.append(1) or True):
        print("ready", flush=True)
        deadline = time.monotonic() + 60
        while not asked and time.monotonic() < deadline:
            time.sleep(0.05)
    print("gently", flush=True)
    stops.raise_if_stopped()
    return 0

sys.exit(main())
"""


def _signalled(sig: int, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    proc = subprocess.Popen(
        [sys.executable, "-c", COMMAND, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), time.monotonic() - t0


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_a_command_with_128_plus_it_and_one_line(sig, code):
    proc, _ = _signalled(sig, "sleep")
    assert proc.returncode == code
    assert proc.stderr == f"stopped by {signal.Signals(sig).name}\n"


def test_a_gentle_stop_lets_the_stage_finish_its_step_then_unwinds():
    proc, _ = _signalled(signal.SIGTERM, "gently")
    assert proc.returncode == 143
    assert proc.stdout == "gently\n"  # the stage went on to its own end first
    assert proc.stderr == "stopped by SIGTERM\n"


def test_a_stop_stuck_past_the_grace_releases_and_exits_all_the_same(tmp_path):
    released = tmp_path / "released"
    proc, seconds = _signalled(signal.SIGTERM, "stuck", str(released))
    assert proc.returncode == 143 and seconds < 20
    assert released.read_text() == "released"
    assert "the clean stop took over 1s" in proc.stderr + proc.stdout


def _result(bits: float, status: str, error: str = "") -> TrialResult:
    return TrialResult(
        plan_hash=f"{int(bits):02d}" + "ab" * 31,
        method="kl_div",
        fp8_recipe="FP8_DEFAULT_CFG",
        effective_bits=bits,
        coverage=1.0,
        achieved_bits=bits,
        fp8_fraction=0.5,
        status=status,
        metrics={},
        mlflow_run_id="",
        error=error,
    )


def test_the_missing_line_names_every_failed_trial_by_point_and_plan():
    results = [
        _result(8, "FINISHED"),
        _result(11, "FAILED", "WorkerLost: ..."),
        _result(12, "FAILED"),
    ]
    line = missing_line(results)
    assert line is not None
    assert line.startswith("the schemes were chosen without 2 trial(s) that failed: ")
    assert "b=11 c=1 kl_div solve (plan 11ababab), b=12 c=1 kl_div solve (plan 12ababab);" in line
    assert line.endswith("run the same command again to retry them (finished trials are kept)")
    assert [e["error"] for e in missing_entries(results)] == ["WorkerLost: ...", ""]
    assert missing_line(results[:1]) is None and missing_entries(results[:1]) == []


def test_every_entry_point_logs_under_a_name_the_console_shows():
    """``python -m`` runs an entry point as ``__main__``, which the console filter leaves out
    (``runtime/logs.py``): an entry point names its logger."""
    for path in (ROOT / "orchestrator").rglob("*.py"):
        text = path.read_text()
        if path.name == "__main__.py" or 'if __name__ == "__main__":' in text:
            assert "getLogger(__name__)" not in text, path

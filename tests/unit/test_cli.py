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
        "data.batch_size='two': Input should be a valid integer",
    ),
    ("orchestrator.select", ["--output", "{tmp}", "--bogus-flag"], "unrecognized arguments"),
    ("orchestrator.select", ["--output", "{tmp}", "--max-kl", "abc"], "invalid float value"),
    ("orchestrator.select", ["--output", "{tmp}"], "{tmp}: no finished sweep"),
    ("orchestrator.compare_sweeps", ["{tmp}", "{tmp}", "--bogus-flag"], "unrecognized arguments"),
    (
        "orchestrator.compare_sweeps",
        ["{tmp}", "{tmp}", "--objective", "ppl"],
        "argument --objective: invalid choice: 'ppl'",
    ),
    ("orchestrator.compare_sweeps", ["{tmp}", "{tmp}"], "A={tmp}: no finished sweep"),
    ("orchestrator.export", ["--check", "{tmp}", "--bogus-flag"], "unrecognized arguments"),
    ("orchestrator.export", ["--check", "{tmp}", "--format", "onnx"], "invalid choice: 'onnx'"),
    ("orchestrator.export", ["--scheme", "x"], "missing --output, --dest (or use --check DIR)"),
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

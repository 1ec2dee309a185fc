"""Process set-up that local Ray workers depend on."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import pytest

from orchestrator.core.records import Point

pytestmark = pytest.mark.unit


def test_checkout_root_goes_on_pythonpath_for_local_ray_workers(monkeypatch) -> None:
    """Workers inherit the environment, not sys.path, and the driver leaves the checkout."""
    from orchestrator.core.config import PROJECT_ROOT
    from orchestrator.search.ray_env import export_package_path

    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    export_package_path()
    export_package_path()  # idempotent

    parts = os.environ["PYTHONPATH"].split(os.pathsep)
    assert parts == [str(PROJECT_ROOT.resolve()), "/somewhere/else"]


_DIVERT = """
import logging, os, sys, warnings
from pathlib import Path
from orchestrator.runtime.logs import divert_output, setup_logging
setup_logging()
restore = divert_output(Path(sys.argv[1]))
logging.getLogger("orchestrator.sweep").info("ours")
logging.getLogger("ray.tune").warning("theirs")
warnings.warn("a library warning")
print("forwarded worker line")  # Ray prints forwarded worker stdout to sys.stdout
os.write(1, b"C++ on fd 1\\n")
os.write(2, b"C++ on fd 2\\n")
print("python stderr", file=sys.stderr)
restore()
print("summary")
"""


def test_diverted_output_keeps_the_sweeps_lines_on_the_console_and_the_rest_in_the_file(
    tmp_path,
) -> None:
    import subprocess
    import sys

    log = tmp_path / "logs" / "driver.log"
    proc = subprocess.run(
        [sys.executable, "-c", _DIVERT, str(log)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    console = proc.stdout.splitlines()
    assert console[0].split(" ", 1)[1] == "ours"  # the time, then the message
    assert console[1:] == ["forwarded worker line", "summary"]
    assert proc.stderr == ""
    text = log.read_text()
    for line in ("ours", "theirs", "a library warning", "C++ on fd 1", "C++ on fd 2"):
        assert line in text, line
    assert "python stderr" in text and "summary" not in text


_ROUTE = """
import logging, os, sys
from orchestrator.runtime.logs import route_worker_output
route_worker_output(sys.argv[1], "worker 3")
route_worker_output(sys.argv[1], "worker 3")  # once per process
logging.getLogger("orchestrator.model.scoring").info("scored a shard")
logging.getLogger("modelopt").warning("theirs")
print("Inserted 153 quantizers")
os.write(2, b"bar 1/2\\n")
"""


def test_a_worker_sends_only_its_sweep_records_to_stdout_and_the_rest_to_its_file(tmp_path):
    import subprocess
    import sys

    log = tmp_path / "worker-3.log"
    proc = subprocess.run(
        [sys.executable, "-c", _ROUTE, str(log)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith(" [worker 3] scored a shard\n")  # short: no level, no logger
    assert len(proc.stdout.splitlines()) == 1 and proc.stderr == ""
    text = log.read_text()
    for line in ("scored a shard", "theirs", "Inserted 153 quantizers", "bar 1/2"):
        assert line in text, line


def test_fault_hooks_are_off_unless_the_tests_switch_them_on(monkeypatch) -> None:
    """Outside the test suite nothing reads faults: no variable, no import."""
    from orchestrator.runtime.hooks import HOOKS_ENV, fault_hooks
    from tests import faults

    monkeypatch.delenv(HOOKS_ENV, raising=False)
    assert fault_hooks() is None
    for key, value in faults.fault_env(nan_on_bits=[12]).items():
        monkeypatch.setenv(key, value)
    assert fault_hooks() is faults
    plan = SimpleNamespace(plan_hash="p", fp8_modules=("m",))
    (nan, _), (fine, _) = (
        faults.evaluate(_point(b), plan, lambda: ({"kl_mean": 0.1}, {}))
        for b in (12.0, 14.0)
    )
    assert math.isnan(nan["kl_mean"]) and fine["kl_mean"] == 0.1


def _point(bits: float) -> Point:
    return Point(
        method="gradient",
        fp8_recipe="FP8_DEFAULT_CFG",
        effective_bits=bits,
        coverage=1.0,
        strategy="solve",
        control="",
    )


def test_process_age_counts_from_the_orchestrator_not_from_a_shell_that_exec_ed_into_python():
    """`bash -c 'pip install ... && python -m orchestrator.sweep'`: bash execs its last command,
    so the process started with the install; "done in" and "after start" must not count it."""
    import subprocess
    import sys

    code = "from orchestrator.runtime.host import process_age; print(process_age())"
    proc = subprocess.run(
        ["bash", "-c", f"sleep 2 && {sys.executable} -c '{code}'"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert 0 <= float(proc.stdout) < 1.5, proc.stdout

"""Faults for the reliability and cluster tests, injected into a real sweep's trials and workers.

A test passes :func:`fault_env` to the sweep's environment; the product then imports this module
in its trial and worker processes (``orchestrator.runtime.hooks``) and calls :func:`evaluate` around
each trial's measurement and :func:`worker_evaluates` in the worker. Faults are keyed by a trial's
effective bits; a "once" fault leaves a marker file (``<plan hash>.<fault>``) in ``markers`` so the
retry runs clean. Without :func:`fault_env`'s variables nothing here runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.core.records import Plan, Point
from orchestrator.runtime.hooks import HOOKS_ENV

SPEC_ENV = "FP8_SWEEP_TEST_FAULTS"  # this module's faults, as JSON
KILLED = 137  # the exit status the OOM killer leaves behind
HELD_PID = "held_worker.pid"  # in ``markers``: the held worker's pid, for the test to kill
HOLD_SECONDS = 300.0  # a held worker that nobody kills goes on after this (the test fails)

T = TypeVar("T")


@dataclass(frozen=True)
class Faults:
    markers: str = ""  # folder of the "once" faults' markers (needed by those only)
    raise_on_bits: tuple[float, ...] = ()  # the trial raises, every attempt
    nan_on_bits: tuple[float, ...] = ()  # the trial measures NaN KL
    kill_on_bits: tuple[float, ...] = ()  # the trial process dies, every attempt
    kill_once_on_bits: tuple[float, ...] = ()  # ... on the first attempt only
    kill_worker_once_on_bits: tuple[float, ...] = ()  # the worker dies mid-evaluation, once
    # the worker that takes the plan, once, writes its pid to ``held_worker.pid`` in ``markers``
    # and waits in mid-evaluation for the test to kill it (a real SIGKILL from outside)
    hold_worker_once_on_bits: tuple[float, ...] = ()
    sleep_seconds: float = 0.0  # every trial sleeps this long first (slow-trial tests)


def fault_env(markers: Path | None = None, **faults: Any) -> dict[str, str]:
    """The environment that switches these faults on in a sweep, e.g.
    ``fault_env(tmp_path / "faults", raise_on_bits=[15])`` or ``fault_env(sleep_seconds=2)``."""
    known = {f.name for f in fields(Faults)} - {"markers"}
    assert set(faults) <= known, f"unknown faults {sorted(set(faults) - known)}"
    assert markers or not any("once" in k for k in faults), "a once fault needs markers"
    spec = {**faults, "markers": str(markers or "")}
    return {HOOKS_ENV: __name__, SPEC_ENV: json.dumps(spec)}


def _faults() -> Faults:
    spec = json.loads(os.environ[SPEC_ENV])
    return Faults(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})


def _first_time(faults: Faults, name: str) -> bool:
    """True once per name: the marker file says it already happened."""
    marker = Path(faults.markers) / name
    if marker.exists():
        return False
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(name)
    return True


def _request(faults: Faults, fp8_modules: Sequence[str], what: str = "kill_worker") -> Path:
    """Where a trial asks the worker that measures its plan to die or to hold still (the worker
    knows the modules, not the plan hash)."""
    key = hashlib.sha256(json.dumps(list(fp8_modules)).encode()).hexdigest()[:16]
    return Path(faults.markers) / f"{key}.{what}"


def evaluate(
    point: Point, plan: Plan, measure: Callable[[], tuple[dict[str, Any], T]]
) -> tuple[dict[str, Any], T]:
    """The trial's faults around its measurement (``measure``)."""
    faults = _faults()
    bits, plan_hash = point.effective_bits, plan.plan_hash

    def hit(values: Sequence[float]) -> bool:
        return any(abs(bits - b) < 1e-9 for b in values)

    time.sleep(faults.sleep_seconds)
    if hit(faults.raise_on_bits):
        raise RuntimeError(f"injected fault at effective_bits={bits}")
    if hit(faults.kill_on_bits):
        os._exit(KILLED)
    if hit(faults.kill_once_on_bits) and _first_time(faults, f"{plan_hash}.killed"):
        os._exit(KILLED)
    if hit(faults.kill_worker_once_on_bits) and _first_time(faults, f"{plan_hash}.worker_killed"):
        _request(faults, plan.fp8_modules).write_text(plan_hash)
    if hit(faults.hold_worker_once_on_bits) and _first_time(faults, f"{plan_hash}.worker_held"):
        _request(faults, plan.fp8_modules, "hold_worker").write_text(plan_hash)
    metrics, where = measure()
    if hit(faults.nan_on_bits):
        metrics["kl_mean"] = float("nan")
    return metrics, where


def worker_evaluates(fp8_modules: Sequence[str]) -> None:
    """The worker's faults: it dies before measuring a plan some trial asked it to die on, or
    says its pid and waits to be killed."""
    faults = _faults()
    request = _request(faults, fp8_modules)
    if request.exists():
        request.unlink()
        os._exit(KILLED)
    hold = _request(faults, fp8_modules, "hold_worker")
    if hold.exists():
        hold.unlink()
        pid = Path(faults.markers) / HELD_PID
        pid.with_suffix(".tmp").write_text(str(os.getpid()))
        pid.with_suffix(".tmp").rename(pid)  # whole, never half-written, when the test reads it
        time.sleep(HOLD_SECONDS)

"""The Ray Tune run: one trial per point, as many at once as there are workers, with progress lines.

Resume: the same output folder restores the Tuner (``Tuner.can_restore``/``Tuner.restore``);
finished trials are not run again. Grid points go to Tune as a ``grid_search`` over whole points;
the optional Optuna searcher is seeded with them.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from orchestrator.core.planning import plan_for
from orchestrator.core.records import Point, ScoreTable, TrialResult
from orchestrator.outputs.console import eta_seconds, trial_line
from orchestrator.runtime import stops
from orchestrator.search.trial import TrialContext, point_of, trainable
from orchestrator.search.write_watch import StopOnWriteFailure

log = logging.getLogger(__name__)


class Progress(tune.Callback):
    """A line per finished trial: the overall count, the trial's FP8 share, bits and KL, the time
    so far and an ETA from the measured trial times (startup and reused results do not skew it).

    The count includes the trials a resumed experiment had already finished (the first step says
    how many), and the elapsed time is this run's: Tune restores its callbacks from the
    experiment's pickle, so each run starts afresh in :meth:`setup`.
    """

    def __init__(self, total: int, concurrent: int = 1) -> None:
        self.total = total
        self.concurrent = concurrent
        self.setup()

    def setup(
        self,
        stop: Any = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        self.t0 = time.monotonic()
        self.seconds: list[float] = []
        self.finished: set[str] = set()  # trial ids, restored ones included
        self.before: int | None = None  # finished when this run began (known at its first step)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self.before is None:
            # TERMINATED: finished (a restored ERROR trial runs again: resume_errored)
            self.finished = {t.trial_id for t in trials if t.status == "TERMINATED"}
            self.before = len(self.finished)
            if self.before:
                log.info(
                    "%d of %d trial(s) already done; running the rest", self.before, self.total
                )

    def _line(self, trial: Any, status: str) -> None:
        self.finished.add(trial.trial_id)
        done = len(self.finished)
        r = trial.last_result or {}
        if not r.get("reused"):
            self.seconds.append(float(r.get("trial_seconds", 0.0)))
        remaining = max(self.total - done, 0)
        eta = eta_seconds(self.seconds, remaining, min(self.concurrent, remaining or 1))
        elapsed = time.monotonic() - self.t0
        line = trial_line(done, self.total, status, point_of(trial.config), r, elapsed, eta)
        log.info("%s", line)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, "done")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, "FAILED")


@dataclass(frozen=True)
class TuneSettings:
    storage_path: Path
    name: str
    max_failures: int
    cpus_per_trial: float
    searcher: str
    num_samples: int
    seed: int
    objective: str = "kl_mean"  # what Optuna minimises beside the achieved bits


def _searcher(
    settings: TuneSettings, points: Sequence[Point], space: Mapping[str, Sequence[Any]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(param_space, TuneConfig kwargs) for a grid of points or Optuna seeded with them."""
    if settings.searcher == "grid":
        return {"point": tune.grid_search([p.to_dict() for p in points])}, {}
    from ray.tune.search.optuna import OptunaSearch

    bits = space["effective_bits"]
    param_space = {
        "effective_bits": tune.uniform(min(bits), max(bits)),
        "coverage": tune.choice(list(space["coverage"])),
        "method": tune.choice(list(space["method"])),
        "fp8_recipe": tune.choice(list(space["fp8_recipe"])),
        "strategy": tune.choice(list(space["strategy"])),
    }
    seeds = [{k: p.to_dict()[k] for k in param_space} for p in points]  # Optuna's dimensions only
    algo = OptunaSearch(
        metric=["achieved_bits", settings.objective],
        mode=["min", "min"],
        points_to_evaluate=seeds,
        seed=settings.seed,
    )
    return param_space, {"search_alg": algo, "num_samples": len(points) + settings.num_samples}


def run_trials(
    ctx: TrialContext,
    points: Sequence[Point],
    space: Mapping[str, Sequence[Any]],
    settings: TuneSettings,
    workers: int,
) -> list[TrialResult]:
    """One Tune trial per point, ``workers`` at a time: each borrows a worker for its evaluation.

    The trials themselves are light (planning, MLflow, the call): they reserve ``cpus_per_trial``
    CPUs; the GPUs belong to the workers.
    """
    resources = {"cpu": settings.cpus_per_trial}
    fn = tune.with_resources(tune.with_parameters(trainable, ctx=ctx), resources)
    param_space, extra = _searcher(settings, points, space)
    path = settings.storage_path / settings.name
    total = extra.get("num_samples", len(points))
    if tune.Tuner.can_restore(str(path)):
        log.info("resuming Tune experiment at %s", path)
        tuner = tune.Tuner.restore(
            str(path), trainable=fn, resume_errored=True, param_space=param_space
        )
    else:
        tuner = tune.Tuner(
            fn,
            param_space=param_space,
            tune_config=tune.TuneConfig(max_concurrent_trials=workers, reuse_actors=True, **extra),
            run_config=tune.RunConfig(
                name=settings.name,
                storage_path=str(settings.storage_path),
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                callbacks=[Progress(total, workers), StopOnWriteFailure(settings.storage_path)],
                verbose=0,
            ),
        )
    log.info("%d trial(s), %d at a time on %d worker(s)", total, workers, workers)
    with _stops_gently():
        grid = tuner.fit()
    if stops.received():  # SIGTERM or SIGINT ended the round: nothing is concluded from it
        log.warning("%s: Tune ended the round and saved its state", stops.name())
        stops.raise_if_stopped()
    # ResultGrid iterates through __len__/__getitem__, which its types do not declare iterable
    return [_to_result(r, ctx.tables) for r in grid]  # type: ignore[attr-defined]


@contextmanager
def _stops_gently() -> Iterator[None]:
    """While Tune runs, SIGTERM and SIGINT ask it to end its loop (``runtime/stops.py``).

    Tune then saves the experiment's state with every trial finished so far, and ``fit`` returns;
    running trials stay unfinished and run again on resume. Tune installs the handler that does
    this on SIGUSR1 when ``fit`` starts (and on SIGINT, which ``ray_env`` turns off), and never
    removes it: SIGUSR1 is reset before ``fit`` so that an earlier round's stale handler is not
    mistaken for this one's (until Tune installs its own, a signal stops abruptly instead), and
    restored after it.
    """
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGUSR1)
    if main:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)

    def ask_tune() -> bool:
        handler = signal.getsignal(signal.SIGUSR1)
        if not callable(handler) or getattr(handler, "__module__", "") != "ray.tune.tune":
            return False
        handler(signal.SIGUSR1, None)  # no logging here: the handler may interrupt a log call
        return True

    with stops.gently(ask_tune):
        try:
            yield
        finally:
            if main:
                signal.signal(signal.SIGUSR1, previous)


def _to_result(r: Any, tables: Mapping[str, ScoreTable]) -> TrialResult:
    """A Tune result as a record; failed trials get their plan re-derived (planning is pure)."""
    m = dict(r.metrics or {})
    p = point_of(r.config)
    plan = plan_for(p, tables)
    numeric = {
        k: float(v) for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    status = "FAILED" if r.error is not None else "FINISHED"
    metrics = {k: v for k, v in numeric.items() if k not in {"achieved_bits", "fp8_fraction"}}
    err = "" if r.error is None else str(r.error).strip().splitlines()[-1][:2000]
    return TrialResult(
        plan_hash=plan.plan_hash,
        method=p.method,
        fp8_recipe=p.fp8_recipe,
        effective_bits=float(p.effective_bits),
        coverage=float(p.coverage),
        achieved_bits=plan.achieved_bits,
        fp8_fraction=plan.fp8_fraction,
        status=status,
        metrics=metrics if status == "FINISHED" else {},
        mlflow_run_id=str(m.get("mlflow_run_id", "")),
        error=err,
        kind="control" if p.control else "trial",
        strategy=p.strategy or "solve",  # a control's row: "solve", as trials.parquet always had
        control=p.control,
        per_sequence=_per_sequence(m) if status == "FINISHED" else {},
        numerics=str(m.get("numerics") or "") if status == "FINISHED" else "",
    )


def _per_sequence(m: Mapping[str, Any]) -> dict[str, tuple[float, ...]]:
    """The per-sequence sums a trial reported (Tune may hand them back nested or flattened)."""
    nested = m.get("per_sequence")
    if not isinstance(nested, Mapping):
        prefix = "per_sequence/"
        nested = {k[len(prefix) :]: v for k, v in m.items() if k.startswith(prefix)}
    return {k: tuple(float(x) for x in v) for k, v in nested.items() if isinstance(v, list)}

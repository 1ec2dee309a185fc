"""The only ``import ray``: the GPU workers, scoring on them, the Tune trainable, the Tuner, progress.

* One long-lived worker per GPU (``WorkerPool``; ``search.max_concurrent`` CPU workers without
  GPUs), created as soon as Ray is up: each imports ModelOpt and loads the model once, scores the
  shards it is given, then keeps a calibrated model resident for the trials
  (``orchestrator.worker``). A process per GPU pays start-up once, not once for scoring and again
  for trials, and the trials' calibration happens before the first trial needs it.
* Scoring: ``scoring.shards`` per (method, FP8 recipe) setup, sent to the workers in turn, each
  scoring its share of the batches; the driver adds them up and caches the table on the (shared)
  output folder.
* Trials are Ray Tune trials, ``workers`` at a time: each plans its point, opens its MLflow child
  run and borrows a free worker through the dispatcher (an async actor) for the evaluation. They
  reserve ``cpus_per_trial`` CPUs; the workers reserve the GPUs. The score tables, the data's object
  ref and the tracking target reach trials through ``tune.with_parameters`` (the object store):
  nothing is read from the driver's disk, so trials run the same on any node.
* Inside trials only ``ray.tune`` APIs are used (``tune.report``, ``tune.get_checkpoint``);
  ``ray.train.*`` raises there in Ray 2.60.
* Resume: the same output folder restores the Tuner (``Tuner.can_restore``/``Tuner.restore``);
  finished trials are not run again, and a trial whose MLflow child already FINISHED reports the
  stored metrics instead of evaluating.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray import tune
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from orchestrator.config import FaultConfig, ModelConfig
from orchestrator.planning import plan_point
from orchestrator.records import Plan, ScoreTable, TrialResult

if TYPE_CHECKING:  # MLflow is imported where trials log, not before Ray starts
    from orchestrator.tracking import TrackingTarget

log = logging.getLogger(__name__)

POINT_KEYS = ("method", "fp8_recipe", "effective_bits", "coverage", "baseline")
OBJECTIVES = ("achieved_bits", "kl_mean")


class NonFiniteMetric(RuntimeError):
    """A trial produced NaN/inf; failing loudly keeps adaptive searchers from stalling."""


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs, shipped once through the object store."""

    data: list[Any]  # [ObjectRef of the DataSets]: nested, so Ray hands the ref on, not the data
    data_hashes: Mapping[str, str]
    dispatcher: Any  # lends a worker per evaluation (``WorkerPool``)
    tables: Mapping[str, ScoreTable]  # by "method|recipe"
    tracking: TrackingTarget
    run_tags: Mapping[str, str]  # git commit, library versions: on every child run
    fault: FaultConfig
    fault_dir: str
    reference_cache_bytes: int


def table_key(method: str, recipe: str) -> str:
    return f"{method}|{recipe}"


def connect(address: str | None, node_ip: str | None = None) -> None:
    """Join ``address`` or start a local instance; loopback-pinned when ``node_ip`` is given."""
    kwargs: dict[str, Any] = {"log_to_driver": True}
    if node_ip:
        kwargs["_node_ip_address"] = node_ip
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(include_dashboard=False, **kwargs)
    res = ray.cluster_resources()
    log.info(
        "Ray: %d node(s), %g CPU, %g GPU",
        len([n for n in ray.nodes() if n.get("Alive")]),
        res.get("CPU", 0),
        res.get("GPU", 0),
    )


def put(obj: Any) -> Any:
    """``obj`` in the object store, once, for every worker and trial to read."""
    return ray.put(obj)


def cluster_gpus() -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()


# --- the workers ----------------------------------------------------------------------------------


def _worker_actor() -> type:
    """The Ray actor class around :class:`orchestrator.worker.Worker` (torch is imported here only,
    not in the driver's or the trials' imports of this module)."""
    from orchestrator.worker import Worker

    class GpuWorker(Worker):
        def where(self) -> dict[str, Any]:
            return {**_here(), **self.startup}

        def evaluate_here(self, *args: Any) -> tuple[dict[str, float], dict[str, str]]:
            return self.evaluate(*args), _here()

    return GpuWorker


def _here() -> dict[str, str]:
    return {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname()}


class _Dispatcher:
    """Lends each trial a free worker and takes it back, also when the trial or the worker dies.

    An async actor: a trial's call waits here until a worker is free. The worker is returned in
    ``finally``, so a trial process that dies mid-call cannot keep one, and a worker that dies
    (Ray restarts it) fails only the trial it was running.
    """

    def __init__(self, workers: Sequence[Any]) -> None:
        self.workers = list(workers)
        self.free: asyncio.Queue | None = None

    async def evaluate(self, data: list[Any], *args: Any) -> Any:
        if self.free is None:
            self.free = asyncio.Queue()
            for w in self.workers:
                self.free.put_nowait(w)
        w = await self.free.get()
        try:
            return await w.evaluate_here.remote(data[0], *args)
        finally:
            self.free.put_nowait(w)


@dataclass
class WorkerPool:
    """One long-lived worker per GPU (or ``count`` CPU workers), started as soon as Ray is up."""

    workers: list[Any]
    dispatcher: Any
    startup: list[Any]  # refs: each worker's node, ModelOpt import and load seconds
    prepared: list[Any] = field(default_factory=list)  # refs: each worker's evaluator build

    @classmethod
    def start(cls, model: ModelConfig, count: int, gpus: bool, threads: int) -> WorkerPool:
        """Create the actors; each imports ModelOpt and loads the model while the driver goes on.

        Workers reserve a GPU each (no CPUs: the trials reserve those) and are placed node by node
        (:func:`worker_nodes`). Ray restarts a worker that dies: a GPU worker wherever a GPU is free
        if its node is gone; a CPU worker, which reserves nothing, only on its own node (Ray would
        otherwise put every one of them on the driver's node).
        """
        actor = ray.remote(_worker_actor())
        nodes = worker_nodes(count, gpus)
        log.info("%d worker(s), placed on node(s) %s", count, [n[:8] for n in nodes])
        workers = [
            actor.options(
                num_gpus=1 if gpus else 0,
                num_cpus=0,
                max_restarts=-1,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=gpus),
            ).remote(model, threads)
            for node in nodes
        ]
        dispatcher = ray.remote(_Dispatcher).options(num_cpus=0, max_restarts=-1).remote(workers)
        return cls(workers, dispatcher, [w.where.remote() for w in workers])

    def prepare(self, data_ref: Any, fp8_recipe: str, reference_cache_bytes: int) -> None:
        """Every worker builds its resident evaluator once the work already sent to it is done."""
        self.prepared = [
            w.prepare.remote(data_ref, fp8_recipe, reference_cache_bytes) for w in self.workers
        ]

    def log_startup(self) -> list[dict[str, Any]]:
        """Each worker's start-up (and evaluator build, when prepared): logged and returned."""
        infos = [_get_or_empty(r) for r in self.startup]
        built = [_get_or_empty(r) for r in self.prepared] or [{}] * len(infos)
        out = []
        for i, (info, b) in enumerate(zip(infos, built, strict=True)):
            if not info:  # the worker died before it could say (Ray restarted it)
                continue
            out.append({"worker": i, **info, **b})
            log.info(
                "worker %d on %s: ModelOpt import %.1fs, model load %.1fs%s",
                i,
                info["hostname"],
                info["import_seconds"],
                info["load_seconds"],
                ""
                if not b
                else f", quantizer insertion {b['setup_seconds']:.1f}s, calibration "
                f"{b['calibration_seconds']:.1f}s, reference {b['reference_seconds']:.1f}s",
            )
        return out


def worker_nodes(count: int, gpus: bool) -> list[str]:
    """The node of each worker: one slot per GPU of each node, or the nodes in turn without GPUs.

    Ray's own spreading does not separate actors that reserve nothing, so the driver places them.
    """
    alive = sorted(
        (n for n in ray.nodes() if n.get("Alive")), key=lambda n: n.get("NodeManagerAddress", "")
    )
    slots = (
        [n["NodeID"] for n in alive for _ in range(int(n["Resources"].get("GPU", 0)))]
        if gpus
        else [n["NodeID"] for n in alive if n["Resources"].get("CPU", 0) > 0]
    ) or [n["NodeID"] for n in alive]
    return [slots[i % len(slots)] for i in range(count)]


def _get_or_empty(ref: Any) -> dict[str, Any]:
    try:
        return dict(ray.get(ref))
    except ray.exceptions.RayError:
        return {}


def worker_count(max_concurrent: int | None) -> tuple[int, bool]:
    """(workers, on GPUs): one per GPU, or ``max_concurrent`` (default 1) without GPUs."""
    gpus = cluster_gpus()
    if gpus:
        return min(max_concurrent or gpus, gpus), True
    return max_concurrent or 1, False


# --- scoring --------------------------------------------------------------------------------------


def scoring_shards(shards: int | str, num_score_steps: int, workers: int = 1) -> int:
    """Shards per setup: ``auto`` is one per worker (so one per GPU), at most the score steps."""
    n = workers if shards == "auto" else int(shards)
    return max(1, min(n, num_score_steps))


def run_scoring(
    pool: WorkerPool,
    data_ref: Any,
    setups: Sequence[Any],
    cache_dir: Path,
    shards: int | str = 1,
) -> list[ScoreTable]:
    """Every setup's shards sent to the workers at once, in turn, one after another per worker.

    The driver adds each setup's shards up (``scoring.merge_shards``; one shard is the whole
    setup) and caches the table in ``cache_dir``.
    """
    from orchestrator.scoring import merge_shards, save, shard_indices

    n = len(pool.workers)
    pending: list[list[Any]] = []
    turn = 0
    for s in setups:
        refs = []
        for piece in shard_indices(s.num_score_steps, scoring_shards(shards, s.num_score_steps, n)):
            worker = pool.workers[turn % n]
            refs.append(worker.score.options(max_task_retries=1).remote(data_ref, s, piece))
            turn += 1
        pending.append(refs)
    if any(len(p) > 1 for p in pending):
        log.info("scoring %s shard(s) per setup", [len(p) for p in pending])
    out = []
    for refs in pending:
        parts = [(ScoreTable.from_dict(g["table"]), g["state"]) for g in ray.get(refs)]
        table, state = merge_shards(parts)
        save(table, state, cache_dir)
        out.append(table)
    return out


# --- the trainable --------------------------------------------------------------------------------


def _inject_fault(fault: FaultConfig, bits: float, plan_hash: str, fault_dir: str) -> str | None:
    """Test-only faults, keyed by the trial's effective bits; "once" faults leave a marker file.

    Returns "nan" (the trial measures NaN), "kill_worker" (the worker dies mid-evaluation, as a GPU
    process killed for memory would) or None.
    """

    def hit(values: Sequence[float]) -> bool:
        return any(abs(bits - b) < 1e-9 for b in values)

    def first_time(kind: str) -> bool:
        marker = Path(fault_dir) / f"{plan_hash}.{kind}"
        if marker.exists():
            return False
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(kind)
        return True

    time.sleep(fault.sleep_seconds)
    if hit(fault.raise_on_bits):
        raise RuntimeError(f"injected fault at effective_bits={bits}")
    if hit(fault.kill_on_bits):
        os._exit(137)  # what the OOM killer leaves behind
    if hit(fault.kill_once_on_bits) and first_time("killed"):
        os._exit(137)
    if hit(fault.kill_worker_once_on_bits) and first_time("worker_killed"):
        return "kill_worker"
    return "nan" if hit(fault.nan_on_bits) else None


def _finite_or_fail(metrics: Mapping[str, float]) -> None:
    bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise NonFiniteMetric(
            f"non-finite metrics {bad}; the trial fails instead of reporting them"
        )


def point_of(config: Mapping[str, Any]) -> dict[str, Any]:
    raw = {"baseline": "", **(config.get("point") or config)}
    return {k: raw[k] for k in POINT_KEYS}


def _report_with_checkpoint(result: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as d:
        Path(d, "result.json").write_text(json.dumps(result))
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))


def trainable(config: dict[str, Any], ctx: TrialContext) -> None:
    """One point: plan it, measure it (or reuse what is stored), log the child run, report."""
    from orchestrator import tracking

    ckpt = tune.get_checkpoint()
    if ckpt is not None:  # restored after the driver died between report and bookkeeping
        with ckpt.as_directory() as d:
            tune.report(json.loads(Path(d, "result.json").read_text()))
        return
    t0 = time.perf_counter()
    point = point_of(config)
    plan = plan_point(ctx.tables[table_key(point["method"], point["fp8_recipe"])], point)
    params = {**point, "plan_hash": plan.plan_hash, "budget_met": plan.budget_met}
    tags = {
        "plan_hash": plan.plan_hash,
        "kind": "baseline" if point["baseline"] else "trial",
        "ray_node_id": ray.get_runtime_context().get_node_id(),
        **{f"data_hash.{k}": v for k, v in ctx.data_hashes.items()},
    }
    try:
        run_id, stored = tracking.start_child(
            ctx.tracking,
            plan.plan_hash,
            f"b{point['effective_bits']:g}-c{point['coverage']:g}",
            params,
            {**tags, **ctx.run_tags},
        )
    except Exception as e:  # noqa: BLE001 - the store is down: measure now, log later
        log.warning("tracking unavailable (%s); the driver will log this trial", e)
        run_id, stored = "", None
    base = {"plan_hash": plan.plan_hash, "mlflow_run_id": run_id}
    if stored is not None:
        where = {"node_id": tags["ray_node_id"], "hostname": socket.gethostname()}
        _report_with_checkpoint({**stored, **base, **where, "reused": 1.0, "logged": 1.0})
        return
    try:
        fault = _inject_fault(ctx.fault, point["effective_bits"], plan.plan_hash, ctx.fault_dir)
        metrics, where = ray.get(
            ctx.dispatcher.evaluate.remote(
                ctx.data,
                plan.fp8_recipe,
                ctx.reference_cache_bytes,
                list(plan.fp8_modules),
                fault == "kill_worker",
            )
        )
        if fault == "nan":
            metrics["kl_mean"] = math.nan
        metrics.update(plan_metrics(plan))
        metrics["trial_seconds"] = time.perf_counter() - t0
        _finite_or_fail(metrics)
    except BaseException as e:
        if run_id:
            tracking.fail_child(
                ctx.tracking, run_id, "".join(traceback.format_exception_only(e)).strip()
            )
        raise
    logged = 0.0
    if run_id:
        try:
            tracking.finish_child(
                ctx.tracking,
                run_id,
                metrics,
                {"plan.json": plan.to_dict()},
                {"ray_node_id": where["node_id"], "hostname": where["hostname"]},
            )
            logged = 1.0
        except Exception as e:  # noqa: BLE001 - results are kept in Tune; the driver retries
            log.warning("could not log trial %s (%s); the driver will retry", plan.plan_hash, e)
    _report_with_checkpoint({**metrics, **base, **where, "reused": 0.0, "logged": logged})


def plan_metrics(plan: Plan) -> dict[str, float]:
    return {
        "achieved_bits": plan.achieved_bits,
        "fp8_fraction": plan.fp8_fraction,
        "lm_bytes": float(plan.lm_bytes),
        "model_bytes": float(plan.model_bytes),
        "num_fp8_modules": float(len(plan.fp8_modules)),
    }


# --- the tuner ------------------------------------------------------------------------------------


class Progress(tune.Callback):
    """A line per finished trial, with an overall count, elapsed time and ETA."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.t0 = time.monotonic()

    def _line(self, trial: Any, status: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.t0
        eta = elapsed / self.done * max(self.total - self.done, 0)
        p = point_of(trial.config)
        r = trial.last_result or {}
        kl = r.get("kl_mean", float("nan"))
        bar = "#" * int(20 * self.done / max(self.total, 1))
        log.info(
            "[%-20s] %d/%d %s b=%g c=%g %s -> bits %.2f kl %.3g top1 %.4f | %.0fs elapsed, ETA %.0fs",
            bar,
            self.done,
            self.total,
            status,
            p["effective_bits"],
            p["coverage"],
            p["method"],
            r.get("achieved_bits", float("nan")),
            kl,
            r.get("top1_agreement", float("nan")),
            elapsed,
            eta,
        )

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


def _searcher(
    settings: TuneSettings, points: Sequence[Mapping[str, Any]], space: Mapping[str, Sequence[Any]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(param_space, TuneConfig kwargs) for a grid of points or Optuna seeded with them."""
    if settings.searcher == "grid":
        return {"point": tune.grid_search([point_of(p) for p in points])}, {}
    from ray.tune.search.optuna import OptunaSearch

    bits = space["effective_bits"]
    param_space = {
        "effective_bits": tune.uniform(min(bits), max(bits)),
        "coverage": tune.choice(list(space["coverage"])),
        "method": tune.choice(list(space["method"])),
        "fp8_recipe": tune.choice(list(space["fp8_recipe"])),
    }
    seeds = [{k: point_of(p)[k] for k in param_space} for p in points]  # Optuna's dimensions only
    algo = OptunaSearch(
        metric=list(OBJECTIVES),
        mode=["min", "min"],
        points_to_evaluate=seeds,
        seed=settings.seed,
    )
    return param_space, {"search_alg": algo, "num_samples": len(points) + settings.num_samples}


def run_trials(
    ctx: TrialContext,
    points: Sequence[Mapping[str, Any]],
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
                callbacks=[Progress(total)],
                verbose=0,
            ),
        )
    log.info("%d trial(s), %d at a time on %d worker(s)", total, workers, workers)
    grid = tuner.fit()
    return [_to_result(r, ctx.tables) for r in grid]


def _to_result(r: Any, tables: Mapping[str, ScoreTable]) -> TrialResult:
    """A Tune result as a record; failed trials get their plan re-derived (planning is pure)."""
    m = dict(r.metrics or {})
    p = point_of(r.config)
    plan = plan_point(tables[table_key(p["method"], p["fp8_recipe"])], p)
    numeric = {
        k: float(v) for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    status = "FAILED" if r.error is not None else "FINISHED"
    metrics = {k: v for k, v in numeric.items() if k not in {"achieved_bits", "fp8_fraction"}}
    err = "" if r.error is None else str(r.error).strip().splitlines()[-1][:2000]
    return TrialResult(
        plan_hash=plan.plan_hash,
        method=p["method"],
        fp8_recipe=p["fp8_recipe"],
        effective_bits=float(p["effective_bits"]),
        coverage=float(p["coverage"]),
        achieved_bits=plan.achieved_bits,
        fp8_fraction=plan.fp8_fraction,
        status=status,
        metrics=metrics if status == "FINISHED" else {},
        mlflow_run_id=str(m.get("mlflow_run_id", "")),
        error=err,
        kind="baseline" if p["baseline"] else "trial",
        baseline=p["baseline"],
    )

"""The only ``import ray``: scoring tasks, the Tune trainable, resources, the Tuner, progress.

* Scoring runs as Ray tasks, on a GPU each when the cluster has GPUs: one per (method, FP8 recipe),
  or ``scoring.shards`` per setup, each scoring its share of the batches (the driver adds them up).
  Tables come back through the object store and are cached on the (shared) output folder.
* Each trial gets one whole GPU (``tune.with_resources``); fractional GPUs give no memory
  isolation. Without GPUs a trial takes ``cpus_per_trial`` CPUs. ``max_concurrent_trials`` is the
  cluster's GPU count unless the config says otherwise.
* The trainable receives the score tables, data and tracking target through
  ``tune.with_parameters`` (the object store): nothing is read from the driver's disk, so trials
  run the same on any node. Actors are reused so the calibrated model stays resident per worker,
  built and evaluated on one long-lived thread (``trial.on_model_thread``).
* Inside trials only ``ray.tune`` APIs are used (``tune.report``, ``tune.get_checkpoint``);
  ``ray.train.*`` raises there in Ray 2.60.
* Resume: the same output folder restores the Tuner (``Tuner.can_restore``/``Tuner.restore``);
  finished trials are not run again, and a trial whose MLflow child already FINISHED reports the
  stored metrics instead of evaluating.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune

from orchestrator import tracking
from orchestrator.config import FaultConfig, ModelConfig
from orchestrator.data import DataSets
from orchestrator.planning import plan_point
from orchestrator.records import Plan, ScoreTable, TrialResult

log = logging.getLogger(__name__)

POINT_KEYS = ("method", "fp8_recipe", "effective_bits", "coverage", "baseline")
OBJECTIVES = ("achieved_bits", "kl_mean")


class NonFiniteMetric(RuntimeError):
    """A trial produced NaN/inf; failing loudly keeps adaptive searchers from stalling."""


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs, shipped once through the object store."""

    model: ModelConfig
    data: DataSets
    tables: Mapping[str, ScoreTable]  # by "method|recipe"
    tracking: tracking.TrackingTarget
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


def cluster_gpus() -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()


# --- scoring --------------------------------------------------------------------------------------


def _score_remote(
    model: ModelConfig, data: DataSets, setup: Any, indices: Sequence[int]
) -> dict[str, Any]:
    """One shard of a setup (all its score batches when unsharded): its table and search state."""
    from orchestrator.profiles import load_model
    from orchestrator.scoring import score_shard
    from orchestrator.trial import default_device

    device = default_device()
    net, profile = load_model(
        model.source, device, model.dtype, model.revision, model.trust_remote_code
    )
    table, state = score_shard(net, profile, data.score, setup, indices, device)
    return {"table": table.to_dict(), "state": state}


def scoring_shards(shards: int | str, num_score_steps: int) -> int:
    """Shards per setup: ``auto`` is the cluster's GPU count (1 without GPUs), at most the steps."""
    n = max(cluster_gpus(), 1) if shards == "auto" else int(shards)
    return max(1, min(n, num_score_steps))


def run_scoring(
    model: ModelConfig,
    data: DataSets,
    setups: Sequence[Any],
    cache_dir: Path,
    shards: int | str = 1,
) -> list[ScoreTable]:
    """Every setup's shards as tasks at once, each on a GPU when the cluster has any.

    The driver adds each setup's shards up (``scoring.merge_shards``; one shard is the whole
    setup) and caches the table in ``cache_dir``.
    """
    from orchestrator.scoring import merge_shards, save, shard_indices

    gpus = 1 if cluster_gpus() else 0
    task = ray.remote(_score_remote).options(num_gpus=gpus, num_cpus=1, max_retries=1)
    data_ref = ray.put(data)
    pending = [
        [
            task.remote(model, data_ref, s, piece)
            for piece in shard_indices(s.num_score_steps, scoring_shards(shards, s.num_score_steps))
        ]
        for s in setups
    ]
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
    """Test-only faults, keyed by the trial's effective bits; "kill once" leaves a marker file."""

    def hit(values: Sequence[float]) -> bool:
        return any(abs(bits - b) < 1e-9 for b in values)

    time.sleep(fault.sleep_seconds)
    if hit(fault.raise_on_bits):
        raise RuntimeError(f"injected fault at effective_bits={bits}")
    if hit(fault.kill_on_bits):
        os._exit(137)  # what the OOM killer leaves behind
    if hit(fault.kill_once_on_bits):
        marker = Path(fault_dir) / f"{plan_hash}.killed"
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("killed once")
            os._exit(137)
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
    from orchestrator.trial import evaluate_resident

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
        **{f"data_hash.{k}": v for k, v in ctx.data.hashes().items()},
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
    base = {
        "plan_hash": plan.plan_hash,
        "mlflow_run_id": run_id,
        "node_id": ray.get_runtime_context().get_node_id(),
        "hostname": socket.gethostname(),
    }
    if stored is not None:
        _report_with_checkpoint({**stored, **base, "reused": 1.0, "logged": 1.0})
        return
    try:
        fault = _inject_fault(ctx.fault, point["effective_bits"], plan.plan_hash, ctx.fault_dir)
        metrics = evaluate_resident(
            ctx.model, ctx.data, plan.fp8_recipe, ctx.reference_cache_bytes, plan.fp8_modules
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
            tracking.finish_child(ctx.tracking, run_id, metrics, {"plan.json": plan.to_dict()})
            logged = 1.0
        except Exception as e:  # noqa: BLE001 - results are kept in Tune; the driver retries
            log.warning("could not log trial %s (%s); the driver will retry", plan.plan_hash, e)
    _report_with_checkpoint({**metrics, **base, "reused": 0.0, "logged": logged})


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
    max_concurrent: int | None
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
) -> list[TrialResult]:
    gpus = cluster_gpus()
    resources = (
        {"cpu": settings.cpus_per_trial, "gpu": 1} if gpus else {"cpu": settings.cpus_per_trial}
    )
    concurrency = settings.max_concurrent or max(gpus, 1)
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
            tune_config=tune.TuneConfig(
                max_concurrent_trials=concurrency, reuse_actors=True, **extra
            ),
            run_config=tune.RunConfig(
                name=settings.name,
                storage_path=str(settings.storage_path),
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                callbacks=[Progress(total)],
                verbose=0,
            ),
        )
    log.info("%d trial(s), %d at a time, %s per trial", total, concurrency, resources)
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

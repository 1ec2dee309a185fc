"""The Ray Tune trainable: one point of the space, planned, measured on a borrowed worker, logged.

* A trial plans its point (planning is pure), opens its MLflow child run and borrows a free worker
  through the dispatcher (``orchestrator.search.pool``) for the evaluation. It reserves
  ``cpus_per_trial`` CPUs; the workers reserve the GPUs. The score tables, the data's object ref
  and the tracking target reach trials through ``tune.with_parameters`` (the object store):
  nothing is read from the driver's disk, so trials run the same on any node.
* Inside trials only ``ray.tune`` APIs are used (``tune.report``, ``tune.get_checkpoint``);
  ``ray.train.*`` raises there in Ray 2.60.
* A trial whose MLflow child already FINISHED reports the stored metrics instead of evaluating,
  and a trial restored from its checkpoint re-reports its result.
* A worker that dies under the evaluation is the dispatcher's to handle (it runs the evaluation
  again once a worker is back): what fails a trial, and spends its retries, is its own error.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray import tune

from orchestrator.core.objectives import REPORT
from orchestrator.core.planning import plan_for
from orchestrator.core.records import Plan, Point, ScoreTable, stable_seed
from orchestrator.core.stats import ratio_ci
from orchestrator.runtime.hooks import fault_hooks

if TYPE_CHECKING:  # MLflow is imported where trials log, not before Ray starts
    from orchestrator.tracking.client import TrackingTarget


log = logging.getLogger(__name__)

NUMERICS = "numerics"  # the worker's label of what it ran (core/numerics.py): a tag and a column


def bootstrap_seed(seed: int, plan_hash: str) -> int:
    """A trial's bootstrap seed: from the sweep seed and its plan, never from trial order."""
    return stable_seed(seed, plan_hash)


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
    reference_cache_bytes: int
    seed: int  # the sweep's: with the plan hash it seeds each trial's bootstrap
    verbose: bool = False  # every library's output on the console, not only the sweep's records


def _finite_or_fail(metrics: Mapping[str, float]) -> None:
    bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise NonFiniteMetric(
            f"non-finite metrics {bad}; the trial fails instead of reporting them"
        )


def point_of(config: Mapping[str, Any]) -> Point:
    """A trial's point from its Tune config: ``{"point": point.to_dict()}`` from the grid, or the
    dimensions Optuna sampled, at the top level."""
    return Point.from_dict(config.get("point") or config)


def run_name(point: Point) -> str:
    """The MLflow run name: what the point is, readable in the runs table."""
    if point.control:
        return f"control-{point.control}-b{point.effective_bits:.3f}"
    strategy = "" if point.strategy == "solve" else f"-{point.strategy}"
    return f"{point.method}-b{point.effective_bits:g}-c{point.coverage:g}{strategy}"


def error_bars(per_sequence: Mapping[str, Sequence[float]], seed: int) -> dict[str, float]:
    """95% bootstrap intervals of KL and top-1 agreement over the evaluation sequences: all of
    them, and the text and image+text ones apart (``text_``, ``image_``) when both are there; the
    same over the report set's documents (``report_``)."""
    out = {}
    for prefix in (f"{part}{m}" for part in ("", REPORT) for m in ("", "text_", "image_")):
        if f"{prefix}kl" not in per_sequence:
            continue
        tokens = per_sequence[f"{prefix}tokens"]
        kl = ratio_ci(per_sequence[f"{prefix}kl"], tokens, seed)
        top1 = ratio_ci(per_sequence[f"{prefix}agree"], tokens, seed)
        out.update(
            {
                f"{prefix}kl_ci_low": kl.low,
                f"{prefix}kl_ci_high": kl.high,
                f"{prefix}top1_ci_low": top1.low,
                f"{prefix}top1_ci_high": top1.high,
            }
        )
    return out


def _report_with_checkpoint(result: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as d:
        Path(d, "result.json").write_text(json.dumps(result))
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))


def _stored_result(ckpt: Any) -> dict[str, Any] | None:
    """The result a checkpoint holds, or None when its file is missing, empty or cut short
    (Tune persisted it while the disk was full)."""
    with ckpt.as_directory() as d:
        try:
            stored = json.loads(Path(d, "result.json").read_text())
        except (OSError, ValueError):
            return None
    return stored if isinstance(stored, dict) else None


def trainable(config: dict[str, Any], ctx: TrialContext) -> None:
    """One point: plan it, measure it (or reuse what is stored), log the child run, report."""
    from orchestrator.runtime.logs import route_worker_output
    from orchestrator.tracking import client

    route_worker_output(None, "trial", ctx.verbose)  # the driver keeps the rest in its log file

    ckpt = tune.get_checkpoint()
    if ckpt is not None:  # restored after the driver died between report and bookkeeping
        stored = _stored_result(ckpt)
        if stored is not None:
            tune.report(stored)
            return
        # a checkpoint a full disk cut short reads as none: the plan is measured again
    t0 = time.perf_counter()
    point = point_of(config)
    plan = plan_for(point, ctx.tables)
    params = {**point.to_dict(), "plan_hash": plan.plan_hash, "budget_met": plan.budget_met}
    tags = {
        "kind": "control" if point.control else "trial",
        "ray_node_id": ray.get_runtime_context().get_node_id(),
        **{f"data_hash.{k}": v for k, v in ctx.data_hashes.items()},
    }
    try:
        run_id, stored = client.start_child(
            ctx.tracking,
            plan.plan_hash,
            run_name(point),
            params,
            {**tags, **ctx.run_tags},
        )
    except Exception as e:  # noqa: BLE001 - the store is down: measure now, log later
        log.warning("tracking unavailable (%s); the driver will log this trial", e)
        run_id, stored = "", None
    base = {"plan_hash": plan.plan_hash, "mlflow_run_id": run_id}
    if stored is not None:
        where = {"node_id": tags["ray_node_id"], "hostname": socket.gethostname()}
        per_seq = client.child_dict(ctx.tracking, run_id, client.PER_SEQUENCE_ARTIFACT)
        numerics = client.child_tag(ctx.tracking, run_id, NUMERICS)
        stored_result = {
            **stored,
            **({"per_sequence": per_seq} if per_seq else {}),
            **({NUMERICS: numerics} if numerics else {}),
        }
        _report_with_checkpoint({**stored_result, **base, **where, "reused": 1.0, "logged": 1.0})
        return
    try:
        metrics, where = _measure(ctx, point, plan)
        per_seq = metrics.pop("per_sequence")
        numerics = str(metrics.pop(NUMERICS, ""))  # what the worker ran: a tag, not a metric
        metrics.update(error_bars(per_seq, bootstrap_seed(ctx.seed, plan.plan_hash)))
        metrics.update(plan_metrics(plan))
        metrics["trial_seconds"] = time.perf_counter() - t0
        _finite_or_fail(metrics)
    except BaseException as e:
        if run_id:
            client.fail_child(
                ctx.tracking, run_id, "".join(traceback.format_exception_only(e)).strip()
            )
        raise
    logged = 0.0
    if run_id:
        try:
            client.finish_child(
                ctx.tracking,
                run_id,
                metrics,
                {"plan.json": plan.to_dict(), client.PER_SEQUENCE_ARTIFACT: per_seq},
                {
                    "ray_node_id": where["node_id"],
                    "hostname": where["hostname"],
                    **({NUMERICS: numerics} if numerics else {}),
                },
            )
            logged = 1.0
        except Exception as e:  # noqa: BLE001 - results are kept in Tune; the driver retries
            log.warning("could not log trial %s (%s); the driver will retry", plan.plan_hash, e)
    result = {**metrics, "per_sequence": per_seq, NUMERICS: numerics, **base, **where}
    _report_with_checkpoint({**result, "reused": 0.0, "logged": logged})


def _measure(ctx: TrialContext, point: Point, plan: Plan) -> tuple[dict[str, Any], dict[str, str]]:
    """The plan measured on a borrowed worker; under the reliability tests, through their faults
    (``orchestrator.runtime.hooks``)."""

    def measure() -> tuple[dict[str, Any], dict[str, str]]:
        return ray.get(
            ctx.dispatcher.evaluate.remote(
                ctx.data,
                plan.fp8_recipe,
                ctx.reference_cache_bytes,
                list(plan.fp8_modules),
                label=f"{run_name(point)} (plan {plan.plan_hash[:8]})",
            )
        )

    hooks = fault_hooks()
    return measure() if hooks is None else hooks.evaluate(point, plan, measure)


def plan_metrics(plan: Plan) -> dict[str, float]:
    return {
        "achieved_bits": plan.achieved_bits,
        "fp8_fraction": plan.fp8_fraction,
        "lm_bytes": float(plan.lm_bytes),
        "model_bytes": float(plan.model_bytes),
        "num_fp8_modules": float(len(plan.fp8_modules)),
    }

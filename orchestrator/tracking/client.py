"""The only ``import mlflow``: one parent run per sweep, one child run per trial, the artifacts.

The driver creates the parent run *before* Ray starts. Each trial opens its own child run with
``MlflowClient`` and the parent's id (``mlflow.parentRunId``), not through ``MLflowLoggerCallback``
or ``setup_mlflow``, which lose artifacts or leave runs RUNNING. A child run is found again by its
``plan_hash`` tag, so a retried or resumed trial reuses its run instead of adding a duplicate, and a
trial whose plan already finished reads its metrics back instead of running again.

Every call to the tracking store is retried with backoff: a tracking server that goes away for a
while costs time, not results (a full disk under the store is not retried: it stays full). What
still cannot be written is left to the driver, which backfills finished trials from Ray Tune's
results at the end and reports what it could not log.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import mlflow
from mlflow.entities import RunStatus, RunTag
from mlflow.tracking import MlflowClient

from orchestrator.core.objectives import REPORT
from orchestrator.outputs import storage
from orchestrator.tracking.display import KIND_COLOURS, display_metrics, without_display

log = logging.getLogger(__name__)
T = TypeVar("T")
P = ParamSpec("P")


# MLflow's own HTTP retries back off up to minutes per call; ours (below) pace the outage instead.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
RETRY_ATTEMPTS = int(os.environ.get("FP8_SWEEP_TRACKING_ATTEMPTS", "7"))

PARENT_TAG = "mlflow.parentRunId"
PLAN_TAG = "plan_hash"  # how a trial finds its child run again (older stores tag it too)
PER_SEQUENCE_ARTIFACT = "per_sequence.json"  # on every measured child run: the paired data
NOTE_TAG = "mlflow.note.content"  # the description the UI shows for a run or an experiment
COLOUR_TAG = "mlflow.runColor"  # the colour the UI gives a run in its table and charts
SWEEP_TAG = "sweep_run_id"  # a scheme's run names the sweep (parent run) it was published by


# The kind MLflow 3 gives model-training (not GenAI) experiments; its UI titles their runs by it.
KIND_TAGS = {"mlflow.experimentKind": "custom_model_development"}


# A runs-table view (columns, sort, expanded rows) kept in an experiment tag; the UI opens it for
# ``?viewStateShareKey=<key>``, as it does for the views its "share" button saves.
VIEW_TAG = "mlflow.sharedViewState."


def retry(
    fn: Callable[[], T], what: str, attempts: int | None = None, first_wait: float = 0.5
) -> T:
    """Call ``fn`` until it succeeds, waiting 0.5, 1, 2, 4, 8, 16 s between tries (~30 s); a
    store whose storage refuses the write for good (SQLite's "database or disk is full") fails
    at once: a full disk stays full, and the sweep stops on it (``outputs/storage.py``)."""
    attempts = attempts or RETRY_ATTEMPTS
    wait = first_wait
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - any other store error is worth a retry
            if i == attempts - 1 or storage.refused_for_good(e):
                raise
            log.warning("tracking: %s failed (%s); retrying in %.1fs", what, e, wait)
            time.sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")


def _colour(kind: str) -> dict[str, str]:
    """The run's colour in the UI by its kind (scheme, scored trial, control), so the table's
    dots and every chart tell the kinds apart without a legend to set up."""
    return {COLOUR_TAG: KIND_COLOURS[kind]} if kind in KIND_COLOURS else {}


def _is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:///")


@dataclass(frozen=True)
class TrackingTarget:
    """What a trial needs to write its child run; plain data, safe to ship to any node."""

    uri: str
    experiment_id: str
    parent_run_id: str


def _store_refusals(fn: Callable[P, T]) -> Callable[P, T]:
    """A call whose store refused a write for good raises one line naming the store and the
    space left (``storage.WriteFailed``) instead of MLflow's error with its SQL; the first
    argument is the store's URI or a :class:`TrackingTarget`."""

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if isinstance(e, storage.WriteFailed) or not storage.refused_for_good(e):
                raise
            first = args[0]
            raise _refused(first.uri if isinstance(first, TrackingTarget) else str(first), e) from e

    return call


def _refused(uri: str, e: Exception) -> storage.WriteFailed:
    if _is_local_store(uri):
        found = storage.find(e, uri.removeprefix("sqlite:///"))
        if found is not None:
            return found
    reason = storage.phrase_in(str(e)) or e.__class__.__name__
    return storage.WriteFailed(uri, reason, "the tracking server", None)


@_store_refusals
def ensure_experiment(uri: str, name: str, artifact_root: Path, description: str) -> str:
    """The experiment's id, created on first use; local stores keep artifacts beside the output."""
    client = MlflowClient(uri)
    exp = retry(lambda: client.get_experiment_by_name(name), "get experiment")
    if exp is not None:
        exp_id = str(exp.experiment_id)
    else:
        location = (artifact_root / name).resolve().as_uri() if _is_local_store(uri) else None
        exp_id = str(
            retry(
                lambda: client.create_experiment(name, artifact_location=location),
                "create experiment",
            )
        )
    describe_experiment(uri, exp_id, description)
    return exp_id


@_store_refusals
def describe_experiment(uri: str, experiment_id: str, description: str) -> None:
    """The kind that opens the UI on the runs table, and the description shown above them."""
    client = MlflowClient(uri)
    for k, v in {**KIND_TAGS, NOTE_TAG: description}.items():
        retry(partial(client.set_experiment_tag, experiment_id, k, v), f"tag {k}")


@_store_refusals
def run_experiment(uri: str, run_id: str) -> str:
    """The experiment an existing run lives in (children must share it to nest in the UI)."""
    return str(retry(lambda: MlflowClient(uri).get_run(run_id), "get run").info.experiment_id)


@_store_refusals
def share_view(
    target: TrackingTarget,
    name: str,
    columns: Sequence[tuple[str, str]],
    chart: tuple[str, str, str],
) -> None:
    """The sweep's runs table as a saved view (the UI's *Views* menu lists it by ``name``; the
    link of :func:`view_page` opens it): its key columns (``("metrics", "kl_x1e6")``, ...) beside
    the run names, the runs grouped by kind (``scheme``, ``trial``, ``control``, ``sweep``) and
    newest first (the scheme runs, published last), every run in the charts, and ``chart``
    (title, x metric, y metric) as a scatter above MLflow's own charts. Stored as the UI stores
    a saved view: ``{name, createdAt, updatedAt, state}`` in an experiment tag. Without it the
    table shows one collapsed parent and no metric or parameter column."""
    section = f"sweep-{target.parent_run_id}-charts"
    title, x, y = chart
    state = {
        "selectedColumns": [f"{kind}.`{col}`" for kind, col in columns],
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        # grouped by kind, every group open: the nested trials show (a saved view cannot open
        # the parent's fold: the UI drops ``runsExpanded`` from it) and the schemes come first
        "groupBy": {
            "groupByKeys": [{"mode": "tag", "groupByData": "kind"}],
            "aggregateFunction": "min",  # a group's row shows one of its (rounded) values
        },
        "groupsExpanded": {f"tag.kind.{k}": True for k in ("scheme", "trial", "control", "sweep")},
        "useGroupedValuesInCharts": False,  # one point per run, in its kind's colour
        "runsHiddenMode": "SHOW_ALL",  # the charts' default is the first 10 runs
        "hideEmptyCharts": False,
        "compareRunSections": [
            # one chart a row, tall enough to tell the points apart
            {
                "uuid": section,
                "name": title,
                "display": True,
                "isReordered": False,
                "columns": 1,
                "cardHeight": 560,
            }
        ],
        "compareRunCharts": [
            {
                "uuid": f"{section}-scatter",
                "type": "SCATTER",
                "runsCountToCompare": 1000,
                "metricSectionId": section,
                "deleted": False,
                "isGenerated": False,
                "displayName": title,
                "xaxis": {"key": x, "type": "METRIC"},
                "yaxis": {"key": y, "type": "METRIC"},
            }
        ],
    }
    now = int(time.time() * 1000)
    saved = {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    client = MlflowClient(target.uri)
    key = VIEW_TAG + view_key(target)
    retry(lambda: client.set_experiment_tag(target.experiment_id, key, json.dumps(saved)), "view")


def view_key(target: TrackingTarget) -> str:
    """The saved view's key: short, so that the page's URL fits a 120-column console."""
    return f"sweep-{target.parent_run_id[:12]}"


def view_page(target: TrackingTarget) -> str:
    """The saved view's page, relative to the UI's root (a link in a description works as is)."""
    return (
        f"#/experiments/{target.experiment_id}/runs?workflowType=machine_learning"
        f"&viewStateShareKey={view_key(target)}"
    )


def ui_hint(target: TrackingTarget) -> str:
    """Where the sweep opens in MLflow's UI: the command for a local store, or the page."""
    page = view_page(target)
    if _is_local_store(target.uri):
        return (
            f"mlflow ui --backend-store-uri {target.uri} --host 127.0.0.1, "
            f"then open http://127.0.0.1:5000/{page}"
        )
    return f"{target.uri.rstrip('/')}/{page}"


@_store_refusals
def start_parent(
    uri: str,
    experiment_id: str,
    run_name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    existing_run_id: str | None = None,
) -> str:
    """The sweep's parent run: an existing one (resume or ``mlflow run``) or a new one."""
    client = MlflowClient(uri)
    if existing_run_id:
        retry(lambda: client.update_run(existing_run_id, status="RUNNING"), "reopen parent")
        run_id = existing_run_id
    else:
        coloured = {**tags, **_colour(tags.get("kind", ""))}
        run = retry(
            lambda: client.create_run(experiment_id, run_name=run_name, tags=coloured),
            "create parent",
        )
        run_id = run.info.run_id
    _log_params(client, run_id, params)
    for k, v in tags.items():
        retry(partial(client.set_tag, run_id, k, v), "tag parent")
    return run_id


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    existing = retry(lambda: client.get_run(run_id), "get run").data.params
    fresh = [
        mlflow.entities.Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing
    ]
    for i in range(0, len(fresh), 100):
        batch = fresh[i : i + 100]
        retry(partial(client.log_batch, run_id, params=batch), "log params")


def _metric_batch(metrics: Mapping[str, float]) -> list[Any]:
    now = int(time.time() * 1000)
    return [
        mlflow.entities.Metric(k, float(v), now, 0)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and math.isfinite(float(v))
    ]


@_store_refusals
def find_child(target: TrackingTarget, plan_hash: str) -> Any | None:
    client = MlflowClient(target.uri)
    runs = retry(
        lambda: client.search_runs(
            [target.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{target.parent_run_id}' "
            f"and tags.`{PLAN_TAG}` = '{plan_hash}'",
            max_results=5,
        ),
        "find child",
    )
    return runs[0] if runs else None


@_store_refusals
def start_child(
    target: TrackingTarget,
    plan_hash: str,
    run_name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
) -> tuple[str, dict[str, float] | None]:
    """(run id, metrics if this plan already FINISHED) for one trial; never a duplicate run."""
    os.environ.pop("MLFLOW_RUN_ID", None)  # `mlflow run` sets it for the driver only
    client = MlflowClient(target.uri)
    existing = find_child(target, plan_hash)
    if existing is not None and existing.info.status == "FINISHED":
        return existing.info.run_id, without_display(existing.data.metrics)
    if existing is not None:
        run_id = existing.info.run_id
        retry(lambda: client.update_run(run_id, status="RUNNING"), "reopen child")
    else:
        all_tags = {
            **tags,
            PARENT_TAG: target.parent_run_id,
            PLAN_TAG: plan_hash,
            **_colour(tags.get("kind", "")),
        }
        run = retry(
            lambda: client.create_run(target.experiment_id, run_name=run_name, tags=all_tags),
            "create child",
        )
        run_id = run.info.run_id
    _log_params(client, run_id, params)
    return run_id, None


@_store_refusals
def finish_child(
    target: TrackingTarget,
    run_id: str,
    metrics: Mapping[str, float],
    artifacts: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
) -> None:
    """Metrics (with their display copies), artifacts and (over the start's) tags of a measured
    trial; the run ends FINISHED."""
    client = MlflowClient(target.uri)
    batch_tags = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
    shown = {**metrics, **display_metrics(metrics), **display_metrics(metrics, REPORT)}
    retry(
        lambda: client.log_batch(run_id, metrics=_metric_batch(shown), tags=batch_tags),
        "log metrics",
    )
    for name, payload in artifacts.items():
        retry(partial(client.log_dict, run_id, payload, name), f"log {name}")
    retry(lambda: client.set_terminated(run_id, "FINISHED"), "finish child")


@_store_refusals
def backfill_child(
    target: TrackingTarget, plan_hash: str, record: Mapping[str, Any], metrics: Mapping[str, float]
) -> str:
    """Log a trial the store missed while it ran (found by plan hash, so never twice)."""
    params = {k: record[k] for k in ("method", "fp8_recipe", "effective_bits", "coverage")}
    run_id, stored = start_child(
        target,
        plan_hash,
        f"b{params['effective_bits']:g}",
        params,
        {
            "kind": str(record.get("kind", "trial")),
            "backfilled": "true",
            **({"numerics": str(record["numerics"])} if record.get("numerics") else {}),
        },
    )
    if stored is None:
        seq = record.get("per_sequence") or {}
        finish_child(target, run_id, metrics, {PER_SEQUENCE_ARTIFACT: dict(seq)} if seq else {})
    return run_id


def child_dict(target: TrackingTarget, run_id: str, name: str) -> dict[str, Any] | None:
    """A JSON artifact of a child run (``log_dict``), or None when the run has none."""
    import json
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as d:
            path = MlflowClient(target.uri).download_artifacts(run_id, name, d)
            return dict(json.loads(Path(path).read_text()))
    except Exception:  # noqa: BLE001 - an older run without it, or a store without artifacts
        return None


def child_tag(target: TrackingTarget, run_id: str, key: str) -> str | None:
    """One tag of a child run, or None when the run has none (or the store cannot say)."""
    try:
        value = MlflowClient(target.uri).get_run(run_id).data.tags.get(key)
    except Exception:  # noqa: BLE001 - a missing tag must not fail a finished trial's reuse
        return None
    return None if value is None else str(value)


def fail_child(target: TrackingTarget, run_id: str, error: str) -> None:
    client = MlflowClient(target.uri)
    try:
        retry(lambda: client.set_tag(run_id, "error", error[:4900]), "tag error", attempts=3)
        retry(lambda: client.set_terminated(run_id, "FAILED"), "fail child", attempts=3)
    except Exception as e:  # noqa: BLE001 - the driver closes stale runs at the end
        log.warning("could not mark child %s FAILED: %s", run_id, e)


@_store_refusals
def children(target: TrackingTarget) -> list[Any]:
    client = MlflowClient(target.uri)
    return list(
        retry(
            lambda: client.search_runs(
                [target.experiment_id],
                filter_string=f"tags.`{PARENT_TAG}` = '{target.parent_run_id}'",
                max_results=5000,
            ),
            "list children",
        )
    )


@_store_refusals
def close_stale_children(target: TrackingTarget, reason: str) -> list[str]:
    """Children still RUNNING after the sweep (their process was killed) become FAILED."""
    client = MlflowClient(target.uri)
    closed = []
    for run in children(target):
        if run.info.status == RunStatus.to_string(RunStatus.RUNNING):
            retry(partial(client.set_tag, run.info.run_id, "error", reason), "tag stale")
            retry(partial(client.set_terminated, run.info.run_id, "FAILED"), "close stale")
            closed.append(run.info.run_id)
    return closed


@_store_refusals
def log_parent_outputs(
    target: TrackingTarget, files: Sequence[Path], metrics: Mapping[str, float]
) -> None:
    client = MlflowClient(target.uri)
    for f in files:
        if f.exists():
            retry(partial(client.log_artifact, target.parent_run_id, str(f)), f"log {f.name}")
    if metrics:
        retry(
            lambda: client.log_batch(target.parent_run_id, metrics=_metric_batch(metrics)),
            "log parent metrics",
        )


@_store_refusals
def tag_run(uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    client = MlflowClient(uri)
    for k, v in tags.items():
        retry(partial(client.set_tag, run_id, k, v), f"tag {k}")


@_store_refusals
def name_scheme_run(uri: str, run_id: str, scheme: str) -> None:
    """The run a published scheme came from, findable by name in the runs table too."""
    client = MlflowClient(uri)
    name = retry(lambda: client.get_run(run_id), "get run").info.run_name or ""
    if not name.startswith(scheme):
        retry(lambda: client.update_run(run_id, name=f"{scheme} ({name})"), "name scheme run")


@_store_refusals
def log_metrics(uri: str, run_id: str, metrics: Mapping[str, float]) -> None:
    if metrics:
        client = MlflowClient(uri)
        retry(lambda: client.log_batch(run_id, metrics=_metric_batch(metrics)), "log metrics")


@_store_refusals
def end_run(uri: str, run_id: str, status: str) -> None:
    retry(lambda: MlflowClient(uri).set_terminated(run_id, status), "end run")


@dataclass(frozen=True)
class SchemeRun:
    """A published scheme as a run of its own: what the UI shows on its page and in the table."""

    name: str
    description: str  # markdown: the rationale, where it was measured, what it was tested against
    params: Mapping[str, Any]
    metrics: Mapping[str, float]
    tags: Mapping[str, str]
    files: Sequence[Path]  # logged at the run's root (pareto.png, the plan)
    texts: Mapping[str, str]  # artifact name -> text (the verdict table)


@_store_refusals
def replace_scheme_runs(target: TrackingTarget, schemes: Sequence[SchemeRun]) -> list[str]:
    """One top-level run per published scheme, the sweep's newest runs, so the runs table lists
    them first (newest first is its default order and the saved view's) and outside the parent's
    fold; in ``schemes`` order. A sweep that publishes again (a resume) replaces its own: the old
    ones are deleted (MLflow keeps them, hidden, until ``mlflow gc``). Returns their run ids."""
    client = MlflowClient(target.uri)
    old = retry(
        lambda: client.search_runs(
            [target.experiment_id],
            filter_string=f"tags.`{SWEEP_TAG}` = '{target.parent_run_id}' and tags.kind = 'scheme'",
            max_results=100,
        ),
        "find scheme runs",
    )
    for run in old:
        retry(partial(client.delete_run, run.info.run_id), "delete old scheme run")
    start = int(time.time() * 1000)
    ids = []
    for i, s in enumerate(schemes):
        tags = {
            **s.tags,
            "kind": "scheme",
            SWEEP_TAG: target.parent_run_id,
            NOTE_TAG: s.description,
            **_colour("scheme"),
        }
        run = retry(
            partial(
                client.create_run,
                target.experiment_id,
                start_time=start + len(schemes) - i,  # the first scheme is the newest
                tags=tags,
                run_name=s.name,
            ),
            "create scheme run",
        )
        run_id = run.info.run_id
        _log_params(client, run_id, s.params)
        retry(partial(client.log_batch, run_id, metrics=_metric_batch(s.metrics)), "scheme metrics")
        for f in s.files:
            if f.exists():
                retry(partial(client.log_artifact, run_id, str(f)), f"log {f.name}")
        for name, text in s.texts.items():
            retry(partial(client.log_text, run_id, text, name), f"log {name}")
        retry(partial(client.set_terminated, run_id, "FINISHED"), "finish scheme run")
        ids.append(run_id)
    return ids

"""What a sweep writes to MLflow beside its trials: the experiment and the parent run with their
descriptions, the runs-table view, the tags every run carries; at the end, runs left RUNNING
closed, trials the store missed logged, the parent's outputs, the three schemes' tags and the tags
of the runs that measured ModelOpt's own plan."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.core.inputs import Inputs
from orchestrator.core.objectives import REPORT
from orchestrator.core.records import ScoreTable, TrialResult
from orchestrator.outputs.files import read_sweep_json
from orchestrator.outputs.publish import Finalized, modelopt_run_tags, scheme_tracking
from orchestrator.outputs.tables import scoring_budget
from orchestrator.tracking.display import display_metrics, scheme_line, verdict_table
from orchestrator.tracking.uri import ARTIFACTS, default_tracking_uri, follow_folder

if TYPE_CHECKING:  # MLflow is imported where runs are written, once Ray's environment is set
    from orchestrator.model.data import DataSets
    from orchestrator.tracking.client import SchemeRun, TrackingTarget

log = logging.getLogger(__name__)


def run_tags() -> dict[str, str]:
    from orchestrator.runtime.host import git_commit, library_versions

    return {
        "git_commit": git_commit(),
        **{f"version.{k}": v for k, v in library_versions().items()},
    }


def start_tracking(inp: Inputs, data: DataSets) -> TrackingTarget:
    from orchestrator.tracking import client

    cfg = inp.cfg
    follow_own_store(inp)
    previous = read_sweep_json(inp.output) or {}
    existing = previous.get("parent_run_id") or os.environ.get("MLFLOW_RUN_ID")
    exp_id = (
        client.run_experiment(inp.tracking_uri, existing)
        if existing
        else client.ensure_experiment(
            inp.tracking_uri, cfg.experiment, inp.output / ARTIFACTS, describe(inp, False)
        )
    )
    flat = _flatten(cfg.model_dump(mode="json"))
    tags = {
        client.NOTE_TAG: describe(inp, True),
        "config_hash": inp.config_hash,
        "kind": "sweep",
        **run_tags(),
        **{f"data_hash.{k}": v for k, v in data.hashes().items()},
    }
    parent = client.start_parent(inp.tracking_uri, exp_id, cfg.name, flat, tags, existing)
    target = client.TrackingTarget(inp.tracking_uri, exp_id, parent)
    columns = (
        KEY_COLUMNS
        if data.report is not None
        else tuple(c for c in KEY_COLUMNS if not c[1].startswith(REPORT))
    )
    client.share_view(target, f"{cfg.name}: schemes first", columns, CHART)
    # MLflow 3.17 opens an experiment in the view its browser last used (GenAI unless the
    # "Model training" toggle was set), whatever the experiment's tags say; the description the
    # experiment page shows on top in either view links the saved view
    client.describe_experiment(
        inp.tracking_uri, exp_id, describe(inp, False, client.view_page(target))
    )
    return target


def follow_own_store(inp: Inputs) -> bool:
    """A copied or moved folder's own store, pointed at the folder's own artifacts before MLflow
    opens it (``uri.follow_folder``); a store the user gave is left as it is. True when it moved.
    """
    if inp.tracking_uri != default_tracking_uri(inp.output):
        return False
    original = follow_folder(inp.output)
    if original is not None:
        log.info(
            "--output %s was copied or moved from %s: its MLflow store keeps artifacts in %s",
            inp.output,
            original,
            inp.output / ARTIFACTS,
        )
    return original is not None


# What the runs table shows beside each run's name: its quality and size in units a person reads
# (``tracking/display.py``), then the point
KEY_COLUMNS = (
    ("metrics", "fp8_share_pct"),
    ("metrics", "report_kl_x1e6"),  # the published number: the report set's
    ("metrics", "report_top1_pct"),
    ("metrics", "kl_x1e6"),  # the selection set's, which the front and the names were chosen on
    ("metrics", "top1_pct"),
    ("metrics", "eff_bits"),
    ("tags", "verdict.random"),
    ("params", "method"),
    ("params", "strategy"),
    ("params", "coverage"),
    ("params", "control"),
)
# the view's page opened on its charts rather than its table (MLflow's ``compareRunsMode``)
CHART_MODE = "&compareRunsMode=CHART"
# the saved view's chart: FP8 share against KL, every run coloured by its kind
CHART = ("FP8 share (%) vs KL x 1e6, by kind", "fp8_share_pct", "kl_x1e6")


def describe(
    inp: Inputs, parent: bool, view: str | None = None, schemes: Sequence[str] = ()
) -> str:
    """The description MLflow's UI shows for the sweep's parent run, or for its experiment; the
    experiment's links ``view``, the runs table with the schemes first, and its chart, and once
    the schemes are published lists them (``schemes``: a line each, linking its run), in words
    that read as plain text too (the home page shows the description unrendered)."""
    cfg = inp.cfg
    start = (
        f"Open the runs table: [the three schemes first, every trial]({view}), or [the "
        f"FP8-share-vs-KL chart]({view}{CHART_MODE}) (MLflow's *Model training* view)\n\n"
        if view
        else ""
    )
    if schemes:
        start += (
            "The published schemes (KL(BF16 || FP8) in nats per token, 95% interval; verdicts "
            "against plans at the same FP8 share):\n\n" + "\n".join(schemes) + "\n\n"
        )
    what = (
        f"FP8 mixed-precision sweep `{cfg.name}` of `{cfg.model.source}`: ModelOpt AutoQuantize "
        f"scores ({', '.join(cfg.scoring.methods)}), then one child run per distinct FP8 plan "
        f"over effective bits {cfg.search.effective_bits} x coverage {cfg.search.coverage}"
        + (
            ", then naive controls at each published scheme's FP8 share"
            if cfg.controls.enabled
            else ""
        )
        + ". The three published schemes are runs of their own, named by the scheme, each with "
        "its rationale, plan, verdicts and pareto.png; the trial each came from is tagged "
        "`scheme_name`."
    )
    where = f"Outputs (schemes.yaml, trials.parquet, pareto.png, logs/): `{inp.output}`"
    if parent:
        return f"{what}\n\n{where}"
    return f"{start}{what} One parent run per sweep, its trials nested under it.\n\n{where}"


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@dataclass
class Settled:
    run_ids: dict[str, str]
    problems: list[str]


def settle_tracking(target: TrackingTarget, results: Sequence[TrialResult]) -> Settled:
    """Close runs left RUNNING by killed trials, log trials the store missed, find run ids."""
    from orchestrator.tracking import client

    try:
        stale = client.close_stale_children(target, "trial process died before finishing")
        if stale:
            log.warning("marked %d child run(s) FAILED that were left RUNNING", len(stale))
        for r in results:
            if r.status == "FINISHED" and r.metrics.get("logged", 1.0) == 0.0:
                client.backfill_child(target, r.plan_hash, r.to_dict(), dict(r.metrics))
        children = client.children(target)
    except Exception as e:  # noqa: BLE001 - the store is gone: say what was not logged
        problems = [f"trial runs not settled: {e.__class__.__name__}: {e}"[:500]]
        problems += [f"trial {r.plan_hash} ({r.status})" for r in results if not r.mlflow_run_id]
        return Settled({}, problems)
    by_plan = {c.data.tags.get(client.PLAN_TAG): c.info.run_id for c in children}
    return Settled({k: v for k, v in by_plan.items() if k}, [])


def publish(
    inp: Inputs,
    target: TrackingTarget,
    tables: Sequence[ScoreTable],
    results: Sequence[TrialResult],
    done: Finalized,
) -> list[str]:
    """Parent artifacts, scheme tags, parent status; returns what could not be written."""
    from orchestrator.tracking import client

    names = (
        "schemes.yaml",
        "trials.parquet",
        "scores.parquet",
        "pareto.png",
        "sensitivity.png",
        "sweep.json",
        "config.yaml",
    )
    ok = [r for r in results if r.status == "FINISHED"]
    try:
        client.log_parent_outputs(
            target,
            [inp.output / f for f in names],
            {
                "trials_finished": len(ok),
                "trials_failed": len(results) - len(ok),
                **{
                    f"scoring_seconds.{t.method}.{t.fp8_recipe}": float(t.meta.get("seconds", 0.0))
                    for t in tables
                },
                # how many score batches the adaptive budget let each setup use (core/budget.py)
                **{
                    f"score_batches_used.{t.method}.{t.fp8_recipe}": float(scoring_budget(t)[0])
                    for t in tables
                },
                **{f"score_kl_spearman.{k}": v for k, v in done.correlation.items()},
                **{f"score_kl_spearman_within_share.{k}": v for k, v in done.within_share.items()},
            },
        )
        for s, entry in zip(
            done.selection.schemes if done.selection else (), done.entries, strict=True
        ):
            if s.mlflow_run_id:
                tags, metrics = scheme_tracking(entry)
                client.tag_run(target.uri, s.mlflow_run_id, tags)
                client.log_metrics(target.uri, s.mlflow_run_id, metrics)
                client.name_scheme_run(target.uri, s.mlflow_run_id, s.name)
        for run_id, tags in modelopt_run_tags(done.entries, results).items():
            client.tag_run(target.uri, run_id, tags)
        ids = client.replace_scheme_runs(
            target, [scheme_run(target, inp.output, entry) for entry in done.entries]
        )
        # the experiment's page lists the schemes, their numbers and reasons, each linking its run
        lines = [
            scheme_line(entry, f"#/experiments/{target.experiment_id}/runs/{run_id}")
            for entry, run_id in zip(done.entries, ids, strict=True)
        ]
        view = client.view_page(target)
        client.describe_experiment(
            target.uri, target.experiment_id, describe(inp, False, view, lines)
        )
        client.end_run(target.uri, target.parent_run_id, "FINISHED")
    except Exception as e:  # noqa: BLE001
        return [f"parent run {target.parent_run_id} outputs: {e.__class__.__name__}: {e}"[:500]]
    return []


def scheme_run(target: TrackingTarget, output: Path, entry: Mapping[str, Any]) -> SchemeRun:
    """A published scheme's own run, from its ``schemes.yaml`` entry: the rationale, the trial
    it was measured in and its verdict table as the description; its point as parameters; its
    numbers on the selection set (those the trials and the chart show) and, when the scheme is
    published from the report set, that set's as ``report_*``, each with its display copy; its
    verdicts as tags; pareto.png, the plan and ``verdicts.md`` as artifacts."""
    from orchestrator.tracking import client

    published = dict(entry.get("metrics") or {})
    selection = dict(entry.get("selection_metrics") or published)
    report = REPORT if entry.get("metrics_set") == REPORT.rstrip("_") else ""
    exact: dict[str, float] = {
        "fp8_fraction": float(entry["fp8_fraction"]),
        "achieved_bits": float(entry["achieved_effective_bits"]),
        **selection,
        **({f"{report}{k}": v for k, v in published.items()} if report else {}),
    }
    tags, verdict_metrics = scheme_tracking(entry)
    source = entry.get("mlflow_run_id")
    measured = (
        f"\n\nMeasured in the trial run [{source}](#/experiments/{target.experiment_id}/runs/"
        f"{source}) (plan `{entry['plan_hash']}`)."
        if source
        else ""
    )
    table = verdict_table(entry)
    note = (
        f"{entry['rationale']}{measured}\n\nAgainst the controls at its FP8 share "
        f"(KL on the {entry.get('metrics_set', 'selection')} set):\n\n{table}"
    )
    return client.SchemeRun(
        name=str(entry["name"]),
        description=note,
        params={
            k: entry[k]
            for k in ("role", "method", "strategy", "effective_bits", "coverage", "fp8_recipe")
            if k in entry
        }
        | {"plan_hash": entry["plan_hash"], "metrics_set": entry.get("metrics_set", "")},
        metrics={  # the readable ones first: the run's page lists metrics as logged
            **display_metrics(exact),
            **display_metrics(exact, REPORT),
            **exact,
            **verdict_metrics,
        },
        tags={**tags, **({"source_run_id": str(source)} if source else {})},
        files=[output / "pareto.png", output / str(entry["modules"])],
        texts={"verdicts.md": table},
    )


def print_where(inp: Inputs, target: TrackingTarget) -> None:
    """Where to look next: the MLflow UI on the sweep's experiment, and the libraries' logs."""
    from orchestrator.outputs.console import WIDTH, wrap
    from orchestrator.tracking.client import ui_hint

    print()
    for line in wrap(f"MLflow: {ui_hint(target)}", WIDTH):  # the page's URL on a line of its own
        print(line)
    if not inp.verbose:
        print(f"logs of Ray, Tune, ModelOpt and transformers: {inp.output / 'logs'}/")

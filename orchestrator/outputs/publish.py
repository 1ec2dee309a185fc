"""The files a sweep leaves in ``--output`` and the selection step that both ``sweep`` and
``select`` run: ``trials.parquet``, ``scores.parquet`` (+ one file per scoring setup under
``scores/``), ``schemes.yaml``, ``plans/<hash>.json`` for the published schemes and the knee,
``pareto.png`` and ``sweep.json``, ``sensitivity.png``. Every file is written to a temporary name
and renamed, so a crash never leaves a half-written one. No torch, ray or mlflow here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from orchestrator.core.config import Catalog, CatalogScheme, SearchConfig, SweepConfig
from orchestrator.core.numerics import UNRECORDED, sweep_numerics
from orchestrator.core.objectives import KL_MEAN, Objective
from orchestrator.core.planning import plan_for
from orchestrator.core.records import NamedScheme, Plan, Point, ScoreTable, TrialResult, table_key
from orchestrator.core.selection import SWEEP_CAP, CapAdvice, Selection, SelectionError, select
from orchestrator.core.stats import MARGIN
from orchestrator.core.verdicts import (
    compare_schemes,
    measured_by_plan,
    score_kl_correlation,
    score_kl_within_share,
    verdict_rule,
    verdicts,
)
from orchestrator.outputs.files import write_json, write_text
from orchestrator.outputs.plots import pareto_png, sensitivity_png
from orchestrator.outputs.tables import scoring_budget, write_trials

_PER_MODALITY = (
    "kl_mean",
    "kl_ci_low",
    "kl_ci_high",
    "top1_agreement",
    "top1_ci_low",
    "top1_ci_high",
    "nll_delta",
    "eval_tokens",
    "eval_sequences",
)


# overall, then the text rows' and the image answers' where the evaluation set has both
KNEE = "knee"  # the name under which the knee is exported (``export --scheme knee``)
QUALITY_METRICS = (
    *_PER_MODALITY,
    "nll",
    "nll_ref",
    "ppl",
    "ppl_ref",
    *(f"{m}_{k}" for m in ("text", "image") for k in _PER_MODALITY),
)


@dataclass(frozen=True)
class SweepFacts:
    """What produced the trials, beyond the trials themselves: written beside each scheme."""

    seed: int  # seeds every bootstrap
    controls: tuple[str, ...]  # the control specs of the paired round
    scoring: Mapping[str, Any]  # num_score_steps, num_calib_steps of the scoring that ran
    data_hashes: Mapping[str, str]
    grid: SearchConfig | None = None  # the budgets asked for: an unbound name's advice names others
    margin: float = MARGIN  # materiality margin of the verdicts (controls.margin)

    @classmethod
    def of(cls, cfg: SweepConfig, data_hashes: Mapping[str, str]) -> SweepFacts:
        scoring = cfg.scoring
        return cls(
            seed=cfg.seed,
            controls=tuple(cfg.controls.specs()),
            scoring={
                "num_score_steps": scoring.num_score_steps,
                "num_calib_steps": scoring.num_calib_steps,
            },
            data_hashes=dict(sorted(data_hashes.items())),  # as sweep.json has them
            grid=cfg.search,
            margin=cfg.controls.margin,
        )


@dataclass(frozen=True)
class Finalized:
    selection: Selection | None
    error: str | None
    entries: tuple[dict[str, Any], ...] = ()  # schemes.yaml's scheme entries
    correlation: Mapping[str, float] = field(default_factory=dict)  # Spearman per method
    within_share: Mapping[str, float] = field(default_factory=dict)  # the same per budget
    verdict_rule: Mapping[str, Any] = field(default_factory=dict)  # schemes.yaml's verdict_rule
    numerics: str = ""  # the dtype and fused-layer scales the trials ran in (core/numerics.py)
    judged: Objective = KL_MEAN  # the objective on the set the numbers are published from
    knee: Mapping[str, Any] | None = None  # schemes.yaml's knee entry (its plan in ``modules``)


def _knobs(
    s: NamedScheme, facts: SweepFacts, catalog: CatalogScheme, table: ScoreTable
) -> dict[str, Any]:
    """What produced the scheme, the catalog's recommendation, and where the two differ; the
    score batches its setup used (the adaptive budget may stop before ``num_score_steps``)."""
    used, stop = scoring_budget(table)
    ran = {
        "method": s.method,
        "strategy": s.strategy,
        "coverage": s.coverage,
        "effective_bits": s.effective_bits,
        "fp8_recipe": s.fp8_recipe,
        **dict(facts.scoring),
        "score_batches_used": used,
        "score_stop": stop,
    }
    recommended = catalog.knobs.model_dump()
    differ = sorted(k for k, v in recommended.items() if k in ran and ran[k] != v)
    return {
        "knobs": {**ran, "data_hashes": dict(facts.data_hashes)},
        "catalog_knobs": recommended,
        "knobs_differ_from_catalog": differ,
    }


def _entry(
    s: NamedScheme,
    plan: Plan,
    plan_path: Path,
    rows: Sequence[Mapping[str, Any]],
    facts: SweepFacts,
    catalog: CatalogScheme,
    numerics: str,
    judged: Objective,
    table: ScoreTable,
) -> dict[str, Any]:
    return {
        "name": s.name,
        "role": s.role,
        "fp8_share": catalog.fp8_share.model_dump(),
        "fp8_fraction": round(s.fp8_fraction, 6),
        "effective_bits": s.effective_bits,
        "achieved_effective_bits": round(s.achieved_bits, 6),
        "coverage": s.coverage,
        "strategy": s.strategy,
        "method": s.method,
        "fp8_recipe": s.fp8_recipe,
        "plan_hash": s.plan_hash,
        "num_fp8_modules": len(plan.fp8_modules),
        "modules": str(plan_path),
        "numerics": numerics,
        # the label: measured on the report set, which chose nothing (``metrics_set``); the
        # selection set's numbers, which the front and the names were chosen on, apart
        "metrics": _quality(s.metrics, judged.part),
        "metrics_set": judged.set_name,
        **_documents(s.metrics, judged.part),
        **({"selection_metrics": _quality(s.metrics, "")} if judged.part else {}),
        "lm_bytes": plan.lm_bytes,
        "model_bytes": plan.model_bytes,
        "mlflow_run_id": s.mlflow_run_id,
        "verdicts": verdicts(rows),
        "controls": [dict(r) for r in rows],
        **_knobs(s, facts, catalog, table),
        "rationale": s.rationale,
    }


class _PlainDumper(yaml.SafeDumper):
    """Every value written out where it stands: no ``&id001`` anchors and ``*id001`` aliases for a
    list two rows share (a control that is the same plan as another), which people misread and
    this project's own YAML reader refuses."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _quality(metrics: Mapping[str, Any], part: str) -> dict[str, float]:
    """The quality metrics of one set (``part``: "" selection, "report_" report), unprefixed."""
    return {k: float(metrics[part + k]) for k in QUALITY_METRICS if part + k in metrics}


def _documents(metrics: Mapping[str, Any], part: str) -> dict[str, int]:
    """How many documents and sequences of the source the report set spans."""
    if not part or f"{part}documents" not in metrics:
        return {}
    return {
        "report_documents": int(metrics[f"{part}documents"]),
        "report_sequences": int(metrics[f"{part}sequences"]),
    }


def _point_summary(r: TrialResult | None, judged: Objective) -> dict[str, Any] | None:
    """The knee: its share and its KL on the set the schemes' numbers come from (and on the
    selection set, where it was chosen, apart)."""
    if r is None:
        return None
    chosen = replace(judged, part="")
    return {
        "plan_hash": r.plan_hash,
        "fp8_fraction": round(r.fp8_fraction, 6),
        "achieved_effective_bits": round(r.achieved_bits, 6),
        "metrics_set": judged.set_name,
        "kl_mean": r.metrics.get(f"{judged.part}kl_mean", float("nan")),
        **({judged.metric: judged.value(r.metrics)} if judged.modality else {}),
        **({"selection_kl_mean": r.metrics["kl_mean"]} if judged.part else {}),
        **(
            {f"selection_{chosen.metric}": chosen.value(r.metrics)}
            if judged.part and judged.modality
            else {}
        ),
        "method": r.method,
        "strategy": r.strategy,
        "coverage": r.coverage,
    }


def finalize(
    output: Path,
    results: Sequence[TrialResult],
    tables: Mapping[str, ScoreTable],
    catalog: Catalog,
    max_kl: float | None,
    header: Mapping[str, Any],
    facts: SweepFacts,
    replace_on_error: bool = True,
    objective: Objective = KL_MEAN,
    *,
    cap_advice: CapAdvice = SWEEP_CAP,
) -> Finalized:
    """trials.parquet, selection, the paired comparisons, schemes.yaml, plans/, pareto.png,
    sensitivity.png, all on the selection ``objective``; an unmet selection says why (a cap that
    keeps a name out as ``cap_advice`` names it).

    When selection fails, a sweep (``replace_on_error``) drops any stale schemes.yaml and plots
    the points without picks; a re-selection (``select``) leaves the existing files untouched.
    """
    numerics = sweep_numerics(r.numerics for r in results if r.status == "FINISHED")
    correlation = score_kl_correlation(results, tables, objective)
    within = score_kl_within_share(results, tables, objective)
    try:
        sel = select(results, catalog, max_kl, objective, facts.grid, cap_advice=cap_advice)
    except SelectionError as e:
        if replace_on_error:
            write_trials(results, output / "trials.parquet")
            title = f"{header.get('sweep')}: {e}"[:120]
            sensitivity_png(tables.values(), output / "sensitivity.png", str(header.get("sweep")))
            pareto_png(results, (), (), output / "pareto.png", title, objective)
            (output / "schemes.yaml").unlink(missing_ok=True)
        return Finalized(None, str(e), (), correlation, within, numerics=numerics)
    write_trials(results, output / "trials.parquet")
    measured = measured_by_plan(results)
    judged = objective.judged(r.per_sequence for r in results if r.status == "FINISHED")
    compared = compare_schemes(
        sel.schemes, tables, measured, facts.controls, facts.seed, judged, facts.margin
    )
    entries = []
    for s, rows in zip(sel.schemes, compared, strict=True):
        plan = plan_for(Point.of(s), tables)
        plan_path = Path("plans") / f"{plan.plan_hash}.json"
        write_json(output / plan_path, plan.to_dict())
        spec = next(c for c in catalog.schemes if c.name == s.name)
        ran = measured[s.plan_hash].numerics if s.plan_hash in measured else ""
        table = tables[table_key(s.method, s.fp8_recipe)]
        entries.append(
            _entry(s, plan, plan_path, rows, facts, spec, ran or UNRECORDED, judged, table)
        )
    rule = verdict_rule(compared, facts.margin)
    knee = _point_summary(sel.knee, judged)
    if knee is not None and sel.knee is not None:
        # The knee is exportable as ``--scheme knee``: its plan is written beside the schemes'.
        knee_plan = plan_for(Point.of(sel.knee), tables)
        knee_path = Path("plans") / f"{knee_plan.plan_hash}.json"
        write_json(output / knee_path, knee_plan.to_dict())
        knee = {
            "name": KNEE,
            **knee,
            "fp8_recipe": sel.knee.fp8_recipe,
            "modules": str(knee_path),
            "mlflow_run_id": sel.knee.mlflow_run_id,
        }
    # The schemes come first: they are what a reader opens the file for.
    doc = {
        "schemes": entries,
        "knee": knee,
        # which numerics every number assumes: the dtype the reference and the trials ran in, and
        # whether fused q/k/v and gate/up had the scales vLLM serves them with
        "numerics": numerics,
        "verdict_rule": rule,
        "score_kl_spearman": correlation,
        "score_kl_spearman_within_share": within,
        "front": list(sel.front),
        "notes": list(sel.notes),
        **header,
        "catalog_version": catalog.version,
        "objective": objective.metric,
    }
    text = yaml.dump(doc, Dumper=_PlainDumper, sort_keys=False, width=100)
    write_text(output / "schemes.yaml", text)
    sensitivity_png(
        tables.values(), output / "sensitivity.png", str(header.get("sweep")), sel.schemes
    )
    pareto_png(
        results, sel.front, sel.schemes, output / "pareto.png", str(header.get("sweep")), objective
    )
    return Finalized(
        sel, None, tuple(entries), correlation, within, rule, numerics, judged, knee=knee
    )


def scheme_tracking(entry: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, float]]:
    """(tags, metrics) for a scheme's MLflow run: its name, its verdicts, the KL ratios with their
    intervals and Holm's p, each control's share difference, the controls that share a plan
    (``same_plan_as.<control>``) and the budget ModelOpt's own solve was given; for the random
    orders also each seed's ratio, their spread and the scheme's rank among them."""
    tags = {"scheme_name": str(entry["name"])}
    metrics: dict[str, float] = {}
    for row in entry["controls"]:
        name = row["control"]
        tags[f"verdict.{name}"] = str(row["verdict"])
        if row.get("same_plan_as"):
            tags[f"same_plan_as.{name}"] = ",".join(row["same_plan_as"])
        if "modelopt_effective_bits" in row:
            metrics[f"modelopt_effective_bits.{name}"] = float(row["modelopt_effective_bits"])
        if "kl_ratio" in row:
            metrics[f"kl_ratio.{name}"] = float(row["kl_ratio"])
            metrics[f"kl_ratio_ci_low.{name}"] = float(row["kl_ratio_ci"][0])
            metrics[f"kl_ratio_ci_high.{name}"] = float(row["kl_ratio_ci"][1])
            metrics[f"p_holm.{name}"] = float(row["p_holm"])
            metrics[f"fp8_fraction_diff.{name}"] = float(row["fp8_fraction_diff"])
        for seed in row.get("by_seed", ()):
            metrics[f"kl_ratio.{seed['control']}"] = float(seed["kl_ratio"])
        if "seed_kl_ratio" in row:
            for k, v in row["seed_kl_ratio"].items():
                metrics[f"seed_kl_ratio_{k}.{name}"] = float(v)
            metrics[f"scheme_rank.{name}"] = float(row["scheme_rank"])
    return tags, metrics


def modelopt_run_tags(
    entries: Sequence[Mapping[str, Any]], results: Sequence[TrialResult]
) -> dict[str, dict[str, str]]:
    """Per MLflow run that measured ModelOpt's own plan for a scheme (a control's run, or the
    scheme's own when ModelOpt returns its plan): ``modelopt_solve_for``, the schemes whose share
    it was solved for, and the budget ModelOpt was given, so the runs table finds it."""
    runs = {r.plan_hash: r.mlflow_run_id for r in results if r.mlflow_run_id}
    out: dict[str, dict[str, list[str]]] = {}
    for e in entries:
        for row in e["controls"]:
            run = runs.get(row.get("plan_hash", ""))
            if "modelopt_effective_bits" in row and run:
                tags = out.setdefault(run, {"for": [], "bits": []})
                tags["for"].append(str(e["name"]))
                tags["bits"].append(f"{row['modelopt_effective_bits']:.6g}")
    return {
        run: {
            "modelopt_solve_for": ",".join(t["for"]),
            "modelopt_effective_bits": ",".join(t["bits"]),
        }
        for run, t in out.items()
    }

"""The files a sweep leaves in ``--output`` and the selection step that both ``sweep`` and
``select`` run: ``trials.parquet``, ``scores.parquet`` (+ one file per scoring setup under
``scores/``), ``schemes.yaml``, ``plans/<hash>.json`` for the published schemes, ``pareto.png`` and
``sweep.json``, ``sensitivity.png``. Every file is written to a temporary name and renamed, so a
crash never leaves a half-written one. No torch, ray or mlflow here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.core.config import Catalog, CatalogScheme, SearchConfig, SweepConfig
from orchestrator.core.numerics import UNRECORDED, sweep_numerics
from orchestrator.core.objectives import KL_MEAN, Objective
from orchestrator.core.planning import plan_for
from orchestrator.core.records import NamedScheme, Plan, Point, ScoreTable, TrialResult
from orchestrator.core.selection import Selection, SelectionError, select
from orchestrator.core.verdicts import (
    compare_scheme,
    measured_by_plan,
    score_kl_correlation,
    score_kl_within_share,
    verdicts,
)
from orchestrator.outputs.files import write_json, write_text
from orchestrator.outputs.plots import pareto_png, sensitivity_png
from orchestrator.outputs.tables import write_trials

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
        )


@dataclass(frozen=True)
class Finalized:
    selection: Selection | None
    error: str | None
    entries: tuple[dict[str, Any], ...] = ()  # schemes.yaml's scheme entries
    correlation: Mapping[str, float] = field(default_factory=dict)  # Spearman per method
    within_share: Mapping[str, float] = field(default_factory=dict)  # the same per budget
    numerics: str = ""  # the dtype and fused-layer scales the trials ran in (core/numerics.py)


def _knobs(s: NamedScheme, facts: SweepFacts, catalog: CatalogScheme) -> dict[str, Any]:
    """What produced the scheme, the catalog's recommendation, and where the two differ."""
    ran = {
        "method": s.method,
        "strategy": s.strategy,
        "coverage": s.coverage,
        "effective_bits": s.effective_bits,
        "fp8_recipe": s.fp8_recipe,
        **dict(facts.scoring),
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
        "metrics": {k: float(s.metrics[k]) for k in QUALITY_METRICS if k in s.metrics},
        "lm_bytes": plan.lm_bytes,
        "model_bytes": plan.model_bytes,
        "mlflow_run_id": s.mlflow_run_id,
        "verdicts": verdicts(rows),
        "controls": [dict(r) for r in rows],
        **_knobs(s, facts, catalog),
        "rationale": s.rationale,
    }


def _point_summary(r: TrialResult | None, objective: Objective) -> dict[str, Any] | None:
    if r is None:
        return None
    return {
        "plan_hash": r.plan_hash,
        "fp8_fraction": round(r.fp8_fraction, 6),
        "achieved_effective_bits": round(r.achieved_bits, 6),
        "kl_mean": r.metrics["kl_mean"],
        **({objective.metric: objective.value(r.metrics)} if objective.prefix else {}),
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
) -> Finalized:
    """trials.parquet, selection, the paired comparisons, schemes.yaml, plans/, pareto.png,
    sensitivity.png, all on the selection ``objective``; an unmet selection says why.

    When selection fails, a sweep (``replace_on_error``) drops any stale schemes.yaml and plots
    the points without picks; a re-selection (``select``) leaves the existing files untouched.
    """
    sensitivity_png(tables.values(), output / "sensitivity.png", str(header.get("sweep")))
    numerics = sweep_numerics(r.numerics for r in results if r.status == "FINISHED")
    correlation = score_kl_correlation(results, tables, objective)
    within = score_kl_within_share(results, tables, objective)
    try:
        sel = select(results, catalog, max_kl, objective, facts.grid)
    except SelectionError as e:
        if replace_on_error:
            write_trials(results, output / "trials.parquet")
            title = f"{header.get('sweep')}: {e}"[:120]
            pareto_png(results, (), (), output / "pareto.png", title, objective)
            (output / "schemes.yaml").unlink(missing_ok=True)
        return Finalized(None, str(e), (), correlation, within, numerics)
    write_trials(results, output / "trials.parquet")
    measured = measured_by_plan(results)
    entries = []
    for s in sel.schemes:
        plan = plan_for(Point.of(s), tables)
        plan_path = Path("plans") / f"{plan.plan_hash}.json"
        write_json(output / plan_path, plan.to_dict())
        rows = compare_scheme(s, tables, measured, facts.controls, facts.seed, objective)
        spec = next(c for c in catalog.schemes if c.name == s.name)
        ran = measured[s.plan_hash].numerics if s.plan_hash in measured else ""
        entries.append(_entry(s, plan, plan_path, rows, facts, spec, ran or UNRECORDED))
    doc = {
        **header,
        # which numerics every number below assumes: the dtype the reference and the trials ran
        # in, and whether fused q/k/v and gate/up had the scales vLLM serves them with
        "numerics": numerics,
        "catalog_version": catalog.version,
        "objective": objective.metric,
        "knee": _point_summary(sel.knee, objective),
        "score_kl_spearman": correlation,
        "score_kl_spearman_within_share": within,
        "front": list(sel.front),
        "notes": list(sel.notes),
        "schemes": entries,
    }
    write_text(output / "schemes.yaml", yaml.safe_dump(doc, sort_keys=False, width=100))
    pareto_png(
        results, sel.front, sel.schemes, output / "pareto.png", str(header.get("sweep")), objective
    )
    return Finalized(sel, None, tuple(entries), correlation, within, numerics)


def scheme_tracking(entry: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, float]]:
    """(tags, metrics) for a scheme's MLflow run: its name, its verdicts, the KL ratios."""
    tags = {"scheme_name": str(entry["name"])}
    metrics: dict[str, float] = {}
    for row in entry["controls"]:
        tags[f"verdict.{row['control']}"] = str(row["verdict"])
        if "kl_ratio" in row:
            metrics[f"kl_ratio.{row['control']}"] = float(row["kl_ratio"])
            metrics[f"kl_ratio_ci_low.{row['control']}"] = float(row["kl_ratio_ci"][0])
            metrics[f"kl_ratio_ci_high.{row['control']}"] = float(row["kl_ratio_ci"][1])
    return tags, metrics

"""The files a sweep leaves in ``--output`` and the selection step that both ``sweep`` and
``select`` run: ``trials.parquet``, ``scores.parquet`` (+ one file per scoring setup under
``scores/``), ``schemes.yaml``, ``plans/<hash>.json`` for the published schemes, ``pareto.png`` and
``sweep.json``, ``sensitivity.png``. Every file is written to a temporary name and renamed, so a
crash never leaves a half-written one. No torch, ray or mlflow here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from orchestrator.compare import (
    compare_scheme,
    measured_by_plan,
    score_kl_correlation,
    score_kl_within_share,
    verdicts,
)
from orchestrator.config import Catalog, CatalogScheme, SweepConfig
from orchestrator.objectives import KL_MEAN, Objective
from orchestrator.planning import plan_point
from orchestrator.plots import pareto_png, sensitivity_png
from orchestrator.points import table_key
from orchestrator.records import NamedScheme, Plan, ScoreTable, TrialResult
from orchestrator.selection import Selection, SelectionError, select
from orchestrator.tables import read_scores, read_trials, write_scores, write_trials

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


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_sweep_json(output: Path) -> dict[str, Any] | None:
    path = output / "sweep.json"
    return json.loads(path.read_text()) if path.exists() else None


def score_file(output: Path, table: ScoreTable) -> Path:
    return output / "scores" / f"{table.method}__{table.fp8_recipe}.parquet"


def write_score_tables(output: Path, tables: Sequence[ScoreTable]) -> None:
    """One file per scoring setup (re-solvable), and scores.parquet with all rows for reading."""
    rows: dict[str, list[Any]] = {
        k: [] for k in ("method", "fp8_recipe", "key", "group", "block", "kind", "params", "score")
    }
    for t in tables:
        write_scores(t, score_file(output, t))
        for g in t.groups:
            for k, v in (
                ("method", t.method),
                ("fp8_recipe", t.fp8_recipe),
                ("key", t.key),
                ("group", g.name),
                ("block", g.block),
                ("kind", g.kind),
                ("params", g.params),
                ("score", g.score),
            ):
                rows[k].append(v)
    tmp = output / ".scores.parquet.tmp"
    pq.write_table(pa.table(rows), tmp)
    os.replace(tmp, output / "scores.parquet")


def read_score_tables(output: Path) -> dict[str, ScoreTable]:
    tables = [read_scores(p) for p in sorted((output / "scores").glob("*.parquet"))]
    return {f"{t.method}|{t.fp8_recipe}": t for t in tables}


def plan_for(result: TrialResult | NamedScheme, tables: Mapping[str, ScoreTable]) -> Plan:
    table = tables[table_key(result.method, result.fp8_recipe)]
    point = {
        "effective_bits": result.effective_bits,
        "coverage": result.coverage,
        "strategy": result.strategy,
    }
    return plan_point(table, point)


@dataclass(frozen=True)
class SweepFacts:
    """What produced the trials, beyond the trials themselves: written beside each scheme."""

    seed: int  # seeds every bootstrap
    controls: tuple[str, ...]  # the control specs of the paired round
    scoring: Mapping[str, Any]  # num_score_steps, num_calib_steps of the scoring that ran
    data_hashes: Mapping[str, str]

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
        )


@dataclass(frozen=True)
class Finalized:
    selection: Selection | None
    error: str | None
    entries: tuple[dict[str, Any], ...] = ()  # schemes.yaml's scheme entries
    correlation: Mapping[str, float] = field(default_factory=dict)  # Spearman per method
    within_share: Mapping[str, float] = field(default_factory=dict)  # the same per budget


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
    correlation = score_kl_correlation(results, tables, objective)
    within = score_kl_within_share(results, tables, objective)
    try:
        sel = select(results, catalog, max_kl, objective)
    except SelectionError as e:
        if replace_on_error:
            write_trials(results, output / "trials.parquet")
            title = f"{header.get('sweep')}: {e}"[:120]
            pareto_png(results, (), (), output / "pareto.png", title, objective)
            (output / "schemes.yaml").unlink(missing_ok=True)
        return Finalized(None, str(e), (), correlation, within)
    write_trials(results, output / "trials.parquet")
    measured = measured_by_plan(results)
    entries = []
    for s in sel.schemes:
        plan = plan_for(s, tables)
        plan_path = Path("plans") / f"{plan.plan_hash}.json"
        write_json(output / plan_path, plan.to_dict())
        rows = compare_scheme(s, tables, measured, facts.controls, facts.seed, objective)
        spec = next(c for c in catalog.schemes if c.name == s.name)
        entries.append(_entry(s, plan, plan_path, rows, facts, spec))
    doc = {
        **header,
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
    return Finalized(sel, None, tuple(entries), correlation, within)


def _ci(v: Sequence[float]) -> str:
    return f"[{v[0]:.3g}, {v[1]:.3g}]"


def summary_lines(done: Finalized, output: Path) -> list[str]:
    """The console's account of the selection: each scheme with its share, KL and CI, its
    verdict against every control measured at its share, the knee, the score-KL correlation."""
    if done.selection is None:
        return []
    obj = done.selection.objective
    top1 = f"{obj.prefix}top1_agreement"
    lines = [
        "",
        f"{'scheme':<22}{'FP8':>7}{'bits':>7}  {obj.label + ' [95% CI]':<30}{'top-1':>8}  "
        "picked from",
    ]
    for s, e in zip(done.selection.schemes, done.entries, strict=True):
        m = s.metrics
        kl = f"{obj.value(m):.3g}"
        ci = obj.ci(m)
        if ci is not None:
            kl += f" {_ci(ci)}"
        lines.append(
            f"{s.name:<22}{s.fp8_fraction:>7.1%}{s.achieved_bits:>7.2f}  {kl:<30}"
            f"{m.get(top1, float('nan')):>8.4f}  {s.method} {s.strategy} "
            f"c={s.coverage:g}"
        )
        for row in e["controls"]:
            if str(row["control"]).startswith("random:"):
                continue  # each seed is in schemes.yaml; the console shows them pooled
            ratio = (
                f" (KL ratio {row['kl_ratio']:.3g} {_ci(row['kl_ratio_ci'])})"
                if "kl_ratio" in row
                else ""
            )
            lines.append(f"    vs {row['control']:<14} {row['verdict']}{ratio}")
        if e["knobs_differ_from_catalog"]:
            lines.append(
                "    knobs that differ from the catalog's recommendation: "
                + ", ".join(e["knobs_differ_from_catalog"])
            )
    k = done.selection.knee
    if k is not None:
        lines.append(
            f"knee of the front: {k.fp8_fraction:.1%} FP8, {k.achieved_bits:.2f} bits, "
            f"{obj.label} {obj.value(k.metrics):.3g} ({k.method} {k.strategy} c={k.coverage:g})"
        )
    if done.correlation:
        rho = ", ".join(f"{m} {v:.2f}" for m, v in done.correlation.items())
        if done.within_share:
            rho += "; among the plans of one budget: " + ", ".join(
                f"{m} {v:.2f}" for m, v in done.within_share.items()
            )
        lines.append(f"summed score vs measured KL over the sweep's plans (Spearman): {rho}")
    lines += [f"note: {n}" for n in done.selection.notes]
    lines.append(f"schemes: {output / 'schemes.yaml'} (plots: pareto.png, sensitivity.png)")
    return lines


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


def load_results(output: Path) -> list[TrialResult]:
    return read_trials(output / "trials.parquet")

"""The files a sweep leaves in ``--output`` and the selection step that both ``sweep`` and
``select`` run: ``trials.parquet``, ``scores.parquet`` (+ one file per scoring setup under
``scores/``), ``schemes.yaml``, ``plans/<hash>.json`` for the published schemes, ``pareto.png`` and
``sweep.json``. Every file is written to a temporary name and renamed, so a crash never leaves a
half-written one. No torch, ray or mlflow here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from orchestrator.config import Catalog
from orchestrator.planning import make_plan
from orchestrator.plots import pareto_png
from orchestrator.records import Plan, ScoreTable, TrialResult
from orchestrator.selection import Selection, SelectionError, select
from orchestrator.tables import read_scores, read_trials, write_scores, write_trials

QUALITY_METRICS = ("kl_mean", "top1_agreement", "nll_delta", "nll", "nll_ref", "ppl", "ppl_ref")


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


def plan_for(result: TrialResult | Any, tables: Mapping[str, ScoreTable]) -> Plan:
    table = tables[f"{result.method}|{result.fp8_recipe}"]
    return make_plan(table, result.effective_bits, result.coverage)


def _interpolate(points: Sequence[tuple[float, float]], bits: float) -> float | None:
    """KL at ``bits`` on one baseline's curve, linear in log KL between measured budgets."""
    pts = sorted(points)
    if not pts or not pts[0][0] - 1e-9 <= bits <= pts[-1][0] + 1e-9:
        return None
    for (b0, k0), (b1, k1) in zip(pts, pts[1:], strict=False):
        if b0 - 1e-9 <= bits <= b1 + 1e-9 and b1 > b0:
            t = (bits - b0) / (b1 - b0)
            if k0 > 0 and k1 > 0:
                return float(np.exp((1 - t) * np.log(k0) + t * np.log(k1)))
            return float((1 - t) * k0 + t * k1)
    return float(pts[0][1])


def baseline_summary(results: Sequence[TrialResult], achieved_bits: float) -> dict[str, Any]:
    """Each baseline's KL at exactly the scheme's FP8 share (its achieved effective bits).

    Baselines are measured at the grid's budgets; their KL is interpolated (linear in log KL) to
    the scheme's achieved bits, so a scheme is never compared with a baseline holding a different
    FP8 share. Random orders are interpolated seed by seed, then averaged. A baseline that never
    reaches the share (attention kept BF16 at 8 bits) is left out.
    """
    curves: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        if r.kind == "baseline":  # every choice is the BF16 model at 16 bits: KL 0
            curves.setdefault(r.baseline, [(16.0, 0.0)])
    for r in results:
        if (
            r.kind == "baseline"
            and r.status == "FINISHED"
            and r.achieved_bits <= r.effective_bits + 1e-9
        ):
            curves.setdefault(r.baseline, []).append((r.achieved_bits, r.metrics["kl_mean"]))
    at = {name: _interpolate(pts, achieved_bits) for name, pts in sorted(curves.items())}
    out: dict[str, Any] = {"at_effective_bits": round(achieved_bits, 6)}
    rand = [v for k, v in at.items() if k.startswith("random") and v is not None]
    if rand:
        out["random_kl_mean"] = float(np.mean(rand))
        out["random_kl_std"] = float(np.std(rand))
        out["random_seeds"] = len(rand)
    for k, v in at.items():
        if not k.startswith("random") and v is not None:
            out[f"{k.split(':')[0]}_kl"] = v
    return out


def kl_margin(summary: Mapping[str, Any], kl: float) -> tuple[str, float] | None:
    """(best baseline, its KL minus the scheme's): positive means the scheme is better."""
    candidates = {
        k.removesuffix("_kl_mean").removesuffix("_kl"): v
        for k, v in summary.items()
        if k.endswith(("_kl", "_kl_mean"))
    }
    if not candidates:
        return None
    best = min(candidates, key=lambda k: (candidates[k], k))
    margin = float(candidates[best] - kl)
    # the same plan measured twice differs only by float rounding of the interpolation
    return best, 0.0 if abs(margin) <= 1e-9 * max(abs(kl), 1e-30) else margin


@dataclass(frozen=True)
class Finalized:
    selection: Selection | None
    error: str | None
    entries: tuple[dict[str, Any], ...] = ()  # schemes.yaml's scheme entries


def finalize(
    output: Path,
    results: Sequence[TrialResult],
    tables: Mapping[str, ScoreTable],
    catalog: Catalog,
    max_kl: float | None,
    header: Mapping[str, Any],
    replace_on_error: bool = True,
) -> Finalized:
    """trials.parquet, selection, schemes.yaml, plans/, pareto.png; an unmet selection says why.

    When selection fails, a sweep (``replace_on_error``) drops any stale schemes.yaml and plots
    the points without picks; a re-selection (``select``) leaves the existing files untouched.
    """
    try:
        sel = select(results, catalog, max_kl)
    except SelectionError as e:
        if replace_on_error:
            write_trials(results, output / "trials.parquet")
            pareto_png(results, (), (), output / "pareto.png", f"{header.get('sweep')}: {e}"[:120])
            (output / "schemes.yaml").unlink(missing_ok=True)
        return Finalized(None, str(e))
    write_trials(results, output / "trials.parquet")
    entries = []
    for s in sel.schemes:
        plan = plan_for(s, tables)
        plan_path = Path("plans") / f"{plan.plan_hash}.json"
        write_json(output / plan_path, plan.to_dict())
        knobs = next(c.knobs for c in catalog.schemes if c.name == s.name)
        summary = baseline_summary(results, s.achieved_bits)
        margin = kl_margin(summary, s.metrics["kl_mean"])
        entries.append(
            {
                "name": s.name,
                "role": s.role,
                "effective_bits": s.effective_bits,
                "achieved_effective_bits": round(s.achieved_bits, 6),
                "coverage": s.coverage,
                "fp8_fraction": round(s.fp8_fraction, 6),
                "method": s.method,
                "fp8_recipe": s.fp8_recipe,
                "plan_hash": s.plan_hash,
                "num_fp8_modules": len(plan.fp8_modules),
                "modules": str(plan_path),
                "metrics": {k: float(s.metrics[k]) for k in QUALITY_METRICS if k in s.metrics},
                "lm_bytes": plan.lm_bytes,
                "model_bytes": plan.model_bytes,
                "mlflow_run_id": s.mlflow_run_id,
                "baselines_same_budget": summary,
                "best_baseline": margin[0] if margin else None,
                "kl_margin_over_best_baseline": margin[1] if margin else None,
                "catalog_knobs": knobs.model_dump(),
                "rationale": s.rationale,
            }
        )
    doc = {
        **header,
        "catalog_version": catalog.version,
        "front": list(sel.front),
        "notes": list(sel.notes),
        "schemes": entries,
    }
    write_text(output / "schemes.yaml", yaml.safe_dump(doc, sort_keys=False, width=100))
    pareto_png(results, sel.front, sel.schemes, output / "pareto.png", str(header.get("sweep")))
    return Finalized(sel, None, tuple(entries))


def load_results(output: Path) -> list[TrialResult]:
    return read_trials(output / "trials.parquet")

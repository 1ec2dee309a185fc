"""Each published scheme against each control at its exact FP8 share, on the same tokens; and how
well the summed scores predicted the measured KL.

A control's plan is re-derived here from the score table (planning is pure), so ``select`` can
re-run on an old sweep and find the same measurements by plan hash. The random controls are also
pooled: per sequence, the mean KL over the seeds, which is the comparison a user means by "better
than random choice". Verdicts come from the paired ratio (scheme KL / control KL) and its 95%
bootstrap interval (``orchestrator.core.stats``), on the selection objective's tokens (every target,
or the image answers alone: ``orchestrator.core.objectives``); each row names its objective. Pure
module: numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from orchestrator.core.objectives import KL_MEAN, Objective
from orchestrator.core.planning import Unreachable, plan_for
from orchestrator.core.records import NamedScheme, Point, ScoreTable, TrialResult, stable_seed
from orchestrator.core.stats import paired_ratio_ci, ratio_ci, spearman, verdict

RANDOM = "random"  # the pooled random controls' name


def measured_by_plan(results: Sequence[TrialResult]) -> dict[str, TrialResult]:
    """One finished measurement per plan hash, with its per-sequence sums."""
    out: dict[str, TrialResult] = {}
    for r in results:
        if r.status == "FINISHED" and r.per_sequence.get("kl"):
            out.setdefault(r.plan_hash, r)
    return out


def _row(base: Mapping[str, Any], kl: np.ndarray, tokens: np.ndarray, seed: int) -> dict[str, Any]:
    ci = ratio_ci(kl, tokens, seed)
    return {**base, "kl_mean": ci.estimate, "kl_ci": [ci.low, ci.high]}


def _paired(
    row: dict[str, Any], scheme_kl: np.ndarray, control_kl: np.ndarray, seed: int
) -> dict[str, Any]:
    ratio = paired_ratio_ci(scheme_kl, control_kl, seed)
    return {
        **row,
        "kl_ratio": ratio.estimate,
        "kl_ratio_ci": [ratio.low, ratio.high],
        "verdict": verdict(ratio),
    }


def compare_scheme(
    scheme: NamedScheme,
    tables: Mapping[str, ScoreTable],
    measured: Mapping[str, TrialResult],
    specs: Sequence[str],
    seed: int,
    objective: Objective = KL_MEAN,
) -> list[dict[str, Any]]:
    """One row per control (and one for the pooled random ones): its share, KL with CI, the ratio
    of the scheme's KL to it with CI, and a verdict (``better`` / ``indistinguishable`` /
    ``worse``; ``same plan``, ``not measured`` or ``cannot reach this share`` otherwise)."""
    mine = measured.get(scheme.plan_hash)
    sums = objective.per_sequence(mine.per_sequence) if mine is not None else None
    if sums is None:
        return [{"control": s, "verdict": "not measured"} for s in specs]
    kl, tokens = (np.asarray(x, dtype=float) for x in sums)
    rows: list[dict[str, Any]] = []
    randoms: list[np.ndarray] = []
    for spec in specs:
        point = Point.control_at(scheme, spec)
        try:
            plan = plan_for(point, tables)
        except Unreachable:
            rows.append({"control": spec, "verdict": "cannot reach this share"})
            continue
        base = {
            "control": spec,
            "objective": objective.metric,
            "plan_hash": plan.plan_hash,
            "fp8_fraction": plan.fp8_fraction,
        }
        if plan.plan_hash == scheme.plan_hash:
            rows.append({**base, "verdict": "same plan"})
            continue
        other = measured.get(plan.plan_hash)
        their_sums = objective.per_sequence(other.per_sequence) if other is not None else None
        if their_sums is None or len(their_sums[0]) != len(kl):
            rows.append({**base, "verdict": "not measured"})
            continue
        theirs = np.asarray(their_sums[0], dtype=float)
        if spec.startswith(RANDOM + ":"):
            randoms.append(theirs)
        row = _row(base, theirs, tokens, stable_seed(seed, plan.plan_hash))
        rows.append(_paired(row, kl, theirs, stable_seed(seed, scheme.plan_hash, spec)))
    if len(randoms) > 1:
        pooled = np.mean(randoms, axis=0)
        base = {"control": RANDOM, "objective": objective.metric, "seeds": len(randoms)}
        row = _row(base, pooled, tokens, stable_seed(seed, RANDOM))
        rows.append(_paired(row, kl, pooled, stable_seed(seed, scheme.plan_hash, RANDOM)))
    return rows


def verdicts(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    return {str(r["control"]): str(r["verdict"]) for r in rows}


def _score_kl_pairs(
    results: Sequence[TrialResult],
    table: ScoreTable,
    tables: Mapping[str, ScoreTable],
    objective: Objective,
) -> dict[str, tuple[float, float, float]]:
    """Per distinct scored plan of this setup: (summed score, measured KL, effective bits asked)."""
    pairs: dict[str, tuple[float, float, float]] = {}
    for r in results:
        if r.kind != "trial" or r.status != "FINISHED" or r.method != table.method:
            continue
        if r.fp8_recipe != table.fp8_recipe:
            continue
        kl = objective.value(r.metrics)
        if np.isfinite(kl):
            plan = plan_for(Point.of(r), tables)
            pairs.setdefault(r.plan_hash, (plan.score_sum, kl, round(r.effective_bits, 6)))
    # in plan-hash order, not the order trials finished: a resumed sweep gets its results in
    # another order, and sums in that order moved schemes.yaml's correlations in the last digit
    return dict(sorted(pairs.items()))


def score_kl_correlation(
    results: Sequence[TrialResult],
    tables: Mapping[str, ScoreTable],
    objective: Objective = KL_MEAN,
) -> dict[str, float]:
    """Per scoring method, Spearman's rho between a plan's summed score and its measured KL (the
    selection objective's) over the sweep's scored plans: near 1 when the scores' additivity held
    on this model. Across shares it is dominated by the share itself (more FP8, more of both)."""
    out = {}
    for name, pairs in _by_setup(results, tables, objective).items():
        xs, ys, _ = zip(*pairs.values(), strict=True)
        out[name] = spearman(xs, ys)
    return out


def score_kl_within_share(
    results: Sequence[TrialResult],
    tables: Mapping[str, ScoreTable],
    objective: Objective = KL_MEAN,
) -> dict[str, float]:
    """Per scoring method, Spearman's rho between summed score and measured KL among the plans
    asked for one budget (effective bits; the strategies and coverages that spend it differently),
    averaged over the budgets with at least 3 such plans, weighted by their count: whether the
    scores rank the choices a user actually has at a share. Methods with none are left out."""
    out = {}
    for name, pairs in _by_setup(results, tables, objective).items():
        budgets: dict[float, list[tuple[float, float]]] = {}
        for score, kl, bits in pairs.values():
            budgets.setdefault(bits, []).append((score, kl))
        rhos = []
        for _, group in sorted(budgets.items()):
            rho = spearman(*zip(*group, strict=True)) if len(group) >= 3 else float("nan")
            if np.isfinite(rho):
                rhos.append((rho, len(group)))
        if rhos:
            out[name] = float(sum(r * n for r, n in rhos) / sum(n for _, n in rhos))
    return out


def _by_setup(
    results: Sequence[TrialResult], tables: Mapping[str, ScoreTable], objective: Objective
) -> dict[str, dict[str, tuple[float, float, float]]]:
    """The pairs of each scoring setup that has any, named by method (by "method|recipe" when a
    method was scored with several recipes)."""
    one_recipe = len({t.method for t in tables.values()}) == len(tables)
    out = {}
    for key, table in sorted(tables.items()):
        pairs = _score_kl_pairs(results, table, tables, objective)
        if pairs:
            out[table.method if one_recipe else key] = pairs
    return out

"""Each published scheme against each control at its FP8 share, on the same tokens; and how well
the summed scores predicted the measured KL.

A control's plan is re-derived here from the score table (planning is pure), so ``select`` can
re-run on an old sweep and find the same measurements by plan hash. Each row says the share the
control reached and its difference from the scheme's (``fp8_fraction``, ``fp8_fraction_diff``).

ModelOpt's own solve (``modelopt``) comes first: the plan its AutoQuantize solver returns for the
scheme's share from the same raw scores (stored in the score table by the sweep), with the budget
it was given (``modelopt_effective_bits``) beside the scheme's (``effective_bits``). Controls whose
plans coincide are one comparison: the first in order is tested, the others repeat its numbers,
and each names the others (``same_plan_as``), so Holm counts that plan once.

The random orders are one control, ``random``, read as a distribution: the scheme against the
seeds' mean KL with an interval over seeds and sequences (``stats.seeds_comparison``), each
seed's own ratio in ``by_seed`` with their spread, and the scheme's rank among the seeds. That is
the comparison a user means by "better than random choice"; a single seed is a draw, not a
control.

Verdicts (``stats``): ``better`` / ``worse`` when the paired ratio's 95% interval clears the
materiality margin, ``equivalent`` when it lies inside it, ``inconclusive`` otherwise, with Holm's
correction across every comparison of the sweep (:func:`compare_schemes`); all on the selection
objective's tokens (every target, or the image answers alone: ``orchestrator.core.objectives``)
of the report set, which chose nothing (``measured_on``; the selection set only for a sweep
without one), summed per document, so the intervals resample documents. Pure module: numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from orchestrator.core.objectives import KL_MEAN, Objective
from orchestrator.core.planning import MODELOPT, NotSolved, Unreachable, modelopt_solve, plan_for
from orchestrator.core.records import (
    NamedScheme,
    Plan,
    Point,
    ScoreTable,
    TrialResult,
    stable_seed,
    table_key,
)
from orchestrator.core.stats import (
    ALPHA,
    LEVEL,
    MARGIN,
    Comparison,
    holm,
    paired_comparison,
    ratio_ci,
    seeds_comparison,
    seeds_ratio_ci,
    spearman,
    verdict,
)

RANDOM = "random"  # the random orders' name, as one control
# what a control whose plan an earlier control shares takes from that control's row
_COMPARISON = ("kl_mean", "kl_ci", "kl_ratio", "kl_ratio_ci", "p", "p_holm", "verdict")


def measured_by_plan(results: Sequence[TrialResult]) -> dict[str, TrialResult]:
    """One finished measurement per plan hash, with its per-sequence sums."""
    out: dict[str, TrialResult] = {}
    for r in results:
        if r.status == "FINISHED" and r.per_sequence.get("kl"):
            out.setdefault(r.plan_hash, r)
    return out


def _judged(row: dict[str, Any], test: Comparison) -> dict[str, Any]:
    """The ratio, its interval and the unadjusted p; the verdict waits for the whole sweep."""
    return {
        **row,
        "kl_ratio": test.ratio.estimate,
        "kl_ratio_ci": [test.ratio.low, test.ratio.high],
        "p": test.p,
    }


class _Scheme:
    """One scheme's side of its comparisons: its per-sequence KL and tokens on the objective, and
    what it takes to plan and look up a control at its share."""

    def __init__(
        self,
        scheme: NamedScheme,
        tables: Mapping[str, ScoreTable],
        measured: Mapping[str, TrialResult],
        objective: Objective,
        seed: int,
        margin: float,
    ) -> None:
        self.scheme, self.tables, self.measured = scheme, tables, measured
        self.objective, self.seed, self.margin = objective, seed, margin
        mine = measured.get(scheme.plan_hash)
        sums = objective.per_sequence(mine.per_sequence) if mine is not None else None
        kl, tokens = sums if sums is not None else ([], [])
        self.kl: np.ndarray = np.asarray(kl, dtype=float)
        self.tokens: np.ndarray = np.asarray(tokens, dtype=float)

    def plan(self, spec: str) -> Plan:
        return plan_for(Point.control_at(self.scheme, spec), self.tables)

    def base(self, spec: str, plan: Plan) -> dict[str, Any]:
        row = {
            "control": spec,
            "objective": self.objective.metric,
            "measured_on": self.objective.set_name,
            "plan_hash": plan.plan_hash,
            "fp8_fraction": round(plan.fp8_fraction, 6),
            "fp8_fraction_diff": round(plan.fp8_fraction - self.scheme.fp8_fraction, 6),
        }
        if spec == MODELOPT:
            row.update(self.modelopt_budget(plan))
        return row

    def modelopt_budget(self, plan: Plan) -> dict[str, float]:
        """The scheme's share as effective bits over the eligible weights, and the budget
        ModelOpt's solve was given for it (its effective bits over its own cost denominator)."""
        table = self.tables[table_key(self.scheme.method, self.scheme.fp8_recipe)]
        solve = modelopt_solve(table, plan.target_bits) or {}
        return {
            "effective_bits": round(plan.target_bits, 6),
            "modelopt_effective_bits": float(solve.get("modelopt_effective_bits", float("nan"))),
        }

    def kl_of(self, plan: Plan) -> np.ndarray | None:
        """The plan's per-sequence KL on the scheme's sequences, or None if not measured so."""
        r = self.measured.get(plan.plan_hash)
        sums = self.objective.per_sequence(r.per_sequence) if r is not None else None
        if sums is None or len(sums[0]) != len(self.kl):
            return None
        return np.asarray(sums[0], dtype=float)

    def seed_of(self, *parts: str) -> int:
        return stable_seed(self.seed, *parts)


def _one_control(
    me: _Scheme, spec: str, seen: set[str]
) -> tuple[dict[str, Any], Comparison | None]:
    """One control's row and its test; none when its plan is the scheme's, or one that an earlier
    control in ``seen`` already tests (its row then waits for that one's numbers)."""
    try:
        plan = me.plan(spec)
    except Unreachable:
        return {"control": spec, "verdict": "cannot reach this share"}, None
    except NotSolved:  # a scheme that select moved to a share the sweep never solved
        return {"control": spec, "verdict": "not measured"}, None
    base = me.base(spec, plan)
    if plan.plan_hash == me.scheme.plan_hash:
        return {**base, "verdict": "same plan"}, None
    if plan.plan_hash in seen:
        return base, None
    seen.add(plan.plan_hash)
    theirs = me.kl_of(plan)
    if theirs is None:
        return {**base, "verdict": "not measured"}, None
    ci = ratio_ci(theirs, me.tokens, me.seed_of(plan.plan_hash))
    test = paired_comparison(me.kl, theirs, me.seed_of(me.scheme.plan_hash, spec), me.margin)
    return _judged({**base, "kl_mean": ci.estimate, "kl_ci": [ci.low, ci.high]}, test), test


def _random_control(me: _Scheme, specs: Sequence[str]) -> tuple[dict[str, Any], Comparison | None]:
    """The random orders as one control: every seed measured at the scheme's share is a draw."""
    draws: list[tuple[dict[str, Any], np.ndarray]] = []
    unreachable = missing = 0
    for spec in specs:
        try:
            plan = me.plan(spec)
        except Unreachable:
            unreachable += 1
            continue
        theirs = me.kl if plan.plan_hash == me.scheme.plan_hash else me.kl_of(plan)
        if theirs is None:
            missing += 1
            continue
        draws.append((me.base(spec, plan), theirs))
    if not draws:
        word = "cannot reach this share" if unreachable == len(specs) else "not measured"
        return {"control": RANDOM, "verdict": word, "seeds": 0}, None
    same = sum(row["plan_hash"] == me.scheme.plan_hash for row, _ in draws)
    base = {
        "control": RANDOM,
        "objective": me.objective.metric,
        "measured_on": me.objective.set_name,
        "seeds": len(draws),
    }
    if missing:
        base["seeds_not_measured"] = missing
    if same == len(draws):
        return {**base, "verdict": "same plan"}, None
    per_seed = np.stack([kl for _, kl in draws])
    seed_kl = per_seed.sum(axis=1)
    ratios = [float(me.kl.sum() / k) if k > 0 else float("inf") for k in seed_kl]
    shares = [row["fp8_fraction"] for row, _ in draws]
    ci = seeds_ratio_ci(per_seed, me.tokens, me.seed_of(RANDOM))
    test = seeds_comparison(me.kl, per_seed, me.seed_of(me.scheme.plan_hash, RANDOM), me.margin)
    row = {
        **base,
        "fp8_fraction_range": [min(shares), max(shares)],
        "fp8_fraction_diff": max((row["fp8_fraction_diff"] for row, _ in draws), key=abs),
        "kl_mean": ci.estimate,
        "kl_ci": [ci.low, ci.high],
        "seed_kl_ratio": {
            "min": min(ratios),
            "median": float(np.median(ratios)),
            "max": max(ratios),
        },
        # 1: less KL than every seed; seeds + 1: more than every one
        "scheme_rank": 1 + int((seed_kl < me.kl.sum()).sum()),
        "by_seed": [
            {**r, "kl_mean": float(kl.sum() / me.tokens.sum()), "kl_ratio": q}
            for (r, kl), q in zip(draws, ratios, strict=True)
        ],
    }
    return _judged(row, test), test


def _scheme_rows(
    me: _Scheme, specs: Sequence[str]
) -> list[tuple[dict[str, Any], Comparison | None]]:
    if not len(me.kl):
        return [({"control": s, "verdict": "not measured"}, None) for s in _names(specs)]
    randoms = [s for s in specs if s.startswith(RANDOM + ":")]
    seen: set[str] = set()
    out = [_one_control(me, s, seen) for s in specs if s not in randoms]
    return out + ([_random_control(me, randoms)] if randoms else [])


def _share_comparisons(rows: Sequence[dict[str, Any]]) -> None:
    """Controls of one scheme whose plans coincide: each names the others (``same_plan_as``), and
    every one after the first takes the first's comparison, verdict included (one test)."""
    by_plan: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if "plan_hash" in r and r.get("verdict") != "same plan":
            by_plan.setdefault(r["plan_hash"], []).append(r)
    for group in by_plan.values():
        if len(group) < 2:
            continue
        for r in group:
            r["same_plan_as"] = [o["control"] for o in group if o is not r]
        for r in group[1:]:
            r.update({k: group[0][k] for k in _COMPARISON if k in group[0]})


def _names(specs: Sequence[str]) -> list[str]:
    """The controls as compared: each spec, the random seeds as one ``random``."""
    names = [s for s in specs if not s.startswith(RANDOM + ":")]
    return names + ([RANDOM] if len(names) < len(specs) else [])


def compare_schemes(
    schemes: Sequence[NamedScheme],
    tables: Mapping[str, ScoreTable],
    measured: Mapping[str, TrialResult],
    specs: Sequence[str],
    seed: int,
    objective: Objective = KL_MEAN,
    margin: float = MARGIN,
    alpha: float = ALPHA,
) -> list[list[dict[str, Any]]]:
    """Per scheme, one row per control in ``specs`` order (ModelOpt's own solve first when the
    config has it; the random seeds as one, ``random``, last): the share it reached and its
    difference from the scheme's, its KL with CI, the ratio of the scheme's KL to it with CI, p
    and Holm's p across every comparison of the sweep, and a verdict (``better`` / ``worse`` /
    ``equivalent`` / ``inconclusive``; ``same plan``, ``not measured`` or ``cannot reach this
    share`` otherwise); ``same_plan_as`` names the other controls with the same plan."""
    per_scheme = [
        _scheme_rows(_Scheme(s, tables, measured, objective, seed, margin), specs) for s in schemes
    ]
    tested = [(row, test) for rows in per_scheme for row, test in rows if test is not None]
    for (row, test), p_holm in zip(tested, holm([t.p for _, t in tested]), strict=True):
        row["p_holm"] = p_holm
        row["verdict"] = verdict(test, p_holm, alpha)
    out = [[row for row, _ in rows] for rows in per_scheme]
    for rows in out:
        _share_comparisons(rows)
    return out


def verdict_rule(rows: Sequence[Sequence[Mapping[str, Any]]], margin: float) -> dict[str, Any]:
    """What the verdicts of a sweep mean, for its schemes.yaml: the margin's bounds on the KL
    ratio, the interval's level and the correction over the comparisons that were tested."""
    return {
        "margin": margin,
        "better_below": round(1.0 / (1.0 + margin), 6),
        "worse_above": round(1.0 + margin, 6),
        "level": LEVEL,
        "correction": "holm",
        # one per scheme and plan tested (controls that share a plan share its test); a row with
        # no plan hash (the random seeds, compare_sweeps' names) counts one
        "comparisons": len(
            {
                (i, r.get("plan_hash", j))
                for i, rs in enumerate(rows)
                for j, r in enumerate(rs)
                if "p" in r
            }
        ),
    }


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

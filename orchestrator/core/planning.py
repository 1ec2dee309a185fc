"""From a score table and one point of the space (effective bits, coverage) to the exact FP8 module
set.

Budget. With FP8 and BF16 as the only formats, effective bits b over the eligible LM weights fix the
FP8 share: b = 16 - 8 * share, so share = (16 - b) / 8. Which groups make up that share is the
AutoQuantize solve, reproduced here without ModelOpt so that a new budget costs microseconds:

* ``gradient`` scores: ModelOpt solves an integer program, minimum summed score with the quantized
  weight size under the budget. That is a 0/1 knapsack; we solve it exactly by dynamic programming
  over weight sizes divided by their greatest common divisor (Qwen layer shapes give a few thousand
  units for 3B), which yields the same optimum as ModelOpt's solver.
* ``kl_div`` scores: ModelOpt lowers a threshold until the budget holds, i.e. it takes groups in
  ascending score order. We take the same prefix.

Coverage c in (0, 1] is the second, independent axis: only the ceil(c * blocks) least sensitive
decoder blocks (summed group score, ties on block index) may hold FP8; everything else stays BF16.
When the allowed blocks hold fewer weights than the budget asks for, the plan takes all of them and
says ``budget_met=False``; the sweep's de-duplication then folds such points onto one trial.

Strategy is the third axis, and what a heuristic does well becomes a candidate of the solve rather
than its rival: ``ends_bf16:N`` keeps the first and last N blocks BF16 and lets the scores choose
among the rest, ``mlp_only`` keeps attention BF16 and lets them choose among the MLP groups. The
selector compares every strategy, method and coverage at each share.

Controls are what a person does without the scores (a seeded random order, the first and last
blocks or the attention kept BF16 with the rest taken in block order) and, as a floor, the scores
read backwards. They are planned only at a published scheme's FP8 share, for a paired
comparison, each filled in its own order to within half a group of that share (``_fill_to``), and
are never published. One control reads the scores the way ModelOpt does: ``modelopt``, the groups
ModelOpt's own AutoQuantize solve returns for that share from the same raw scores. Its solver
needs ModelOpt, so the sweep solves it once per scheme (``orchestrator.model.modelopt_plan``) and
stores the group names in the score table's ``meta``; here it is only looked up, so ``select`` finds
the same plan on an old sweep without ModelOpt.

Ties break on group name, so a plan is a pure function of its inputs on every host. Pure module.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from functools import reduce
from typing import Any

import numpy as np

from orchestrator.core.records import Plan, Point, ScoreGroup, ScoreTable, plan_hash, table_key

BF16_BYTES = 2
FP8_BYTES = 1


def fp8_share_for_bits(effective_bits: float) -> float:
    """Share of eligible LM weights that must be FP8 to reach ``effective_bits``."""
    if not 8.0 <= effective_bits <= 16.0:
        raise ValueError(f"effective_bits={effective_bits} is outside [8, 16]")
    return (16.0 - effective_bits) / 8.0


def bits_for_fp8_share(share: float) -> float:
    """Effective bits over the eligible LM weights when ``share`` of them is FP8: the inverse of
    :func:`fp8_share_for_bits`, so the budget a plan reaches and the one a name asks for are read
    on the same scale."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"FP8 share {share} is outside [0, 1]")
    return 16.0 - 8.0 * share


def allowed_blocks(
    table: ScoreTable, coverage: float, among: Collection[int] | None = None
) -> tuple[int, ...]:
    """The ceil(coverage * blocks) least sensitive blocks (summed group score), taken ``among``
    the blocks a strategy permits; ties break on block index."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage={coverage} is outside (0, 1]")
    block_score: dict[int, float] = {}
    for g in table.groups:
        block_score[g.block] = block_score.get(g.block, 0.0) + g.score
    n_allowed = max(1, math.ceil(coverage * len(block_score) - 1e-9))
    permitted = [b for b in block_score if among is None or b in among]
    ranked = sorted(permitted, key=lambda b: (block_score[b], b))
    return tuple(sorted(ranked[:n_allowed]))


def _threshold_select(groups: Sequence[ScoreGroup], need: int) -> list[ScoreGroup]:
    """Least sensitive first until the FP8 weights reach ``need`` (ModelOpt's kl_div solve)."""
    chosen: list[ScoreGroup] = []
    covered = 0
    for g in sorted(groups, key=lambda g: (g.score, g.name)):
        if covered >= need:
            break
        chosen.append(g)
        covered += g.params
    return chosen


def _knapsack_select(groups: Sequence[ScoreGroup], need: int) -> list[ScoreGroup]:
    """Minimum summed score whose weights cover ``need`` exactly (ModelOpt's gradient solve).

    f[j] = least score that covers at least j units; each group either joins or not. Units are
    parameter counts divided by their gcd, and capped at the need, so the table stays small.
    """
    if need <= 0:
        return []
    items = sorted(groups, key=lambda g: (g.score, g.name))
    unit = reduce(math.gcd, (g.params for g in items))
    cap = -(-need // unit)
    f = np.full(cap + 1, np.inf)
    f[0] = 0.0
    take = np.zeros((len(items), cap + 1), dtype=bool)
    idx = np.arange(cap + 1)
    for i, g in enumerate(items):
        w = g.params // unit
        prev = f[np.maximum(idx - w, 0)] + g.score
        better = prev < f
        take[i] = better
        f = np.where(better, prev, f)
    chosen: list[ScoreGroup] = []
    j = cap
    for i in range(len(items) - 1, -1, -1):
        if take[i, j]:
            chosen.append(items[i])
            j = max(j - items[i].params // unit, 0)
    return chosen


SOLVERS = {"gradient": _knapsack_select, "kl_div": _threshold_select}
STRATEGIES = ("solve", "ends_bf16", "mlp_only")
MLP_KINDS = ("gate_up", "down")


def parse_spec(spec: str, allowed: Sequence[str]) -> tuple[str, int]:
    """``"ends_bf16:2"`` -> ("ends_bf16", 2); the kind must be one of ``allowed``."""
    kind, _, arg = spec.partition(":")
    if kind not in allowed or (arg and not arg.isdigit()):
        raise ValueError(
            f"{spec!r} is not one of {', '.join(allowed)} (with ':N' where it takes one)"
        )
    return kind, int(arg or 0)


def _end_blocks(blocks: Sequence[int], n: int) -> set[int]:
    """The first and last ``n`` decoder blocks."""
    ordered = sorted(blocks)
    return set(ordered[:n]) | set(ordered[len(ordered) - n :]) if n else set()


def _need(table: ScoreTable, effective_bits: float) -> int:
    """FP8 parameters a budget asks for; a hair below the exact product so that b=12 over 4 equal
    blocks asks for exactly 2 of them, and a share written as bits round-trips to its count."""
    share = fp8_share_for_bits(effective_bits)
    total = table.eligible_params
    return max(0, math.ceil(share * total - 1e-9 * total))


def make_plan(
    table: ScoreTable, effective_bits: float, coverage: float, strategy: str = "solve"
) -> Plan:
    """Resolve one point of the space to the exact FP8 module set, deterministically.

    The strategy narrows what the scores may choose from: ``solve`` lets them pick among every
    allowed block; ``ends_bf16:N`` keeps the first and last N blocks BF16 first; ``mlp_only``
    keeps attention BF16. Within what is left, the method's own solve picks the groups.
    """
    kind, n = parse_spec(strategy, STRATEGIES)
    every_block = sorted({g.block for g in table.groups})
    kept = _end_blocks(every_block, n) if kind == "ends_bf16" else set()
    blocks = allowed_blocks(table, coverage, [b for b in every_block if b not in kept])
    candidates = [
        g
        for g in table.groups
        if g.block in set(blocks) and (kind != "mlp_only" or g.kind in MLP_KINDS)
    ]
    need = _need(table, effective_bits)
    available = sum(g.params for g in candidates)
    if need >= available:
        chosen = list(candidates) if need > 0 else []
    else:
        chosen = SOLVERS[table.method](candidates, need)
    return _plan_from_groups(table, chosen, effective_bits, coverage, blocks, need, strategy)


def _plan_from_groups(
    table: ScoreTable,
    chosen: Sequence[ScoreGroup],
    effective_bits: float,
    coverage: float,
    blocks: tuple[int, ...],
    need: int,
    strategy: str,
) -> Plan:
    modules = tuple(sorted(m for g in chosen for m in g.modules))
    fp8_params = sum(g.params for g in chosen)
    total = table.eligible_params
    fraction = fp8_params / total if total else 0.0
    return Plan(
        plan_hash=plan_hash(modules, table.fp8_recipe),
        fp8_recipe=table.fp8_recipe,
        fp8_modules=modules,
        fp8_groups=tuple(sorted(g.name for g in chosen)),
        target_bits=float(effective_bits),
        coverage=float(coverage),
        achieved_bits=bits_for_fp8_share(fraction),
        fp8_fraction=fraction,
        budget_met=fp8_params >= need,
        allowed_blocks=blocks,
        lm_bytes=table.lm_params * BF16_BYTES - fp8_params * (BF16_BYTES - FP8_BYTES),
        model_bytes=table.model_params * BF16_BYTES - fp8_params * (BF16_BYTES - FP8_BYTES),
        score_sum=float(sum(g.score for g in chosen)),
        strategy=strategy,
    )


MODELOPT = "modelopt"  # the control whose groups ModelOpt's own solve chose
ORDERS = ("random", "inverse", "ends_fixed", "attn_bf16")  # the controls that fill an order
MODELOPT_PLANS = "modelopt_plans"  # the score table's meta key: budget key -> ModelOpt's solve
_KIND_ORDER = {k: i for i, k in enumerate(("qkv", "o", "gate_up", "down"))}


def _fill_to(order: Sequence[ScoreGroup], need: int) -> list[ScoreGroup] | None:
    """The groups a control takes to hold as nearly as its groups can the FP8 share of the scheme
    it is compared with; None when the whole order cannot reach ``need``.

    The target is the size nearest ``need`` that any subset of the control's groups makes (the
    larger on a tie), and the control takes its groups in its own order, each one whenever the
    groups after it can still complete that size. A plain prefix stops at the group that crosses
    ``need`` and is off by up to half of *that* group (a gate/up group is a few points of the
    weights on a small model); this lands on ``need`` exactly whenever the groups can, as a
    scheme's share, itself a sum of groups, usually can be, and otherwise no nearer plan exists.

    Sizes are counted in units of their gcd, and ``reach[i]`` is a bitset (a Python int) of the
    sizes the groups from ``i`` on can make, capped one group above ``need``: the nearest size
    above ``need`` is below that, or a group could be dropped from it.
    """
    if sum(g.params for g in order) < need:
        return None
    if need <= 0:
        return []
    unit = reduce(math.gcd, (g.params for g in order))
    sizes = [g.params // unit for g in order]
    cap = need // unit + max(sizes) + 1
    mask = (1 << (cap + 1)) - 1
    reach = [1]
    for w in reversed(sizes):
        reach.append((reach[-1] | (reach[-1] << w)) & mask)
    reach.reverse()  # reach[i]: what order[i:] can make; reach[len(order)] == 1 (nothing)
    below = reach[0] & ((1 << (need // unit + 1)) - 1)
    above = reach[0] >> -(-need // unit)
    low = below.bit_length() - 1
    high = -(-need // unit) + (above & -above).bit_length() - 1
    target = high if high * unit - need <= need - low * unit else low
    chosen: list[ScoreGroup] = []
    for i, (g, w) in enumerate(zip(order, sizes, strict=True)):
        if target >= w and reach[i + 1] >> (target - w) & 1:
            chosen.append(g)
            target -= w
    return chosen


def control_order(table: ScoreTable, spec: str) -> list[ScoreGroup]:
    """The order in which a control takes groups into FP8:

    * ``random:S``: a seeded random order (seed S);
    * ``inverse``: most sensitive first, the scores read backwards (a sanity floor);
    * ``ends_fixed:N``: the first and last N blocks kept BF16, the rest in block order, no scores;
    * ``attn_bf16``: attention kept BF16, the MLP in block order, no scores.
    """
    kind, n = parse_spec(spec, ORDERS)
    fixed = sorted(table.groups, key=lambda g: (g.block, _KIND_ORDER.get(g.kind, 9), g.name))
    if kind == "random":
        order = sorted(table.groups, key=lambda g: g.name)
        np.random.default_rng(n).shuffle(order)
        return order
    if kind == "inverse":
        return sorted(table.groups, key=lambda g: (-g.score, g.name))
    if kind == "ends_fixed":
        kept = _end_blocks(sorted({g.block for g in table.groups}), n)
        return [g for g in fixed if g.block not in kept]
    return [g for g in fixed if g.kind in MLP_KINDS]


def budget_key(effective_bits: float) -> str:
    """How a budget names ModelOpt's solve in the table's meta (JSON keys are strings): six
    decimals, finer than any share a group can move."""
    return f"{effective_bits:.6f}"


def modelopt_solve(table: ScoreTable, effective_bits: float) -> Mapping[str, Any] | None:
    """ModelOpt's own solve stored for this budget (``groups``: its FP8 groups;
    ``modelopt_effective_bits``: the budget ModelOpt was given), or None if none is stored."""
    solves = table.meta.get(MODELOPT_PLANS) or {}
    found: Mapping[str, Any] | None = solves.get(budget_key(effective_bits))
    return found


def with_modelopt_solve(
    table: ScoreTable,
    effective_bits: float,
    groups: Collection[str],
    modelopt_effective_bits: float,
) -> ScoreTable:
    """``table`` with ModelOpt's solve for ``effective_bits`` stored in its meta, the form
    :func:`modelopt_solve` reads back (and the score files under ``scores/`` keep)."""
    known = {g.name for g in table.groups}
    unknown = sorted(set(groups) - known)
    if unknown:
        raise ValueError(f"ModelOpt's solve names groups {unknown[:3]} that the table lacks")
    entry = {"groups": sorted(groups), "modelopt_effective_bits": float(modelopt_effective_bits)}
    solves = {**(table.meta.get(MODELOPT_PLANS) or {}), budget_key(effective_bits): entry}
    return replace(table, meta={**table.meta, MODELOPT_PLANS: solves})


def control_plan(table: ScoreTable, spec: str, effective_bits: float) -> Plan | None:
    """A control at the FP8 share of ``effective_bits`` (coverage 1.0), within half of its
    smallest group left out; None if it cannot get there. ``modelopt`` is the groups ModelOpt's
    solve returned for that share, as they are: its share is ModelOpt's, not refilled."""
    need = _need(table, effective_bits)
    blocks = tuple(sorted({g.block for g in table.groups}))
    if spec == MODELOPT:
        solve = modelopt_solve(table, effective_bits)
        if solve is None:
            raise NotSolved(
                f"no ModelOpt solve at {effective_bits:g} bits in the {table.method} scores"
            )
        chosen = [g for g in table.groups if g.name in set(solve["groups"])]
        return _plan_from_groups(table, chosen, effective_bits, 1.0, blocks, need, "control")
    picked = _fill_to(control_order(table, spec), need)
    if picked is None:
        return None
    return _plan_from_groups(table, picked, effective_bits, 1.0, blocks, need, "control")


class Unreachable(ValueError):
    """A control cannot reach the FP8 share its point asks for (every order it may take falls
    short); the paired round and the verdicts skip that control at that share."""


class NotSolved(LookupError):
    """ModelOpt's solve at this share is not in the score table: the sweep stores it when it plans
    the paired round, so a scheme that ``select`` moved to another share reads ``not measured``
    against it until the sweep runs again."""


def plan_for(point: Point, tables: Mapping[str, ScoreTable]) -> Plan:
    """The plan of a point, with its setup's score table: the one way every stage (the grid, the
    paired round, a trial, its result, the published files, the verdicts) gets from a point to
    its module set, so they all agree on its ``plan_hash``."""
    table = tables[table_key(point.method, point.fp8_recipe)]
    if not point.control:
        return make_plan(table, point.effective_bits, point.coverage, point.strategy)
    plan = control_plan(table, point.control, point.effective_bits)
    if plan is None:
        raise Unreachable(f"control {point.control!r} cannot reach {point.effective_bits:g} bits")
    return plan

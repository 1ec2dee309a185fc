"""From a score table and one point of the space (effective bits, coverage) to the exact FP8 module set.

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

Ties break on group name, so a plan is a pure function of its inputs on every host. Pure module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import reduce
from typing import Any

import numpy as np

from orchestrator.records import Plan, ScoreGroup, ScoreTable, plan_hash

BF16_BYTES = 2
FP8_BYTES = 1


def fp8_share_for_bits(effective_bits: float) -> float:
    """Share of eligible LM weights that must be FP8 to reach ``effective_bits``."""
    if not 8.0 <= effective_bits <= 16.0:
        raise ValueError(f"effective_bits={effective_bits} is outside [8, 16]")
    return (16.0 - effective_bits) / 8.0


def allowed_blocks(table: ScoreTable, coverage: float) -> tuple[int, ...]:
    """The ceil(coverage * blocks) least sensitive blocks; a block's sensitivity is its summed score."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage={coverage} is outside (0, 1]")
    block_score: dict[int, float] = {}
    for g in table.groups:
        block_score[g.block] = block_score.get(g.block, 0.0) + g.score
    n_allowed = max(1, math.ceil(coverage * len(block_score) - 1e-9))
    ranked = sorted(block_score, key=lambda b: (block_score[b], b))
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


def make_plan(table: ScoreTable, effective_bits: float, coverage: float) -> Plan:
    """Resolve one point of the space to the exact FP8 module set, deterministically."""
    share = fp8_share_for_bits(effective_bits)
    blocks = allowed_blocks(table, coverage)
    candidates = [g for g in table.groups if g.block in set(blocks)]
    total = table.eligible_params
    # A hair below the exact product so that b=12 over 4 equal blocks asks for exactly 2 of them.
    need = max(0, math.ceil(share * total - 1e-9 * total))
    available = sum(g.params for g in candidates)
    if need >= available:
        chosen = list(candidates) if need > 0 else []
    else:
        chosen = SOLVERS[table.method](candidates, need)
    return _plan_from_groups(table, chosen, effective_bits, coverage, blocks, need)


def _plan_from_groups(
    table: ScoreTable,
    chosen: Sequence[ScoreGroup],
    effective_bits: float,
    coverage: float,
    blocks: tuple[int, ...],
    need: int,
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
        achieved_bits=16.0 - 8.0 * fraction,
        fp8_fraction=fraction,
        budget_met=fp8_params >= need,
        allowed_blocks=blocks,
        lm_bytes=table.lm_params * BF16_BYTES - fp8_params * (BF16_BYTES - FP8_BYTES),
        model_bytes=table.model_params * BF16_BYTES - fp8_params * (BF16_BYTES - FP8_BYTES),
        score_sum=float(sum(g.score for g in chosen)),
    )


# --- baselines: naive choices at the same FP8 share, to show what the scores are worth ----------

BASELINES = ("random", "inverse", "mlp_only", "ends_bf16")


def _fill(groups: Sequence[ScoreGroup], need: int) -> list[ScoreGroup]:
    chosen: list[ScoreGroup] = []
    covered = 0
    for g in groups:
        if covered >= need:
            break
        chosen.append(g)
        covered += g.params
    return chosen


def baseline_plan(table: ScoreTable, kind: str, effective_bits: float, arg: int = 0) -> Plan:
    """A naive plan at the budget of ``effective_bits`` (coverage 1.0):

    * ``random`` (``arg`` = seed): groups in a seeded random order;
    * ``inverse``: most sensitive first, the scores read backwards;
    * ``mlp_only``: attention kept BF16, MLP groups least sensitive first;
    * ``ends_bf16`` (``arg`` = N): the first and last N blocks kept BF16, the rest by score.
    """
    share = fp8_share_for_bits(effective_bits)
    total = table.eligible_params
    need = max(0, math.ceil(share * total - 1e-9 * total))
    by_score = sorted(table.groups, key=lambda g: (g.score, g.name))
    blocks = tuple(sorted({g.block for g in table.groups}))
    if kind == "random":
        order = sorted(table.groups, key=lambda g: g.name)
        np.random.default_rng(arg).shuffle(order)  # type: ignore[arg-type]
    elif kind == "inverse":
        order = sorted(table.groups, key=lambda g: (-g.score, g.name))
    elif kind == "mlp_only":
        order = [g for g in by_score if g.kind in ("gate_up", "down")]
    elif kind == "ends_bf16":
        kept = set(blocks[:arg]) | set(blocks[len(blocks) - arg :]) if arg else set()
        order = [g for g in by_score if g.block not in kept]
    else:
        raise ValueError(f"baseline {kind!r} is not one of {BASELINES}")
    return _plan_from_groups(table, _fill(order, need), effective_bits, 1.0, blocks, need)


def plan_point(table: ScoreTable, point: Mapping[str, Any]) -> Plan:
    """The plan of a sweep point: the scored solve, or a named baseline ("random:2", "inverse")."""
    spec = str(point.get("baseline") or "")
    if not spec:
        return make_plan(table, point["effective_bits"], point["coverage"])
    kind, _, arg = spec.partition(":")
    return baseline_plan(table, kind, point["effective_bits"], int(arg or 0))

"""The adaptive scoring budget: score in chunks, stop once the plans stop changing.

AutoQuantize's scores are sums over score batches, so a setup can be scored a chunk of batches at
a time and the chunks added up (``model/scoring.merge_shards``). After each chunk the driver
re-solves the plan of every grid point on the sums so far. A plan that changed counts when the
earlier plan, scored on the new sums, is more than ``tolerance`` worse than the new one (its
regret; 0: any change). A setup stops once no plan has counted over the last ``patience`` chunks,
or at ``num_score_steps`` batches, the maximum. The sweep only ever uses the plans, so batches
past that point buy trials of (nearly) the same plans. Near-tied groups keep swapping places as
batches come in (docs/benchmarks.md, "adaptive scoring budget"), so an exact rule rarely stops
early; the tolerance says how much worse, in the solver's own objective, a plan may still get.

Pure: the chunks of a budget, what changed between two chunks, and whether to stop (no torch, no
Ray); ``search/pool.run_scoring`` drives it.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from orchestrator.core.records import ScoreTable

# why a setup stopped scoring, in scores.parquet and the setup's table
STABLE = "stable"  # no grid plan changed over the last ``patience`` chunks
MAXIMUM = "maximum"  # the rule was on, the plans kept changing until num_score_steps
OFF = "off"  # the rule is off, or cannot stop before num_score_steps: every batch, in one piece


@dataclass(frozen=True)
class BudgetRule:
    """``chunk`` score batches at a time; stop after ``patience`` chunks in which no grid plan
    changed with a regret above ``tolerance`` (:func:`regret`; patience 0: the rule is off, every
    one of ``maximum`` batches is scored in one piece)."""

    maximum: int
    chunk: int
    patience: int
    tolerance: float = 0.0

    @property
    def on(self) -> bool:
        """Chunked only where the rule can stop before the maximum: the first stop comes after
        ``patience + 1`` chunks (the first one changes every plan)."""
        return self.patience > 0 and self.maximum > (self.patience + 1) * self.chunk

    def key(self) -> dict[str, float]:
        """What the score-cache key records: a rule that is off is one chunk of ``maximum``."""
        if not self.on:
            return {"chunk": self.maximum, "patience": 0, "tolerance": 0.0}
        return {"chunk": self.chunk, "patience": self.patience, "tolerance": self.tolerance}

    def chunks(self) -> list[list[int]]:
        """The score batches' indices, chunk by chunk, up to the maximum."""
        size = self.chunk if self.on else self.maximum
        return [
            list(range(start, min(start + size, self.maximum)))
            for start in range(0, self.maximum, size)
        ]

    def describe(self) -> str:
        if not self.on:
            return f"all {self.maximum} score batches"
        return (
            f"up to {self.maximum} score batches, {self.chunk} a chunk; stops after "
            f"{self.patience} chunk(s) with no plan {self.change()}"
        )

    def change(self) -> str:
        """What counts as a plan change, in a word or three."""
        return "change" if not self.tolerance else f"change > {100 * self.tolerance:g}%"


def group_scores(table: ScoreTable) -> dict[str, float]:
    return {g.name: g.score for g in table.groups}


def regret(before: Collection[str], after: Collection[str], scores: Mapping[str, float]) -> float:
    """How much worse the earlier plan (its FP8 groups) is than the new one on the new sums: the
    relative excess of its score sum, which is what the solver minimises and what KL follows. Two
    plans that swap near-tied groups differ by little; the solver's plan is never worse, so the
    regret is >= 0 up to rounding."""
    if set(before) == set(after):
        return 0.0
    old, new = (sum(scores[g] for g in plan) for plan in (before, after))
    if new <= 0:
        return 0.0 if old <= new else math.inf
    return (old - new) / new


def worst_regret(
    before: Sequence[Collection[str]] | None,
    after: Sequence[Collection[str]],
    scores: Mapping[str, float],
) -> float | None:
    """The largest regret over the grid's points between two chunks (None after the first)."""
    if before is None:
        return None
    return max((regret(a, b, scores) for a, b in zip(before, after, strict=True)), default=0.0)


def changed(
    before: Sequence[Collection[str]] | None,
    after: Sequence[Collection[str]],
    scores: Mapping[str, float],
    tolerance: float = 0.0,
) -> int:
    """How many grid points' plans changed between two chunks with a regret above ``tolerance``
    (every one after the first chunk). Tolerance 0: any change but an exact tie counts."""
    if before is None:
        return len(after)
    if len(before) != len(after):
        raise ValueError(f"grids of {len(before)} and {len(after)} points")
    return sum(regret(a, b, scores) > tolerance for a, b in zip(before, after, strict=True))


def stop_reason(rule: BudgetRule, changes: Sequence[int], used: int) -> str | None:
    """Why scoring stops after the chunks whose plan changes are ``changes`` (``used`` batches),
    or None to score another chunk. The first chunk's count is every plan, so ``patience`` chunks
    without a change need ``patience + 1`` chunks at least."""
    if not rule.on:
        return OFF if used >= rule.maximum else None
    if len(changes) > rule.patience and not any(changes[-rule.patience :]):
        return STABLE
    if used >= rule.maximum:
        return MAXIMUM
    return None


@dataclass
class Watch:
    """One setup's record of its chunks under ``rule``: the batches used, and per chunk the plans'
    changes and worst regret; the sweep's driver and ``scripts/bench_adaptive.py`` keep one."""

    rule: BudgetRule
    used: int = 0
    changes: list[int] = field(default_factory=list)
    regret: list[float | None] = field(default_factory=list)
    plans: tuple[frozenset[str], ...] | None = None

    def observe(
        self,
        batches: int,
        plans: Sequence[Collection[str]] | None = None,
        scores: Mapping[str, float] | None = None,
    ) -> str | None:
        """One more chunk of ``batches`` batches, with the grid's plans and the sums so far where
        they were solved; returns why scoring stops now (:func:`stop_reason`), or None."""
        self.used += batches
        if plans is not None and scores is not None:
            self.changes.append(changed(self.plans, plans, scores, self.rule.tolerance))
            self.regret.append(worst_regret(self.plans, plans, scores))
            self.plans = tuple(frozenset(p) for p in plans)
        return stop_reason(self.rule, self.changes, self.used)


def explain(reason: str, rule: BudgetRule, used: int) -> str:
    """One short phrase for the console: how many batches and why (a line fits 120 columns)."""
    if reason == STABLE:
        return (
            f"{used} of {rule.maximum} batches (no plan {rule.change()} in "
            f"{rule.patience} chunk(s) of {rule.chunk})"
        )
    if reason == MAXIMUM:
        last = f"the last {rule.patience} chunk(s)"
        return f"all {used} batches (a plan {rule.change()} in {last})"
    if rule.patience == 0:
        return f"all {used} batches (adaptive budget off)"
    return f"all {used} batches (too few for the adaptive budget to stop earlier)"

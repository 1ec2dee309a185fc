"""The adaptive scoring budget: score in chunks, stop once the plans stop changing.

AutoQuantize's scores are sums over score batches, so a setup can be scored a chunk of batches at
a time and the chunks added up (``model/scoring.merge_shards``). After each chunk the driver
re-solves the plan of every grid point on the sums so far; a setup stops once no plan has moved
more than ``tolerance`` of the eligible LM weights (0: no change at all) over the last
``patience`` chunks, or at ``num_score_steps`` batches, the maximum. The sweep only ever uses the
plans, so batches past that point would buy (nearly) the same trials. Near-tied groups keep
swapping places as batches come in (docs/benchmarks.md, "adaptive scoring budget"), so an exact
rule rarely stops; the tolerance says how much of the weight may still swap.

Pure: the chunks of a budget, what changed between two chunks, and whether to stop (no torch, no
Ray); ``search/pool.run_scoring`` drives it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from orchestrator.core.records import ScoreTable

# why a setup stopped scoring, in scores.parquet and the setup's table
STABLE = "stable"  # no grid plan changed over the last ``patience`` chunks
MAXIMUM = "maximum"  # the rule was on, the plans kept changing until num_score_steps
OFF = "off"  # the rule is off, or cannot stop before num_score_steps: every batch, in one piece


@dataclass(frozen=True)
class BudgetRule:
    """``chunk`` score batches at a time; stop after ``patience`` chunks in which no grid plan
    moved more than ``tolerance`` of the eligible LM weights (patience 0: the rule is off, every
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
        moves = "changes" if not self.tolerance else f"moves > {100 * self.tolerance:g}% of weights"
        return (
            f"up to {self.maximum} score batches, {self.chunk} at a time, until no plan {moves} "
            f"for {self.patience} chunk(s)"
        )


def group_weights(table: ScoreTable) -> dict[str, float]:
    """Each group's share of the eligible LM weights: what a plan change moves."""
    total = sum(g.params for g in table.groups) or 1
    return {g.name: g.params / total for g in table.groups}


def moved(before: Collection[str], after: Collection[str], weights: Mapping[str, float]) -> float:
    """The share of the eligible LM weights whose precision differs between two plans (their FP8
    groups): a swap of two groups moves both."""
    return sum(weights[g] for g in set(before) ^ set(after))


def most_moved(
    before: Sequence[Collection[str]] | None,
    after: Sequence[Collection[str]],
    weights: Mapping[str, float],
) -> float:
    """The most weight one grid point's plan moved between two chunks (1 after the first)."""
    if before is None:
        return 1.0
    return max((moved(a, b, weights) for a, b in zip(before, after, strict=True)), default=0.0)


def changed(
    before: Sequence[Collection[str]] | None,
    after: Sequence[Collection[str]],
    weights: Mapping[str, float],
    tolerance: float = 0.0,
) -> int:
    """How many grid points' plans moved more than ``tolerance`` of the weights between two chunks
    (every one after the first chunk). Tolerance 0: any change counts."""
    if before is None:
        return len(after)
    if len(before) != len(after):
        raise ValueError(f"grids of {len(before)} and {len(after)} points")
    return sum(moved(a, b, weights) > tolerance for a, b in zip(before, after, strict=True))


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


def explain(reason: str, rule: BudgetRule, used: int) -> str:
    """One phrase for the console: how many batches and why."""
    if reason == STABLE:
        return (
            f"{used} of {rule.maximum} score batches: no plan "
            f"{'changed' if not rule.tolerance else f'moved > {100 * rule.tolerance:g}%'} "
            f"over the last {rule.patience} chunk(s) of {rule.chunk}"
        )
    if reason == MAXIMUM:
        return f"all {used} score batches: plans still changed in the last {rule.patience} chunk(s)"
    if rule.patience == 0:
        return f"all {used} score batches (adaptive budget off)"
    return (
        f"all {used} score batches (the adaptive budget stops after {rule.patience + 1} chunks "
        f"of {rule.chunk} at the earliest)"
    )

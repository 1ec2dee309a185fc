"""The adaptive scoring budget: score in chunks, stop once the plans stop changing.

AutoQuantize's scores are sums over score batches, so a setup can be scored a chunk of batches at
a time and the chunks added up (``model/scoring.merge_shards``). After each chunk the driver
re-solves the plan of every grid point on the sums so far; a setup stops once no plan has changed
over the last ``patience`` chunks, or at ``num_score_steps`` batches, the maximum. The sweep only
ever uses the plans, so batches past that point would buy the same trials.

Pure: the chunks of a budget, what changed between two chunks, and whether to stop (no torch, no
Ray); ``search/pool.run_scoring`` drives it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# why a setup stopped scoring, in scores.parquet and the setup's table
STABLE = "stable"  # no grid plan changed over the last ``patience`` chunks
MAXIMUM = "maximum"  # the rule was on, the plans kept changing until num_score_steps
OFF = "off"  # the rule is off, or cannot stop before num_score_steps: every batch, in one piece


@dataclass(frozen=True)
class BudgetRule:
    """``chunk`` score batches at a time; stop after ``patience`` chunks without a plan change
    (0: the rule is off, every one of ``maximum`` batches is scored in one piece)."""

    maximum: int
    chunk: int
    patience: int

    @property
    def on(self) -> bool:
        """Chunked only where the rule can stop before the maximum: the first stop comes after
        ``patience + 1`` chunks (the first one changes every plan)."""
        return self.patience > 0 and self.maximum > (self.patience + 1) * self.chunk

    def key(self) -> dict[str, int]:
        """What the score-cache key records: a rule that is off is one chunk of ``maximum``."""
        if not self.on:
            return {"chunk": self.maximum, "patience": 0}
        return {"chunk": self.chunk, "patience": self.patience}

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
            f"up to {self.maximum} score batches, {self.chunk} at a time, until no plan changes "
            f"for {self.patience} chunk(s)"
        )


def changed(before: Sequence[str] | None, after: Sequence[str]) -> int:
    """How many grid points' plans differ between two chunks (all of them after the first)."""
    if before is None:
        return len(after)
    return sum(a != b for a, b in zip(before, after, strict=True))


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
            f"{used} of {rule.maximum} score batches: no plan changed over the last "
            f"{rule.patience} chunk(s) of {rule.chunk}"
        )
    if reason == MAXIMUM:
        return f"all {used} score batches: plans still changed in the last {rule.patience} chunk(s)"
    if rule.patience == 0:
        return f"all {used} score batches (adaptive budget off)"
    return (
        f"all {used} score batches (the adaptive budget stops after {rule.patience + 1} chunks "
        f"of {rule.chunk} at the earliest)"
    )

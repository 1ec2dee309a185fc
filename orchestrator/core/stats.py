"""Error bars for trial metrics and paired comparisons of plans, from per-sequence sums.

Every trial keeps, per evaluation sequence, its summed KL, its count of top-1 agreements and its
number of scored tokens. A metric of the whole set is a ratio of sums (``sum kl / sum tokens``),
so its uncertainty comes from which sequences happened to be in the evaluation set: we resample
*sequences* with replacement (a seeded bootstrap, percentile interval). Tokens within a sequence
are strongly correlated (one hard passage makes every token of it hard), which is why the unit of
resampling is the sequence and not the token; sequences are disjoint windows of held-out text and
are treated as independent.

Two plans measured on the same sequences are compared *paired*: each bootstrap replicate draws one
set of sequence indices and computes both plans' sums on it, so the text's own difficulty, which
moves both plans' KL together, cancels in their ratio. A ratio whose 95% interval lies below 1 is
``better``, above 1 ``worse``, otherwise ``indistinguishable``.

Pure module: numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

REPLICATES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


def _indices(n: int, seed: int, replicates: int) -> np.ndarray:
    """(replicates, n) sequence indices drawn with replacement, the same for the same seed."""
    if n < 1:
        raise ValueError("a bootstrap needs at least one sequence")
    return np.random.default_rng(seed).integers(0, n, size=(replicates, n))


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(samples, [tail, 100.0 - tail])
    return float(lo), float(hi)


def ratio_ci(
    numerator: Sequence[float] | np.ndarray,
    denominator: Sequence[float] | np.ndarray,
    seed: int,
    replicates: int = REPLICATES,
    level: float = LEVEL,
) -> Interval:
    """``sum(numerator) / sum(denominator)`` with a bootstrap interval over the sequences."""
    num = np.asarray(numerator, dtype=float)
    den = np.asarray(denominator, dtype=float)
    if num.shape != den.shape:
        raise ValueError(f"numerator has {num.shape} sequences, denominator {den.shape}")
    idx = _indices(len(num), seed, replicates)
    boot = num[idx].sum(axis=1) / np.maximum(den[idx].sum(axis=1), 1e-300)
    return Interval(float(num.sum() / den.sum()), *_percentiles(boot, level))


def paired_ratio_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    seed: int,
    replicates: int = REPLICATES,
    level: float = LEVEL,
) -> Interval:
    """``sum(a) / sum(b)`` for two plans on the same sequences, resampled together."""
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"plans were measured on {x.shape} and {y.shape} sequences")
    idx = _indices(len(x), seed, replicates)
    sx, sy = x[idx].sum(axis=1), y[idx].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = np.where(sy > 0, sx / np.where(sy > 0, sy, 1.0), np.inf)
    est = float(x.sum() / y.sum()) if y.sum() > 0 else float("inf")
    return Interval(est, *_percentiles(boot, level))


def verdict(ratio: Interval) -> str:
    """``better`` when the whole interval of (scheme / control) is below 1, ``worse`` above."""
    if ratio.high < 1.0:
        return "better"
    if ratio.low > 1.0:
        return "worse"
    return "indistinguishable"


def _ranks(v: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank."""
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v), dtype=float)
    ranks[order] = np.arange(1, len(v) + 1, dtype=float)
    for value in np.unique(v):
        tied = v == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (ties averaged); NaN with fewer than 3 points or a constant."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"{a.shape} vs {b.shape} values")
    if len(a) < 3:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])

"""Error bars for trial metrics and paired comparisons of plans, from per-sequence sums, and the
rules that turn a comparison into a verdict.

Every trial keeps, per evaluation sequence, its summed KL, its count of top-1 agreements and its
number of scored tokens. A metric of the whole set is a ratio of sums (``sum kl / sum tokens``),
so its uncertainty comes from which sequences happened to be in the evaluation set: we resample
*sequences* with replacement (a seeded bootstrap, percentile interval). Tokens within a sequence
are strongly correlated (one hard passage makes every token of it hard), which is why the unit of
resampling is the sequence and not the token; sequences are disjoint windows of held-out text and
are treated as independent.

Two plans measured on the same sequences are compared *paired*: each bootstrap replicate draws one
set of sequence indices and computes both plans' sums on it, so the text's own difficulty, which
moves both plans' KL together, cancels in their ratio. Against the random controls, which are a
distribution of plans rather than one, the seeds are resampled too (:func:`seeds_comparison`).

Verdicts (docs/SCHEMES.md has the formulas): with a materiality margin m (5% by default), a ratio
whose 95% interval lies below 1/(1+m) is ``better``, above 1+m ``worse``, inside [1/(1+m), 1+m]
``equivalent`` (two one-sided tests), anything else ``inconclusive``; each comparison's p-value
is adjusted by Holm's method across all the comparisons of a sweep before it may make a claim.

Pure module: numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

REPLICATES = 2000
LEVEL = 0.95
ALPHA = 0.05  # 1 - LEVEL: a claim is made when the 95% interval makes it (and Holm confirms it)
MARGIN = 0.05  # materiality: a KL ratio within 5% of 1 (on the log scale) is no difference


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


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` per replicate; inf where ``den`` is 0 (a control with no KL at all)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.inf)


@dataclass(frozen=True)
class Comparison:
    """A ratio (scheme KL / control KL) judged against a materiality margin ``m``.

    ``claim`` is the one of ``better`` (ratio below 1/(1+m)), ``worse`` (above 1+m) and
    ``equivalent`` (between them) that the bootstrap replicates support best, and ``p`` the
    smallest level alpha at which the (1 - alpha) percentile interval makes it: twice the share
    of replicates on the wrong side of the margin (for ``equivalent``, of the worse of its two
    sides: two one-sided tests), counted as (k + 1) / (replicates + 1) so that no p is 0.
    ``verdict`` turns ``p``, adjusted across a sweep's tests by :func:`holm`, into a word.
    """

    ratio: Interval
    claim: str
    p: float


def _judge(estimate: float, boot: np.ndarray, margin: float, level: float) -> Comparison:
    if margin < 0:
        raise ValueError(f"margin {margin} is negative; use a share such as 0.05")
    lower, upper = 1.0 / (1.0 + margin), 1.0 + margin
    n = len(boot)

    def share(k: int) -> float:
        return min(1.0, 2.0 * (k + 1) / (n + 1))

    ps = {
        "better": share(int((boot >= lower).sum())),
        "worse": share(int((boot <= upper).sum())),
        "equivalent": share(max(int((boot <= lower).sum()), int((boot >= upper).sum()))),
    }
    claim = min(ps, key=lambda c: ps[c])
    return Comparison(Interval(estimate, *_percentiles(boot, level)), claim, ps[claim])


def paired_comparison(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    seed: int,
    margin: float = MARGIN,
    replicates: int = REPLICATES,
    level: float = LEVEL,
) -> Comparison:
    """``sum(a) / sum(b)`` for two plans on the same sequences, resampled together (one draw of
    sequence indices per replicate for both), with its interval, claim and p."""
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"plans were measured on {x.shape} and {y.shape} sequences")
    est = float(x.sum() / y.sum()) if y.sum() > 0 else float("inf")
    idx = _indices(len(x), seed, replicates)
    return _judge(est, _divide(x[idx].sum(axis=1), y[idx].sum(axis=1)), margin, level)


def _counts(n: int, draws: int, rng: np.random.Generator, replicates: int) -> np.ndarray:
    """(replicates, n): how often each of ``n`` items is drawn in ``draws`` draws with
    replacement, per replicate."""
    idx = rng.integers(0, n, size=(replicates, draws)) + n * np.arange(replicates)[:, None]
    return np.bincount(idx.ravel(), minlength=replicates * n).reshape(replicates, n).astype(float)


def _two_level(
    per_seed: np.ndarray, other: np.ndarray, seed: int, replicates: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per replicate: (the drawn seeds' mean summed ``per_seed`` row, the summed ``other``), on
    one draw of sequences shared by all of them (paired) and one draw of seeds."""
    if per_seed.ndim != 2 or per_seed.shape[1] != len(other) or len(per_seed) < 1:
        raise ValueError(f"seeds of shape {per_seed.shape}: need (seeds, {len(other)} sequences)")
    rng = np.random.default_rng(seed)
    seq = _counts(len(other), len(other), rng, replicates)
    seeds = _counts(len(per_seed), len(per_seed), rng, replicates)
    return ((seq @ per_seed.T) * seeds).sum(axis=1) / len(per_seed), seq @ other


def seeds_ratio_ci(
    per_seed: Sequence[Sequence[float]] | np.ndarray,
    denominator: Sequence[float] | np.ndarray,
    seed: int,
    replicates: int = REPLICATES,
    level: float = LEVEL,
) -> Interval:
    """The seeds' mean ``sum(per_seed[s]) / sum(denominator)`` (their mean KL per token), with
    the two-level interval of :func:`seeds_comparison`."""
    y, den = np.asarray(per_seed, dtype=float), np.asarray(denominator, dtype=float)
    mean, total = _two_level(y, den, seed, replicates)
    est = float(y.sum(axis=1).mean() / den.sum())
    return Interval(est, *_percentiles(_divide(mean, total), level))


def seeds_comparison(
    scheme: Sequence[float] | np.ndarray,
    controls: Sequence[Sequence[float]] | np.ndarray,
    seed: int,
    margin: float = MARGIN,
    replicates: int = REPLICATES,
    level: float = LEVEL,
) -> Comparison:
    """A scheme against a *distribution* of controls (the random orders, one row per seed), all
    measured on the same sequences: the ratio of the scheme's summed KL to the seeds' mean summed
    KL, with a two-level bootstrap. Each replicate draws the seeds with replacement, then the
    sequences with replacement (one draw shared by the scheme and every seed, so the comparison
    stays paired), and takes ``sum_i c_i x_i / (1/k sum_s d_s sum_i c_i y_si)``, ``c`` and ``d``
    being how often each sequence and seed was drawn. A handful of seeds at one share is itself
    a sample: resampling sequences alone would treat the seeds drawn as the only ones there are."""
    x, y = np.asarray(scheme, dtype=float), np.asarray(controls, dtype=float)
    mean, total = _two_level(y, x, seed, replicates)
    pooled = float(y.sum(axis=1).mean())
    est = float(x.sum() / pooled) if pooled > 0 else float("inf")
    return _judge(est, _divide(total, mean), margin, level)


def holm(p: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order: sorted ascending, the j-th of
    k is multiplied by (k - j + 1), made non-decreasing, capped at 1. A test whose adjusted p is
    at most alpha is confirmed with the family-wise error of all of them held at alpha, for any
    dependence between them (the comparisons of a sweep share their scheme and their text)."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    out = [1.0] * len(p)
    running = 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - j) * p[i]))
        out[i] = running
    return out


def verdict(test: Comparison, p_adjusted: float | None = None, alpha: float = ALPHA) -> str:
    """``test.claim`` when its p (Holm-adjusted across the family when given) is at most
    ``alpha``, else ``inconclusive``: the interval neither clears the margin nor fits inside it,
    or does so too narrowly to survive the correction."""
    p = test.p if p_adjusted is None else p_adjusted
    return test.claim if p <= alpha else "inconclusive"


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

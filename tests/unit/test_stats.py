import numpy as np
import pytest

from orchestrator.core.stats import (
    MARGIN,
    holm,
    paired_comparison,
    ratio_ci,
    seeds_comparison,
    seeds_ratio_ci,
    spearman,
    verdict,
)

pytestmark = pytest.mark.unit


def test_bootstrap_is_seeded_and_reproducible():
    rng = np.random.default_rng(0)
    kl = rng.gamma(2.0, 1e-4, size=64) * 127
    tokens = np.full(64, 127.0)
    a, b = ratio_ci(kl, tokens, seed=3), ratio_ci(kl, tokens, seed=3)
    assert a == b
    assert a.estimate == pytest.approx(kl.sum() / tokens.sum())
    assert a.low < a.estimate < a.high
    assert ratio_ci(kl, tokens, seed=4) != a  # another seed, another (close) interval
    assert ratio_ci(kl, tokens, seed=4).low == pytest.approx(a.low, rel=0.1)


def test_interval_narrows_with_more_sequences():
    rng = np.random.default_rng(1)
    few, many = rng.gamma(2.0, 1.0, size=16), rng.gamma(2.0, 1.0, size=256)
    w_few = ratio_ci(few, np.ones(16), 0)
    w_many = ratio_ci(many, np.ones(256), 0)
    assert (w_many.high - w_many.low) < (w_few.high - w_few.low) / 2


def test_paired_ratio_cancels_what_both_plans_share():
    rng = np.random.default_rng(2)
    difficulty = rng.gamma(0.5, 1.0, size=32)  # hard passages make both plans worse together
    scheme = difficulty * 0.8 * (1 + 0.01 * rng.standard_normal(32))
    control = difficulty
    paired = paired_comparison(scheme, control, seed=0)
    assert paired.ratio.estimate == pytest.approx(scheme.sum() / control.sum())
    assert paired.ratio.high < 1.0 and verdict(paired) == "better"
    # the two separate intervals overlap: only the paired comparison can tell them apart
    a, b = ratio_ci(scheme, np.ones(32), 0), ratio_ci(control, np.ones(32), 0)
    assert a.high > b.low
    same = paired_comparison(control, control, seed=0)
    assert (same.ratio.low, same.ratio.high) == (1.0, 1.0) and verdict(same) == "equivalent"
    with pytest.raises(ValueError, match="sequences"):
        paired_comparison(scheme, control[:-1], seed=0)


def _pair(ratio: float, noise: float, n: int = 32, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """A control's per-sequence KL (text difficulty) and a scheme's at ``ratio`` of it, with
    per-sequence noise of relative size ``noise`` that the pairing cannot cancel."""
    rng = np.random.default_rng(seed)
    control = rng.gamma(2.0, 1.0, size=n)
    return control * ratio * (1 + noise * rng.standard_normal(n)), control


# margin 5%: better below 1/1.05 = 0.952, worse above 1.05, equivalent inside both
@pytest.mark.parametrize(
    "ratio, noise, margin, word",
    [
        (0.80, 0.02, MARGIN, "better"),  # far beyond the margin
        (0.93, 0.02, MARGIN, "better"),  # 7% less KL: beyond the margin, and sure of it
        (0.97, 0.02, MARGIN, "equivalent"),  # a real 3% difference, but immaterial
        (0.97, 0.02, 0.0, "better"),  # ... which counts once no margin is declared
        (1.00, 0.01, MARGIN, "equivalent"),  # both one-sided tests reject: inside the margin
        (1.25, 0.02, MARGIN, "worse"),
        (1.07, 0.02, MARGIN, "worse"),
        (0.97, 0.30, MARGIN, "inconclusive"),  # the interval spans a margin
        (1.00, 0.30, MARGIN, "inconclusive"),  # not different, but not shown to be the same
        (0.93, 0.30, MARGIN, "inconclusive"),  # the point estimate clears it; the interval not
    ],
)
def test_verdict_rules_on_constructed_sequences(ratio, noise, margin, word):
    scheme, control = _pair(ratio, noise)
    c = paired_comparison(scheme, control, seed=0, margin=margin)
    assert verdict(c) == word
    # the word is the rule on the printed 95% interval (docs/SCHEMES.md)
    low, high = 1 / (1 + margin), 1 + margin
    by_interval = (
        "better"
        if c.ratio.high < low
        else "worse"
        if c.ratio.low > high
        else "equivalent"
        if low < c.ratio.low and c.ratio.high < high
        else "inconclusive"
    )
    assert by_interval == word
    assert (c.p <= 0.05) == (word != "inconclusive")


def test_holm_adjusts_in_order_and_withdraws_a_claim_among_many():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([]) == [] and holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    # 10% less KL, noisy: better on its own ...
    alone = paired_comparison(*_pair(0.90, 0.20), seed=0)
    assert alone.claim == "better" and 0.01 < alone.p < 0.05 and verdict(alone) == "better"
    # ... but one of the ~14 comparisons of a sweep, the rest inconclusive, it is not sure enough
    others = [paired_comparison(*_pair(1.0, 0.3, seed=s), seed=s) for s in range(13)]
    adjusted = holm([alone.p, *(o.p for o in others)])
    assert verdict(alone, adjusted[0]) == "inconclusive"
    # a strong claim survives the same company
    strong = paired_comparison(*_pair(0.80, 0.05), seed=0)
    adjusted = holm([strong.p, *(o.p for o in others)])
    assert verdict(strong, adjusted[0]) == "better"


def test_two_level_bootstrap_covers_the_spread_between_seeds():
    """Random plans at one share differ by seed far more than the text moves their ratio: the
    interval over seeds and sequences covers the scheme's ratio to the mean random plan about as
    often as it says, the interval over sequences alone (seeds treated as fixed) rarely."""
    rng = np.random.default_rng(0)
    n, k, spread = 32, 20, 0.3
    truth = 0.25 / np.exp(spread**2 / 2)  # scheme / the mean of the seeds' lognormal factor
    two_level = one_level = 0
    widths = []
    for rep in range(100):
        difficulty = rng.gamma(2.0, 1.0, size=n)
        scheme = 0.25 * difficulty * (1 + 0.05 * rng.standard_normal(n))
        factor = rng.lognormal(0.0, spread, size=k)
        seeds = factor[:, None] * difficulty * (1 + 0.05 * rng.standard_normal((k, n)))
        both = seeds_comparison(scheme, seeds, rep).ratio
        pooled = paired_comparison(scheme, seeds.mean(axis=0), rep).ratio
        two_level += both.low <= truth <= both.high
        one_level += pooled.low <= truth <= pooled.high
        widths.append((both.high - both.low) / (pooled.high - pooled.low))
    assert two_level >= 85 and one_level <= 40
    assert np.median(widths) > 4


def test_two_level_bootstrap_on_constructed_seeds():
    rng = np.random.default_rng(3)
    difficulty = rng.gamma(2.0, 1.0, size=16)
    scheme = 0.5 * difficulty * (1 + 0.1 * rng.standard_normal(16))
    seeds = np.stack([f * difficulty for f in (0.8, 1.0, 1.2, 1.5)])
    c = seeds_comparison(scheme, seeds, seed=5)
    assert c.ratio.estimate == pytest.approx(scheme.sum() / seeds.sum(axis=1).mean())
    assert c == seeds_comparison(scheme, seeds, seed=5)  # seeded
    assert c.ratio.low < c.ratio.estimate < c.ratio.high and verdict(c) == "better"
    kl = seeds_ratio_ci(seeds, np.full(16, 10.0), seed=5)
    assert kl.estimate == pytest.approx(seeds.sum(axis=1).mean() / 160.0)
    assert kl.low < kl.estimate < kl.high
    # identical seeds: nothing to resample between them, and the same sequence draws as the
    # paired bootstrap with the same seed, so the same interval
    same = seeds_comparison(scheme, np.stack([difficulty] * 5), seed=5)
    one = paired_comparison(scheme, difficulty, seed=5)
    assert same.ratio.low == pytest.approx(one.ratio.low, rel=1e-12)
    assert same.ratio.high == pytest.approx(one.ratio.high, rel=1e-12)
    assert same.ratio.estimate == pytest.approx(one.ratio.estimate)
    with pytest.raises(ValueError, match="sequences"):
        seeds_comparison(scheme, seeds[:, :-1], seed=0)


def test_spearman_ranks_with_ties_averaged():
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)  # scipy's value
    assert np.isnan(spearman([1, 2], [2, 1])) and np.isnan(spearman([1, 1, 1], [1, 2, 3]))

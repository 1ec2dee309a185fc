import numpy as np
import pytest

from orchestrator.core.stats import Interval, paired_ratio_ci, ratio_ci, spearman, verdict

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
    paired = paired_ratio_ci(scheme, control, seed=0)
    assert paired.estimate == pytest.approx(scheme.sum() / control.sum())
    assert paired.high < 1.0 and verdict(paired) == "better"
    # the two separate intervals overlap: only the paired comparison can tell them apart
    a, b = ratio_ci(scheme, np.ones(32), 0), ratio_ci(control, np.ones(32), 0)
    assert a.high > b.low
    same = paired_ratio_ci(control, control, seed=0)
    assert (same.low, same.high) == (1.0, 1.0) and verdict(same) == "indistinguishable"
    with pytest.raises(ValueError, match="sequences"):
        paired_ratio_ci(scheme, control[:-1], seed=0)


@pytest.mark.parametrize(
    "interval, word",
    [
        (Interval(0.5, 0.4, 0.99), "better"),
        (Interval(1.5, 1.01, 2.0), "worse"),
        (Interval(1.0, 0.9, 1.1), "indistinguishable"),
        (Interval(0.9, 0.8, 1.0), "indistinguishable"),  # touching 1 is not excluding it
    ],
)
def test_verdict_needs_the_whole_interval_on_one_side(interval, word):
    assert verdict(interval) == word


def test_spearman_ranks_with_ties_averaged():
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)  # scipy's value
    assert np.isnan(spearman([1, 2], [2, 1])) and np.isnan(spearman([1, 1, 1], [1, 2, 3]))

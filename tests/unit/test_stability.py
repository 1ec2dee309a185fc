"""The stability summary over k runs of one sweep: Jaccard overlap of module sets, KL spread."""

from __future__ import annotations

import pytest

from orchestrator.core.stability import Published, jaccard, name_stability, stability

pytestmark = pytest.mark.unit


def _p(modules, kl, share=0.25):
    return Published(frozenset(modules), share, kl)


def test_jaccard_is_intersection_over_union():
    assert jaccard(frozenset("abc"), frozenset("bcd")) == pytest.approx(2 / 4)
    assert jaccard(frozenset("ab"), frozenset("ab")) == 1.0
    assert jaccard(frozenset(), frozenset()) == 1.0
    assert jaccard(frozenset("a"), frozenset("b")) == 0.0


def test_a_name_over_three_runs():
    runs = [_p("abcd", 1.0), _p("abce", 2.0, 0.3), _p("abcd", 3.0)]
    s = name_stability("top25", runs)
    # pairs: (abcd, abce) 3/5, (abcd, abcd) 1, (abce, abcd) 3/5
    assert s.jaccard_mean == pytest.approx((0.6 + 1.0 + 0.6) / 3)
    assert s.jaccard_min == pytest.approx(0.6)
    assert s.same_plan_runs == 2
    assert (s.kl_mean, s.kl_min, s.kl_max) == (2.0, 1.0, 3.0)
    assert s.kl_spread == pytest.approx(1.0)  # (3 - 1) / 2
    assert s.fp8_fractions == (0.25, 0.3, 0.25)
    assert s.to_dict()["fp8_fractions"] == [0.25, 0.3, 0.25]


def test_names_some_run_did_not_publish_are_left_out():
    a = {"top25": _p("ab", 1.0), "full": _p("abc", 2.0)}
    b = {"top25": _p("ab", 1.5)}
    (row,) = stability([a, b])
    assert row.name == "top25" and row.runs == 2 and row.jaccard_mean == 1.0
    assert stability([]) == []
    with pytest.raises(ValueError, match="no run"):
        name_stability("x", [])

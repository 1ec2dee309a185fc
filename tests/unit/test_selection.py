import math

import numpy as np
import pytest

from orchestrator.config import load_catalog
from orchestrator.selection import SelectionError, pareto_front, role_picks, select

from .helpers import result

pytestmark = pytest.mark.unit
CATALOG = load_catalog()


def test_pareto_front_minimises_both_columns():
    #      bits  kl      dominated by
    pts = np.array(
        [
            [8.0, 0.9],  # -          (fewest bits)
            [10.0, 0.5],  # -
            [10.0, 0.6],  # row 1
            [12.0, 0.2],  # -
            [13.0, 0.3],  # row 3
            [14.0, 0.2],  # row 3 (equal kl, more bits)
            [15.0, 0.1],  # -
        ]
    )
    assert pareto_front(pts).tolist() == [0, 1, 3, 6]


def test_pareto_front_keeps_exact_duplicates():
    pts = np.array([[8.0, 0.5], [8.0, 0.5]])
    assert pareto_front(pts).tolist() == [0, 1]


def _front():
    # a convex front with a clear knee at 12 bits (50% FP8)
    return [
        result("a", 15, 0.001),
        result("b", 14, 0.002),
        result("c", 12, 0.004),
        result("d", 10, 0.1),
        result("e", 8, 0.2),
        result("x", 12, 0.02),  # dominated by c
    ]


def test_three_roles_named_from_catalog():
    sel = select(_front(), CATALOG)
    by = {s.name: s for s in sel.schemes}
    assert [s.name for s in sel.schemes] == [c.name for c in CATALOG.schemes]
    assert by["fp8_autoquant_full"].plan_hash == "e"
    assert by["fp8_autoquant_top50"].plan_hash == "c"
    # the least-KL point "a" holds 12.5% FP8, outside top25's 15-35% band: nearest in-band is "b"
    assert by["fp8_autoquant_top25"].plan_hash == "b"
    assert "outside the name's" in by["fp8_autoquant_top25"].rationale
    assert sel.front == ("e", "d", "c", "b", "a")


def test_knee_is_farthest_from_the_extremes_line():
    front = sorted(_front()[:5], key=lambda r: r.achieved_bits)
    picks = role_picks(front)
    assert front[picks["balanced"]].plan_hash == "c"
    assert front[picks["aggressive"]].plan_hash == "e"
    assert front[picks["conservative"]].plan_hash == "a"


def test_selection_is_deterministic_under_permutation_and_ties():
    rs = _front() + [result("c2", 12, 0.004)]  # exact tie with "c": plan hash breaks it
    a = select(rs, CATALOG)
    b = select(list(reversed(rs)), CATALOG)
    assert a == b
    assert {s.plan_hash for s in a.schemes} >= {"c"}


def test_failed_nan_and_bf16_points_are_ignored():
    rs = _front() + [
        result("f", 9, 0.0, status="FAILED"),
        result("n", 9, math.nan),
        result("z", 16, 0.0),  # no FP8: not a scheme
    ]
    sel = select(rs, CATALOG)
    assert {"f", "n", "z"}.isdisjoint(sel.front)


def test_quality_cap_drops_points_and_never_misnames():
    sel = select(_front(), CATALOG, max_kl=0.25)
    assert sel.front == ("e", "d", "c", "b", "a")
    # once every 8-bit point is above the cap, "full" cannot be honoured: an error, not a misnomer
    with pytest.raises(
        SelectionError, match="no feasible trial has 99%-100% FP8 .*fp8_autoquant_full"
    ):
        select(_front(), CATALOG, max_kl=0.15)
    with pytest.raises(SelectionError, match=r"only 2 feasible Pareto point"):
        select(_front(), CATALOG, max_kl=0.0025)


def test_front_of_fewer_than_three_points_is_an_error_that_names_them():
    rs = [result("a", 14, 0.001), result("b", 8, 0.2), result("c", 12, 0.3)]  # c dominated by a
    with pytest.raises(SelectionError, match=r"only 2 feasible Pareto point\(s\) \(b, a\)"):
        select(rs, CATALOG)


def test_no_feasible_points():
    with pytest.raises(SelectionError, match="no feasible trial"):
        select([result("f", 9, 0.0, status="FAILED")], CATALOG)


def test_dominated_point_used_when_no_front_point_fits_a_name():
    rs = [
        result("a", 15.5, 0.0001),
        result("b", 12, 0.001),
        result("m", 13.4, 0.0011),
        result("e", 8, 0.1),
        result("d", 10, 0.01),
    ]
    # "m" (20% FP8) is dominated by "b"; it is the only point in top25's band
    sel = select(rs, CATALOG)
    top25 = next(s for s in sel.schemes if s.name == "fp8_autoquant_top25")
    assert top25.plan_hash == "m"
    assert "dominated" in top25.rationale

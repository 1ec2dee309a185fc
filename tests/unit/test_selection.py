import math
from dataclasses import replace

import numpy as np
import pytest

from orchestrator.core.config import SearchConfig, load_catalog
from orchestrator.core.selection import (
    SWEEP_RELAX,
    CapAdvice,
    SelectionError,
    knee,
    pareto_front,
    select,
)

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
    # shares 12.5%, 25%, 50%, 75%, 100%, with a clear knee at 12 bits (50% FP8)
    return [
        result("a", 15, 0.001),
        result("b", 14, 0.002),
        result("c", 12, 0.004),
        result("d", 10, 0.1),
        result("e", 8, 0.2),
        result("x", 12, 0.02),  # dominated by c
    ]


def test_each_name_gets_the_front_point_nearest_its_nominal_share():
    sel = select(_front(), CATALOG)
    by = {s.name: s for s in sel.schemes}
    assert [s.name for s in sel.schemes] == [c.name for c in CATALOG.schemes]
    assert (by["fp8_autoquant_top25"].plan_hash, by["fp8_autoquant_top50"].plan_hash) == ("b", "c")
    assert by["fp8_autoquant_full"].plan_hash == "e"
    assert "nearest 25% FP8" in by["fp8_autoquant_top25"].rationale
    assert sel.front == ("e", "d", "c", "b", "a")


def test_nearest_share_wins_inside_the_tolerance_and_lower_kl_breaks_a_tie():
    base = [result("e", 8, 0.2), result("c", 12, 0.004)]
    near = [result("p", 16 - 8 * 0.22, 0.0015), result("q", 16 - 8 * 0.27, 0.0019)]
    assert _top25(base + near) == "q"  # 0.27 is 0.02 away, 0.22 is 0.03
    tie = [result("p", 16 - 8 * 0.23, 0.0015), result("q", 16 - 8 * 0.27, 0.0019)]
    assert _top25(base + tie) == "p"  # both 0.02 away: the lower KL
    far = [result("p", 16 - 8 * 0.19, 0.0010), result("q", 16 - 8 * 0.31, 0.0030)]
    with pytest.raises(SelectionError, match=r"25% \+- 5% FP8 .*; add effective_bits 14 to"):
        select(base + far, CATALOG)  # nothing within 5 points of 25%


def _top25(results) -> str:
    return next(s.plan_hash for s in select(results, CATALOG).schemes if s.role == "conservative")


def test_a_dominated_point_inside_the_band_is_used_and_said_so():
    rs = [
        result("a", 15.5, 0.0001),
        result("b", 12, 0.001),
        result("m", 14, 0.0011),  # 25% FP8 but dominated by "b" (fewer bits, less KL)
        result("e", 8, 0.1),
    ]
    top25 = next(s for s in select(rs, CATALOG).schemes if s.name == "fp8_autoquant_top25")
    assert top25.plan_hash == "m" and "dominated" in top25.rationale


def test_controls_are_never_published():
    rs = _front() + [replace(result("ctl", 14, 1e-9), kind="control", control="random:0")]
    sel = select(rs, CATALOG)
    assert "ctl" not in {s.plan_hash for s in sel.schemes} and "ctl" not in sel.front


def test_knee_is_farthest_from_the_extremes_line():
    front = sorted(_front()[:5], key=lambda r: r.achieved_bits)
    assert knee(front).plan_hash == "c"
    assert select(_front(), CATALOG).knee.plan_hash == "c"
    assert knee(front[:2]) is None


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


def test_quality_cap_that_empties_a_band_is_an_error_naming_the_cap_not_the_budget():
    assert select(_front(), CATALOG, max_kl=0.25).front == ("e", "d", "c", "b", "a")
    with pytest.raises(SelectionError) as e:
        select(_front(), CATALOG, max_kl=0.15)  # "e", at 8 bits, is over the cap
    assert str(e.value) == (
        "no feasible trial has 100% +- 0% FP8 for 'fp8_autoquant_full'; 1 trial(s) in the band "
        "exceed max_kl=0.15 (selection.max_kl; least kl_mean there 0.2); relax it: " + SWEEP_RELAX
    )


def _grid(**kw) -> SearchConfig:
    return SearchConfig.model_validate({"effective_bits": [8, 12, 14], "coverage": [1.0], **kw})


BASE = [result("e", 8, 0.2), result("c", 12, 0.004)]  # 100% and 50%: top25 alone is unbound
TOP25 = "no feasible trial has 25% +- 5% FP8 for 'fp8_autoquant_top25'; "


@pytest.mark.parametrize(
    "trials,grid,advice",
    [
        # 14 and 15 bits made one plan, measured once as 15 bits: 14 is in the grid all the same,
        # and the plan overshot 25% (whole module groups)
        (
            [result("a", 15, 0.001, frac=0.31)],
            _grid(effective_bits=[8, 12, 14, 15]),
            "the grid asks for it, but no plan lands in the band (nearest: 31.0% FP8); a plan "
            "takes whole module groups, so widen 'fp8_autoquant_top25' fp8_share.tolerance in "
            "selection.catalog",
        ),
        (
            [result("a", 14, 0.001, frac=0.19), result("b", 13, 0.002, frac=0.31)],
            None,  # no grid: the budgets the trials asked for
            "the grid asks for it, but no plan lands in the band (nearest: 19.0% and 31.0% FP8)",
        ),
        (
            [result("f", 14, 0.0, status="FAILED"), result("n", 14, math.nan, frac=0.24)],
            _grid(),
            "1 trial(s) in the band failed (see trials.parquet; a rerun on this --output "
            "retries); 1 trial(s) in the band have no finite kl_mean",
        ),
        ([], _grid(effective_bits=[8, 12]), "add effective_bits 14 to the grid"),
        (
            [result("a", 14, 0.05)],
            _grid(),
            "1 trial(s) in the band exceed max_kl=0.01 (selection.max_kl; least kl_mean there "
            "0.05); relax it: " + SWEEP_RELAX,
        ),
    ],
    ids=["deduplicated-and-coarse", "coarse-no-grid", "failed-and-nan", "lacks-bits", "over-cap"],
)
def test_an_unbound_name_is_advised_only_what_the_sweep_lacks(trials, grid, advice):
    """The advice to add a budget comes only when the grid lacks it (issue 23: an exit-3 message
    advised adding effective_bits=14 to a grid that held 14)."""
    max_kl = 0.01 if "relax it" in advice else None
    with pytest.raises(SelectionError) as e:
        select(BASE + trials, CATALOG, max_kl=max_kl, grid=grid)
    msg = str(e.value)
    assert msg.startswith(TOP25) and advice in msg, msg
    lacks_14 = grid is not None and 14 not in grid.effective_bits
    assert ("effective_bits 14" in msg) == lacks_14, msg
    assert ("max_kl" in msg) == (max_kl is not None), msg  # never "relax" a cap that is not set


def test_no_feasible_points():
    with pytest.raises(SelectionError, match="no feasible trial"):
        select([result("f", 9, 0.0, status="FAILED")], CATALOG)


def test_a_cap_set_by_a_flag_is_named_as_typed_and_relaxed_with_that_flag():
    """Exit 3 names the flag the user typed (issue 27: ``select --max-kl 0.0001`` was told about
    ``selection.max_kl``), and how to relax it with the same flag."""
    cap = CapAdvice("--max-kl 0.01", "--max-kl <higher>")
    with pytest.raises(SelectionError) as e:
        select(BASE + [result("a", 14, 0.05)], CATALOG, max_kl=0.01, grid=_grid(), cap_advice=cap)
    assert str(e.value) == (
        TOP25 + "1 trial(s) in the band exceed max_kl=0.01 (--max-kl 0.01; least kl_mean there "
        "0.05); relax it: --max-kl <higher>"
    )


def test_a_cap_over_every_trial_says_so_with_the_least_kl_measured():
    cap = CapAdvice("--set selection.max_kl=1e-9", "--set selection.max_kl=<higher>")
    failed = result("f", 9, 0.0, status="FAILED")
    with pytest.raises(SelectionError) as e:
        select(_front() + [failed], CATALOG, max_kl=1e-9, cap_advice=cap)
    assert str(e.value) == (
        "no feasible trial among 7: 1 failed (see trials.parquet; a rerun on this --output "
        "retries); 6 exceed max_kl=1e-09 (--set selection.max_kl=1e-9; least kl_mean measured "
        "0.001); relax it: --set selection.max_kl=<higher>"
    )

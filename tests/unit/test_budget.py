"""The adaptive scoring budget's rule (``core/budget.py``), the grid plans it watches
(``core/points.grid_plans``) and the cache key that records it (``model/scoring.ScoringSetup``)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from orchestrator.core.budget import (
    MAXIMUM,
    OFF,
    STABLE,
    BudgetRule,
    changed,
    group_weights,
    most_moved,
    moved,
    stop_reason,
)
from orchestrator.core.config import SearchConfig, load_config
from orchestrator.core.planning import plan_for
from orchestrator.core.points import grid_plans, grid_points
from orchestrator.core.records import table_key
from orchestrator.model.scoring import ScoringSetup

from .helpers import SIZES, table

pytestmark = pytest.mark.unit


def test_chunks_cover_every_batch_once_in_order():
    rule = BudgetRule(maximum=10, chunk=3, patience=1)
    assert rule.on
    assert rule.chunks() == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    # off: one chunk of everything, the scoring the sweep did before the rule
    assert BudgetRule(10, 3, 0).chunks() == [list(range(10))]


def test_the_rule_is_on_only_where_it_can_stop_before_the_maximum():
    # the first stop comes after patience + 1 chunks: 3 x 4 = 12 batches for chunk 4, patience 2
    assert not BudgetRule(12, 4, 2).on
    assert BudgetRule(13, 4, 2).on
    assert not BudgetRule(64, 4, 0).on


def test_scoring_stops_once_no_plan_changed_over_patience_chunks():
    rule = BudgetRule(maximum=32, chunk=4, patience=2)
    assert stop_reason(rule, [10], 4) is None  # the first chunk sets every plan
    assert stop_reason(rule, [10, 0], 8) is None  # one quiet chunk is not enough
    assert stop_reason(rule, [10, 0, 0], 12) == STABLE
    assert stop_reason(rule, [10, 0, 1], 12) is None  # a change resets the count
    assert stop_reason(rule, [10, 0, 1, 0, 0], 20) == STABLE
    assert stop_reason(rule, [10, *[1] * 7], 32) == MAXIMUM
    off = BudgetRule(32, 4, 0)
    assert stop_reason(off, [], 32) == OFF


def test_changed_counts_grid_points_whose_plan_moved_more_than_the_tolerance():
    weights = {"a": 0.5, "b": 0.3, "c": 0.15, "d": 0.05}
    assert moved({"a", "b"}, {"a", "c"}, weights) == pytest.approx(0.45)  # b and c both move
    assert changed(None, [{"a"}, {"b"}, set()], weights) == 3
    before = [{"a", "b"}, {"a", "c"}, {"c"}]
    after = [{"a", "b"}, {"a", "d"}, {"d"}]  # c and d swap: 20% of the weights move
    assert changed(before, after, weights) == 2
    assert changed(before, after, weights, tolerance=0.2) == 0
    assert changed(before, after, weights, tolerance=0.19) == 2
    assert most_moved(before, after, weights) == pytest.approx(0.2)
    assert most_moved(None, after, weights) == 1.0
    with pytest.raises(ValueError):
        changed([{"a"}], [{"a"}, {"b"}], weights)  # the grid does not change between chunks


def test_a_tolerant_rule_stops_where_an_exact_one_goes_on():
    weights = {"a": 0.9, "b": 0.05, "c": 0.05}
    curve = [[{"a", "b"}], [{"a", "c"}], [{"a", "b"}], [{"a", "c"}]]  # b and c keep swapping
    exact, tolerant = BudgetRule(8, 2, 1), BudgetRule(8, 2, 1, tolerance=0.1)
    for rule, expected in ((exact, None), (tolerant, STABLE)):
        changes = [
            changed(None, curve[0], weights),
            changed(curve[0], curve[1], weights, rule.tolerance),
        ]
        assert stop_reason(rule, changes, 4) == expected
    assert exact.key() != tolerant.key() and tolerant.key()["tolerance"] == 0.1


def test_grid_plans_are_the_plans_of_every_grid_point_in_grid_order():
    scores = {(b, k): (b + 1) * (i + 1) * 0.01 for b in range(6) for i, k in enumerate(SIZES)}
    t = table(scores, method="kl_div", blocks=6)
    search = SearchConfig.model_validate(
        {"effective_bits": [8, 12, 14], "coverage": [0.5, 1.0], "strategies": ["solve"]}
    )
    plans = grid_plans(search, t)
    assert len(plans) == 3 * 2  # every grid point, repeats kept: a fold is no change
    tables = {table_key(t.method, t.fp8_recipe): t}
    points, _ = grid_points(search, tables)
    assert set(plans) == {frozenset(plan_for(p, tables).fp8_groups) for p in points}
    weights = group_weights(t)
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights["model.layers.0.gate_up"] == pytest.approx(16 / (36 * 6))
    # one group made the most sensitive of all moves at least one plan, by its weight at least
    hot = replace(
        t,
        groups=tuple(
            replace(g, score=99.0 if g.name == "model.layers.0.o" else g.score) for g in t.groups
        ),
    )
    assert changed(plans, grid_plans(search, hot), weights) > 0
    assert most_moved(plans, grid_plans(search, hot), weights) >= weights["model.layers.0.o"]


def test_the_cache_key_covers_the_rule_and_an_off_rule_ignores_its_chunk():
    args = ("m", None, "p", "h", "kl_div", "FP8_DEFAULT_CFG", 2, 32)
    off, off_other_chunk = ScoringSetup(*args, chunk=4, patience=0), ScoringSetup(*args, chunk=8)
    on, on_longer = ScoringSetup(*args, chunk=4, patience=2), ScoringSetup(*args, patience=3)
    tolerant = ScoringSetup(*args, chunk=4, patience=2, tolerance=0.02)
    assert off.key() == off_other_chunk.key() == ScoringSetup(*args, tolerance=0.5).key()
    assert len({off.key(), on.key(), on_longer.key(), tolerant.key()}) == 4
    # too few batches for the rule to stop early: the same table as the rule off
    few = ("m", None, "p", "h", "kl_div", "FP8_DEFAULT_CFG", 2, 8)
    assert ScoringSetup(*few, chunk=4, patience=2).key() == ScoringSetup(*few).key()


def test_the_demo_config_leaves_the_rule_unable_to_stop_its_five_batches_early():
    cfg = load_config()
    s = cfg.scoring
    rule = BudgetRule(s.num_score_steps, s.adaptive.chunk, s.adaptive.patience)
    assert s.adaptive.patience > 0 and not rule.on  # on by default, needs more than 5 batches

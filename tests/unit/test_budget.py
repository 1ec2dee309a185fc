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
    Watch,
    changed,
    explain,
    group_scores,
    regret,
    stop_reason,
    worst_regret,
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


def test_a_change_counts_when_the_earlier_plan_is_worse_than_the_tolerance_on_the_new_sums():
    scores = {"a": 4.0, "b": 1.0, "c": 1.01, "d": 2.0}
    assert regret({"a", "c"}, {"a", "b"}, scores) == pytest.approx(0.01 / 5.0)
    assert regret({"b"}, {"b"}, scores) == 0.0
    assert changed(None, [{"a"}, {"b"}], scores) == 2  # the first chunk sets every plan
    before, after = [{"c"}, {"d"}, {"a"}], [{"b"}, {"b"}, {"a"}]
    assert changed(before, after, scores) == 2
    # c -> b is a near tie (1 % worse), d -> b is not (100 % worse)
    assert changed(before, after, scores, tolerance=0.02) == 1
    assert worst_regret(before, after, scores) == pytest.approx(1.0)
    assert worst_regret(None, after, scores) is None
    with pytest.raises(ValueError):
        changed([{"a"}], [{"a"}, {"b"}], scores)  # the grid does not change between chunks


def test_a_tolerant_rule_stops_where_an_exact_one_goes_on():
    scores = {"a": 10.0, "b": 1.0, "c": 1.0001}
    curve = [[{"a", "c"}], [{"a", "b"}]]  # b and c, near-tied, swap
    exact, tolerant = BudgetRule(8, 2, 1), BudgetRule(8, 2, 1, tolerance=0.01)
    for rule, expected in ((exact, None), (tolerant, STABLE)):
        changes = [changed(None, curve[0], scores), changed(*curve, scores, rule.tolerance)]
        assert stop_reason(rule, changes, 4) == expected
    assert exact.key() != tolerant.key() and tolerant.key()["tolerance"] == 0.01
    assert "with no plan change > 1%" in tolerant.describe()


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
    # one group made far more sensitive than the rest leaves every plan that held it
    hot = replace(
        t,
        groups=tuple(
            replace(g, score=99.0 if g.name == "model.layers.0.o" else g.score) for g in t.groups
        ),
    )
    assert all("model.layers.0.o" in p for p in plans)  # the least sensitive group
    after = grid_plans(search, hot)
    dropped = sum("model.layers.0.o" not in p for p in after)
    assert dropped > 0 and changed(plans, after, group_scores(hot)) == dropped
    assert worst_regret(plans, after, group_scores(hot)) > 1.0  # far worse on the new sums


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


def test_a_watch_records_each_chunk_and_says_when_to_stop():
    scores = {"a": 10.0, "b": 1.0, "c": 1.0001, "d": 5.0}
    watch = Watch(BudgetRule(maximum=16, chunk=2, patience=2, tolerance=0.01))
    assert watch.observe(2, [{"a"}, {"b"}], scores) is None  # the first chunk sets every plan
    assert watch.observe(2, [{"a"}, {"c"}], scores) is None  # a near tie: no change counted
    assert watch.observe(2, [{"d"}, {"c"}], scores) is None  # a -> d: 50 % better, a change
    assert watch.observe(2, [{"d"}, {"c"}], scores) is None
    assert watch.observe(2, [{"d"}, {"c"}], scores) == STABLE
    assert watch.used == 10 and watch.changes == [2, 0, 1, 0, 0]
    assert watch.regret[0] is None and watch.regret[2] == pytest.approx(1.0)
    off = Watch(BudgetRule(maximum=4, chunk=4, patience=0))
    assert off.observe(4) == OFF and off.changes == []  # nothing solved while the rule is off


def test_the_console_phrases_of_the_usual_setup_fit_one_line():
    """With the default recipe every line reads whole (longer ones wrap, outputs/console.py)."""
    prefix = "00:00:00 gradient/FP8_DEFAULT_CFG scored: "
    for rule in (BudgetRule(4, 4, 2, 0.01), BudgetRule(64, 16, 12, 0.125), BudgetRule(64, 4, 0)):
        for reason in (STABLE, MAXIMUM, OFF):
            assert len(prefix + explain(reason, rule, 64)) <= 120
        assert len(prefix + rule.describe()) <= 120

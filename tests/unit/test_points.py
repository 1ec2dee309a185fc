import dataclasses
from dataclasses import replace

import numpy as np
import pytest

from orchestrator.core.config import DEMO_CONFIG, SearchConfig, load_catalog, load_config
from orchestrator.core.planning import Unreachable, control_plan, make_plan, plan_for
from orchestrator.core.points import control_points, grid_points, unreachable_names
from orchestrator.core.records import NamedScheme, Point, table_key
from orchestrator.core.verdicts import (
    compare_schemes,
    measured_by_plan,
    score_kl_correlation,
    score_kl_within_share,
    verdict_rule,
)

from .helpers import SIZES, result, table

pytestmark = pytest.mark.unit
CATALOG = load_catalog()


def _table(method="kl_div"):
    scores = {(b, k): (b + 1) * (i + 1) * 0.01 for b in range(6) for i, k in enumerate(SIZES)}
    return table(scores, method=method, blocks=6)


def _search(**kw):
    base = {"effective_bits": [8, 12, 14], "coverage": [0.5, 1.0], "strategies": ["solve"]}
    return SearchConfig.model_validate({**base, **kw})


def _by_key(*tables):
    return {table_key(t.method, t.fp8_recipe): t for t in tables}


def test_grid_is_every_setup_strategy_budget_and_coverage_once_per_plan():
    tables = _by_key(_table("kl_div"), _table("gradient"))
    points, total = grid_points(_search(strategies=["solve", "ends_bf16:1"]), tables)
    assert total == 2 * 2 * 3 * 2
    hashes = [plan_for(p, tables).plan_hash for p in points]
    assert len(hashes) == len(set(hashes)) < total  # e.g. 8 bits at coverage 0.5 folds onto 12
    for p, h in zip(points, hashes, strict=True):
        t = tables[f"{p.method}|FP8_DEFAULT_CFG"]
        assert make_plan(t, p.effective_bits, p.coverage, p.strategy).plan_hash == h
        assert p.control == "" and p.strategy in ("solve", "ends_bf16:1")


def _scheme(t, bits, h=None):
    plan = make_plan(t, bits, 1.0)
    return NamedScheme(
        name="s",
        role="conservative",
        plan_hash=h or plan.plan_hash,
        method=t.method,
        fp8_recipe=t.fp8_recipe,
        effective_bits=bits,
        coverage=1.0,
        achieved_bits=plan.achieved_bits,
        fp8_fraction=plan.fp8_fraction,
        metrics={"kl_mean": 1e-4},
        mlflow_run_id="",
        rationale="",
    )


def test_paired_round_plans_each_control_at_each_schemes_share_once():
    t = _table()
    tables = {"kl_div|FP8_DEFAULT_CFG": t}
    schemes = [_scheme(t, 14), _scheme(t, 12), _scheme(t, 8)]
    specs = ["random:0", "random:1", "inverse", "ends_fixed:1", "attn_bf16"]
    measured = {s.plan_hash for s in schemes}  # the schemes were measured in round 1
    pts = control_points(tables, schemes, specs, measured)
    hashes = [plan_for(p, tables).plan_hash for p in pts]
    assert len(hashes) == len(set(hashes)) and not measured & set(hashes)
    for p, h in zip(pts, hashes, strict=True):
        s = next(s for s in schemes if s.achieved_bits == p.effective_bits)
        assert control_plan(t, p.control, s.achieved_bits).plan_hash == h
        assert p.strategy == "" and p.coverage == 1.0
    # at 100% every reachable control is the scheme itself: nothing new to measure there
    assert not [p for p in pts if p.effective_bits == 8.0]
    assert control_points(tables, schemes, specs, measured | set(hashes)) == []


def test_a_grid_that_cannot_reach_a_name_is_refused():
    assert unreachable_names(_search(), CATALOG) == []
    assert unreachable_names(load_config(DEMO_CONFIG).search, CATALOG) == []
    (line,) = unreachable_names(_search(effective_bits=[8, 12, 15]), CATALOG)
    assert "fp8_autoquant_top25 (25% +- 5% FP8); add effective_bits 14" in line
    (line,) = unreachable_names(_search(coverage=[0.5]), CATALOG)
    assert "fp8_autoquant_full" in line and line.endswith("; add a coverage >= 1")  # 8 is there


def _measured(h, bits, kl_per_seq, kind="trial", control=""):
    r = result(h, bits, sum(kl_per_seq) / (10 * len(kl_per_seq)))
    seq = {"kl": tuple(kl_per_seq), "agree": (9.0,) * len(kl_per_seq), "tokens": (10.0,) * 8}
    return replace(r, kind=kind, control=control, per_sequence=seq)


def test_scheme_against_controls_on_the_same_sequences():
    t = _table()
    tables = {"kl_div|FP8_DEFAULT_CFG": t}
    s = _scheme(t, 14)
    base = [1.0, 2.0, 1.5, 3.0, 1.0, 2.5, 2.0, 1.0]
    rows = [_measured(s.plan_hash, 14, [0.5 * x for x in base])]
    for spec, scale in (("random:0", 1.0), ("random:1", 1.2), ("inverse", 0.5)):
        p = control_plan(t, spec, s.achieved_bits)
        rows.append(_measured(p.plan_hash, 14, [scale * x for x in base], "control", spec))
    specs = ["random:0", "random:1", "random:2", "inverse", "ends_fixed:1", "attn_bf16"]
    (got,) = compare_schemes([s], tables, measured_by_plan(rows), specs, 0)
    by = {r["control"]: r for r in got}
    assert list(by) == ["inverse", "ends_fixed:1", "attn_bf16", "random"]  # seeds are one control
    assert by["inverse"]["verdict"] == "equivalent"  # the same KL on every sequence
    assert by["inverse"]["kl_ratio_ci"] == [1.0, 1.0]
    assert by["ends_fixed:1"]["verdict"] == "not measured"
    rnd = by["random"]
    assert rnd["verdict"] == "better" and rnd["seeds"] == 2 and rnd["seeds_not_measured"] == 1
    assert rnd["kl_ratio"] == pytest.approx(0.5 / 1.1)  # against the seeds' mean KL
    lo, hi = rnd["kl_ratio_ci"]
    assert lo <= rnd["kl_ratio"] <= hi < 1.0
    assert [x["control"] for x in rnd["by_seed"]] == ["random:0", "random:1"]
    assert [x["kl_ratio"] for x in rnd["by_seed"]] == pytest.approx([0.5, 0.5 / 1.2])
    assert rnd["seed_kl_ratio"]["min"] == pytest.approx(0.5 / 1.2)
    assert rnd["seed_kl_ratio"]["max"] == pytest.approx(0.5)
    assert rnd["scheme_rank"] == 1  # less KL than both seeds
    # every control lands on the scheme's share: its groups can make it exactly
    for r in (by["inverse"], *rnd["by_seed"]):
        assert r["fp8_fraction"] == pytest.approx(s.fp8_fraction) and r["fp8_fraction_diff"] == 0
    assert rnd["fp8_fraction_range"] == pytest.approx([s.fp8_fraction] * 2)
    tested = [r for r in got if "p" in r]
    assert all(r["p"] <= r["p_holm"] <= 1 for r in tested) and len(tested) == 2


def test_score_kl_correlation_per_method():
    t = _table()
    rs = []
    for bits in (15, 14, 13, 12, 10, 8):
        plan = make_plan(t, bits, 1.0)
        rs.append(replace(result(plan.plan_hash, bits, plan.score_sum * 1e-3), coverage=1.0))
    assert score_kl_correlation(rs, {"kl_div|FP8_DEFAULT_CFG": t}) == {"kl_div": pytest.approx(1.0)}


def _plans_at_one_share(t, bits=14):
    """Distinct plans that spend one budget by other coverages and strategies."""
    out = {}
    for coverage in (0.5, 0.75, 1.0):
        for strategy in ("solve", "ends_bf16:1", "mlp_only"):
            plan = make_plan(t, bits, coverage, strategy)
            out.setdefault(plan.plan_hash, (plan, coverage, strategy))
    return list(out.values())


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_score_kl_correlation_within_one_share(sign):
    t = _table()
    plans = sorted(_plans_at_one_share(t), key=lambda x: x[0].score_sum)
    assert len(plans) >= 3
    rs = [  # KL in the order of the summed scores (sign 1) or against it (-1)
        replace(
            result(p.plan_hash, 14, 10.0 + sign * i, frac=p.fp8_fraction), coverage=c, strategy=s
        )
        for i, (p, c, s) in enumerate(plans)
    ]
    rs += [result(make_plan(t, 12, 1.0).plan_hash, 12, 5.0)]  # a budget with one plan: no rho
    got = score_kl_within_share(rs, {"kl_div|FP8_DEFAULT_CFG": t})
    assert got == {"kl_div": pytest.approx(sign)}
    assert score_kl_within_share(rs[:2], {"kl_div|FP8_DEFAULT_CFG": t}) == {}  # under 3 plans


def _point(**kw):
    base = {"method": "kl_div", "fp8_recipe": "FP8_DEFAULT_CFG", "effective_bits": 12.0}
    return Point(**{**base, "coverage": 1.0, **kw})


# the keys of a point's dict form: what Tune's grid carries and each child run's parameters
POINT_KEYS = ["method", "fp8_recipe", "effective_bits", "coverage", "strategy", "control"]


def test_a_point_has_one_strategy_rule_and_survives_its_dict_form():
    assert _point().strategy == "solve" and _point(strategy="") == _point(strategy="solve")
    control = _point(strategy="solve", control="random:1")
    assert control.strategy == "" and control == _point(control="random:1")
    assert hash(control) == hash(_point(control="random:1")) and control != _point()
    for p in (_point(), _point(strategy="ends_bf16:1", coverage=0.5), control):
        assert Point.from_dict(p.to_dict()) == p and list(p.to_dict()) == POINT_KEYS
    optuna = {k: v for k, v in _point(strategy="mlp_only").to_dict().items() if k != "control"}
    assert Point.from_dict(optuna) == _point(strategy="mlp_only")  # a sample has no control
    with pytest.raises(dataclasses.FrozenInstanceError):
        control.strategy = "solve"  # type: ignore[misc]


@pytest.mark.parametrize(
    "bits, coverage, strategy",
    [(14, 1.0, "solve"), (12, 0.5, "ends_bf16:1"), (10, 1.0, "mlp_only")],
)
def test_plan_for_a_scored_point_is_its_solve(bits, coverage, strategy):
    t = _table()
    p = _point(effective_bits=bits, coverage=coverage, strategy=strategy)
    assert plan_for(p, _by_key(t)) == make_plan(t, bits, coverage, strategy)
    scheme = replace(_scheme(t, bits), coverage=coverage, strategy=strategy)
    assert Point.of(scheme) == p  # what the outputs and the verdicts re-plan a scheme from


@pytest.mark.parametrize("spec", ["random:0", "inverse", "ends_fixed:1", "attn_bf16"])
def test_plan_for_a_control_is_its_fill_at_the_share(spec):
    t = _table()
    p = _point(effective_bits=13.0, control=spec)
    assert plan_for(p, _by_key(t)) == control_plan(t, spec, 13.0)
    row = replace(result("h", 13.0, 1.0), kind="control", control=spec)
    assert Point.of(row) == p  # trials.parquet says strategy "solve" for a control; its point ""


def test_plan_for_a_control_that_cannot_reach_its_share_says_so():
    with pytest.raises(Unreachable, match="'attn_bf16' cannot reach 8 bits"):
        plan_for(_point(effective_bits=8.0, control="attn_bf16"), _by_key(_table()))


def _solved(t, bits, groups, given=None):
    """``t`` with ModelOpt's solve at ``bits`` stored, as the sweep stores it."""
    from orchestrator.core.planning import with_modelopt_solve

    return with_modelopt_solve(t, bits, groups, bits if given is None else given)


def test_modelopt_control_is_the_stored_solve_and_reads_back_from_the_score_file(tmp_path):
    """The plan of ``modelopt`` is exactly the groups ModelOpt returned (its share, not refilled),
    found by budget; it survives the score file that select reads, and is absent elsewhere."""
    from orchestrator.core.planning import NotSolved
    from orchestrator.outputs.tables import read_scores, write_scores

    t = _table()
    ends = control_plan(t, "ends_fixed:1", 14.0)
    solved = _solved(t, 14.0, ends.fp8_groups, 14.000001)
    p = plan_for(_point(effective_bits=14.0, control="modelopt"), _by_key(solved))
    assert p.plan_hash == ends.plan_hash and p.fp8_groups == ends.fp8_groups
    assert p.strategy == "control" and p.budget_met
    odd = ("model.layers.5.qkv",)  # far from the share: kept as ModelOpt returned it
    short = control_plan(_solved(t, 12.0, odd), "modelopt", 12.0)
    assert short.fp8_groups == odd and not short.budget_met
    write_scores(solved, tmp_path / "s.parquet")
    back = read_scores(tmp_path / "s.parquet")
    assert (
        back == solved
        and plan_for(_point(effective_bits=14.0, control="modelopt"), _by_key(back)) == p
    )
    with pytest.raises(NotSolved, match="no ModelOpt solve at 12 bits"):
        plan_for(_point(effective_bits=12.0, control="modelopt"), _by_key(solved))
    with pytest.raises(ValueError, match="that the table lacks"):
        _solved(t, 12.0, ["model.layers.9.qkv"])
    # ModelOpt's control fills no order of its own
    with pytest.raises(ValueError, match="not one of"):
        control_plan(t, "modelopt:1", 14.0)


def test_paired_round_measures_modelopt_first_and_a_shared_plan_once():
    t = _table()
    s = _scheme(t, 14)
    ends = control_plan(t, "ends_fixed:1", s.achieved_bits)
    tables = _by_key(_solved(t, s.achieved_bits, ends.fp8_groups))
    specs = ["modelopt", "inverse", "ends_fixed:1"]
    pts = control_points(tables, [s], specs, {s.plan_hash})
    assert [p.control for p in pts] == ["modelopt", "inverse"]  # ends_fixed:1 is that plan
    # ModelOpt returns the scheme's own plan: nothing to measure for it
    same = _by_key(_solved(t, s.achieved_bits, make_plan(t, 14, 1.0).fp8_groups))
    assert [p.control for p in control_points(same, [s], specs, {s.plan_hash})] == [
        "inverse",
        "ends_fixed:1",
    ]


def test_modelopt_row_comes_first_and_a_shared_plan_is_one_comparison():
    t = _table()
    s = _scheme(t, 14)
    base = [1.0, 2.0, 1.5, 3.0, 1.0, 2.5, 2.0, 1.0]
    ends = control_plan(t, "ends_fixed:1", s.achieved_bits)
    inverse = control_plan(t, "inverse", s.achieved_bits)
    tables = _by_key(_solved(t, s.achieved_bits, ends.fp8_groups, 14.000001))
    rows = [
        _measured(s.plan_hash, 14, [0.5 * x for x in base]),
        _measured(ends.plan_hash, 14, base, "control", "modelopt"),  # measured under the first
        _measured(inverse.plan_hash, 14, [4 * x for x in base], "control", "inverse"),
    ]
    specs = ["modelopt", "random:0", "inverse", "ends_fixed:1", "attn_bf16"]
    (got,) = compare_schemes([s], tables, measured_by_plan(rows), specs, 0)
    assert [r["control"] for r in got] == [
        "modelopt",
        "inverse",
        "ends_fixed:1",
        "attn_bf16",
        "random",
    ]
    by = {r["control"]: r for r in got}
    mo, ends_row = by["modelopt"], by["ends_fixed:1"]
    assert mo["effective_bits"] == pytest.approx(s.achieved_bits, abs=1e-6)  # the scheme's share
    assert mo["modelopt_effective_bits"] == 14.000001  # what ModelOpt was asked
    assert mo["plan_hash"] == ends_row["plan_hash"] == ends.plan_hash
    assert mo["same_plan_as"] == ["ends_fixed:1"] and ends_row["same_plan_as"] == ["modelopt"]
    assert mo["verdict"] == ends_row["verdict"] == "better"
    for k in ("kl_ratio", "kl_ratio_ci", "p", "p_holm", "kl_mean", "kl_ci"):
        assert ends_row[k] == mo[k], k
    assert "same_plan_as" not in by["inverse"]
    # one test per plan: Holm over modelopt (= ends_fixed:1) and inverse, not three
    assert verdict_rule([got], 0.05)["comparisons"] == 2
    names = [{"scheme": "a", "p": 0.1}, {"scheme": "b", "p": 0.2}]  # compare_sweeps' rows
    assert verdict_rule([names], 0.05)["comparisons"] == 2
    from orchestrator.core.stats import holm

    assert mo["p_holm"] == holm([mo["p"], by["inverse"]["p"]])[0]


def test_modelopt_row_says_same_plan_or_not_measured():
    t = _table()
    s = _scheme(t, 14)
    rows = [_measured(s.plan_hash, 14, [1.0] * 8)]
    mine = _by_key(_solved(t, s.achieved_bits, make_plan(t, 14, 1.0).fp8_groups))
    (got,) = compare_schemes([s], mine, measured_by_plan(rows), ["modelopt"], 0)
    assert got[0]["verdict"] == "same plan"
    assert got[0]["modelopt_effective_bits"] == s.achieved_bits  # as stored
    # a scheme that select moved to a share the sweep never solved
    (got,) = compare_schemes([s], _by_key(t), measured_by_plan(rows), ["modelopt"], 0)
    assert got == [{"control": "modelopt", "verdict": "not measured"}]


def test_score_kl_correlations_do_not_depend_on_the_order_trials_finished():
    """A resumed sweep hands selection its trials in another order; schemes.yaml must not change
    in the last digit (the weighted mean over budgets once summed in arrival order)."""
    t = _table()
    rng = np.random.default_rng(3)
    rs, seen = [], set()  # one trial per plan, as a sweep's de-duplicated grid has
    for bits in (15, 14, 13, 12, 11, 10):
        for p, c, s in _plans_at_one_share(t, bits):
            if p.plan_hash not in seen:
                seen.add(p.plan_hash)
                r = result(p.plan_hash, bits, float(rng.uniform(1, 2)), frac=p.fp8_fraction)
                rs.append(replace(r, coverage=c, strategy=s))
    tables = {"kl_div|FP8_DEFAULT_CFG": t}
    for fn in (score_kl_within_share, score_kl_correlation):
        want = fn(rs, tables)
        for seed in range(8):
            shuffled = [rs[i] for i in np.random.default_rng(seed).permutation(len(rs))]
            assert fn(shuffled, tables) == want, fn.__name__

from dataclasses import replace

import pytest

from orchestrator.outputs.tables import read_trials, write_trials

from .helpers import result

pytestmark = pytest.mark.unit


def test_trials_round_trip_with_per_sequence_sums_and_labels(tmp_path):
    seq = {"kl": (0.1, 0.2), "agree": (9.0, 8.0), "tokens": (10.0, 10.0)}
    rows = [
        replace(
            result("a", 14, 1e-3),
            strategy="ends_bf16:1",
            per_sequence=seq,
            numerics="bfloat16, vLLM fused scales",
        ),
        replace(result("b", 14, 2e-3), kind="control", strategy="", control="random:0"),
        result("f", 12, 0.0, status="FAILED"),
    ]
    write_trials(rows, tmp_path / "t.parquet")
    back = read_trials(tmp_path / "t.parquet")
    assert back == rows
    assert [r.label for r in back] == ["ends_bf16:1", "control random:0", "solve"]
    assert [r.numerics for r in back] == ["bfloat16, vLLM fused scales", "", ""]


def test_a_sweep_that_cannot_bind_a_name_is_advised_by_its_own_grid(tmp_path):
    """sweep and select hand finalize the config's grid: 14 bits shared its plan with 15 (measured
    once, as 15), so 14 is in the grid and the message must not ask for it."""
    from orchestrator.core.config import load_catalog, load_config
    from orchestrator.outputs.publish import SweepFacts, finalize

    cfg = load_config(None, ["search.effective_bits=[8, 12, 14, 15]", "search.coverage=[1.0]"])
    rows = [result("e", 8, 0.2), result("c", 12, 0.004), result("a", 15, 0.001, frac=0.31)]
    done = finalize(
        tmp_path, rows, {}, load_catalog(), None, {"sweep": "t"}, SweepFacts.of(cfg, {})
    )
    assert done.selection is None and done.error is not None
    assert "no plan lands in the band (nearest: 31.0% FP8)" in done.error
    assert "add effective_bits" not in done.error


def _rows():
    ends = {
        "control": "ends_fixed:1",
        "plan_hash": "e1",
        "fp8_fraction": 0.259259,
        "fp8_fraction_diff": 0.009259,
        "kl_mean": 6e-5,
        "kl_ci": [5.8e-5, 6.2e-5],
        "kl_ratio": 0.63,
        "kl_ratio_ci": [0.61, 0.65],
        "p": 0.001,
        "p_holm": 0.004,
        "verdict": "better",
    }
    seeds = [
        {"control": f"random:{s}", "fp8_fraction": 0.25, "fp8_fraction_diff": 0.0, "kl_ratio": q}
        for s, q in enumerate((0.15, 0.35))
    ]
    rnd = {
        "control": "random",
        "seeds": 2,
        "fp8_fraction_range": [0.25, 0.25],
        "fp8_fraction_diff": 0.0,
        "kl_mean": 2e-4,
        "kl_ci": [1e-4, 3e-4],
        "kl_ratio": 0.21,
        "kl_ratio_ci": [0.14, 0.33],
        "p": 0.001,
        "p_holm": 0.003,
        "verdict": "better",
        "seed_kl_ratio": {"min": 0.15, "median": 0.25, "max": 0.35},
        "scheme_rank": 1,
        "by_seed": seeds,
    }
    return [ends, {"control": "attn_bf16", "verdict": "cannot reach this share"}, rnd]


def test_console_names_each_controls_share_and_random_as_a_distribution():
    from orchestrator.outputs.summary import control_lines, rule_line

    (ends,), (attn,), (rnd, seeds) = (control_lines(r) for r in _rows())
    assert "vs ends_fixed:1" in ends and "better" in ends
    assert ends.endswith(
        "KL ratio 0.63 (<1: scheme closer to BF16) [0.61, 0.65] at 25.9% FP8 (+0.9 points)"
    )
    assert attn.endswith("cannot reach this share")
    assert rnd.endswith(
        "KL ratio 0.21 (<1: scheme closer to BF16) [0.14, 0.33] at 25.0% FP8 (+0.0 points max)"
    )
    assert seeds.strip() == (
        "over 2 seeds and the sequences; per seed 0.15-0.35 (median 0.25); rank 1 of 3"
    )
    assert max(len(line) for line in (ends, attn, rnd, seeds)) <= 120
    rule = {
        "margin": 0.05,
        "better_below": 0.952381,
        "worse_above": 1.05,
        "level": 0.95,
        "correction": "holm",
        "comparisons": 8,
    }
    assert rule_line(rule) == (
        "verdicts: better / worse when the 95% interval of the KL ratio lies below 0.952 / "
        "above 1.05 (margin 5%), equivalent inside, else inconclusive; Holm-corrected over the "
        "8 comparisons"
    )


def test_mlflow_gets_each_verdict_ratio_and_the_seeds_spread():
    from orchestrator.outputs.publish import scheme_tracking

    tags, metrics = scheme_tracking({"name": "top25", "controls": _rows()})
    assert tags == {
        "scheme_name": "top25",
        "verdict.ends_fixed:1": "better",
        "verdict.attn_bf16": "cannot reach this share",
        "verdict.random": "better",
    }
    assert metrics["kl_ratio.random"] == 0.21 and metrics["p_holm.ends_fixed:1"] == 0.004
    assert metrics["fp8_fraction_diff.ends_fixed:1"] == 0.009259
    assert metrics["kl_ratio.random:1"] == 0.35 and metrics["scheme_rank.random"] == 1
    assert metrics["seed_kl_ratio_min.random"] == 0.15


def _modelopt_rows():
    """ModelOpt's own solve holding the ends_fixed:1 plan (as on the demo's gradient scores)."""
    ends, *_ = _rows()
    mo = {
        **ends,
        "control": "modelopt",
        "effective_bits": 14.0,
        "modelopt_effective_bits": 14.0,
        "same_plan_as": ["ends_fixed:1"],
    }
    return [mo, {**ends, "same_plan_as": ["modelopt"]}]


def test_console_shows_modelopt_first_with_its_budget_and_the_plan_it_shares():
    from orchestrator.outputs.summary import control_lines

    mo, ends = (" ".join(w.strip() for w in control_lines(r)) for r in _modelopt_rows())
    assert mo.startswith("vs modelopt") and "KL ratio 0.63 (<1: scheme closer to BF16)" in mo
    assert mo.endswith(
        "(+0.9 points); ModelOpt's own solve at effective_bits=14; same plan as ends_fixed:1"
    )
    assert ends.endswith("(+0.9 points); same plan as modelopt")
    same = {"control": "modelopt", "verdict": "same plan", "modelopt_effective_bits": 12.0}
    assert control_lines(same) == [
        "  vs modelopt     same plan; ModelOpt's own solve at effective_bits=12, the scheme's plan"
    ]
    assert all(len(line) <= 120 for r in _modelopt_rows() for line in control_lines(r))


def test_mlflow_tags_the_shared_plan_and_the_run_that_measured_modelopts_plan():
    from orchestrator.outputs.publish import modelopt_run_tags, scheme_tracking

    rows = _modelopt_rows()
    tags, metrics = scheme_tracking({"name": "top25", "controls": rows})
    assert tags["verdict.modelopt"] == "better" and tags["same_plan_as.modelopt"] == "ends_fixed:1"
    assert tags["same_plan_as.ends_fixed:1"] == "modelopt"
    assert metrics["modelopt_effective_bits.modelopt"] == 14.0
    assert metrics["kl_ratio.modelopt"] == metrics["kl_ratio.ends_fixed:1"] == 0.63
    full = {"control": "modelopt", "verdict": "same plan", "plan_hash": "s8"}
    entries = [
        {"name": "top25", "controls": rows},
        {"name": "full", "controls": [{**full, "modelopt_effective_bits": 8.0}]},
    ]
    trials = [
        replace(result("e1", 14, 1e-3), mlflow_run_id="run-e1", kind="control", control="modelopt"),
        replace(result("s8", 8, 1e-2), mlflow_run_id="run-s8"),
    ]
    assert modelopt_run_tags(entries, trials) == {
        "run-e1": {"modelopt_solve_for": "top25", "modelopt_effective_bits": "14"},
        "run-s8": {"modelopt_solve_for": "full", "modelopt_effective_bits": "8"},
    }

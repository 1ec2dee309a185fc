"""Trials on the tiny Qwen2.5-VL with real ModelOpt FP8 fake quantization on CPU."""

import pytest
import torch

from orchestrator.core.planning import make_plan
from orchestrator.model.loading import load_model
from orchestrator.model.quantize import module_quantizers, quantize_plan
from orchestrator.model.worker import Evaluator

pytestmark = pytest.mark.integration
RECIPE = "FP8_DEFAULT_CFG"


@pytest.fixture(scope="module")
def evaluator(tiny_data):
    model, profile = load_model("tiny-qwen2.5-vl")
    return Evaluator(model, profile, tiny_data.calib, tiny_data.eval, RECIPE, "cpu")


def test_bf16_plan_has_zero_kl_and_full_agreement(evaluator):
    m = evaluator.evaluate(())
    assert m["kl_mean"] == pytest.approx(0.0, abs=1e-9)
    assert m["top1_agreement"] == 1.0 and m["nll_delta"] == pytest.approx(0.0, abs=1e-9)


def test_full_fp8_drifts_more_than_the_smallest_share(evaluator, score_tables):
    table = score_tables["kl_div"][0]
    smallest = make_plan(table, 15.9, 1.0)
    assert 0 < smallest.fp8_fraction < 0.2
    full = make_plan(table, 8, 1.0)
    kl_small = evaluator.evaluate(smallest.fp8_modules)["kl_mean"]
    kl_full = evaluator.evaluate(full.fp8_modules)["kl_mean"]
    assert 0 < kl_small < kl_full


def test_only_planned_modules_are_quantized(evaluator, score_tables):
    plan = make_plan(score_tables["gradient"][0], 12, 0.5)
    evaluator._set_enabled(plan.fp8_modules)
    try:
        on = {
            name.rsplit(".", 1)[0]
            for name, mod in evaluator.model.named_modules()
            if name.endswith(("weight_quantizer", "input_quantizer")) and mod.is_enabled
        }
    finally:
        evaluator._set_enabled(())
    assert on == set(plan.fp8_modules)
    assert not any("visual" in n or "lm_head" in n for n in on)


def test_calibrate_once_then_toggle_equals_calibrating_each_plan(
    evaluator, tiny_data, score_tables
):
    """The resident worker calibrates every eligible layer once; with `max` calibration the ranges
    come from unquantized activations, so a plan gets the same amax and the same KL as a fresh
    quantize-and-calibrate of that plan alone (fused groups shared as vLLM serves them in both:
    the groups are fixed, so sharing once at calibration equals sharing per plan)."""
    plan = make_plan(score_tables["kl_div"][0], 11, 1.0)
    fresh, _ = load_model("tiny-qwen2.5-vl")
    fresh = quantize_plan(
        fresh, RECIPE, plan.fp8_modules, tiny_data.calib, "cpu", fused_scales="vllm"
    )
    resident_q = module_quantizers(evaluator.model, plan.fp8_modules)
    for name, qs in module_quantizers(fresh, plan.fp8_modules).items():
        for a, b in zip(qs, resident_q[name], strict=True):
            assert torch.equal(a.amax, b.amax), name
    ref = evaluator.evaluate(plan.fp8_modules)
    batch = torch.as_tensor(tiny_data.eval.tokens[0])
    evaluator._set_enabled(plan.fp8_modules)
    with torch.no_grad():
        resident_logits = evaluator.model(input_ids=batch).logits
        fresh_logits = fresh(input_ids=batch).logits
    evaluator._set_enabled(())
    assert torch.allclose(resident_logits, fresh_logits, atol=1e-6)
    assert ref["kl_mean"] > 0


def test_uncached_reference_gives_the_same_metrics(tiny_data, evaluator, score_tables):
    model, profile = load_model("tiny-qwen2.5-vl")
    recompute = Evaluator(
        model, profile, tiny_data.calib, tiny_data.eval, RECIPE, "cpu", reference_cache_bytes=0
    )
    plan = make_plan(score_tables["gradient"][0], 10, 1.0)
    a, b = evaluator.evaluate(plan.fp8_modules), recompute.evaluate(plan.fp8_modules)
    for k in ("kl_mean", "top1_agreement", "nll", "nll_ref"):
        assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("content", ["", '{"kl_mean": 0.1', "[1, 2]"])
def test_a_checkpoint_cut_short_reads_as_none_and_a_whole_one_as_its_result(tmp_path, content):
    """Tune may persist a trial's checkpoint while the disk is full (an empty or cut-short
    result.json): the restored trial measures its plan again instead of failing on it."""
    from ray import tune

    from orchestrator.search.trial import _stored_result

    (tmp_path / "result.json").write_text(content)
    assert _stored_result(tune.Checkpoint.from_directory(tmp_path)) is None
    (tmp_path / "result.json").write_text('{"kl_mean": 0.1}')
    assert _stored_result(tune.Checkpoint.from_directory(tmp_path)) == {"kl_mean": 0.1}

"""Image+text prompts: the multimodal path through the BF16 vision tower, on the tiny preset."""

from dataclasses import replace

import pytest
import torch

from orchestrator.data import synthetic_image_prompts
from orchestrator.planning import make_plan
from orchestrator.profiles import load_model, resolve_config
from orchestrator.trial import Evaluator

pytestmark = pytest.mark.integration


def test_image_prompts_measure_answer_tokens_through_the_vision_tower(tiny_data, score_tables):
    hf = resolve_config("tiny-qwen2.5-vl")
    ids = (hf.image_token_id, hf.vision_start_token_id, hf.vision_end_token_id)
    images = synthetic_image_prompts(2, tiny_data.eval, hf.vision_config, ids, seed=0)
    assert images.input_ids.shape == (2, 8 + 6 + 16) and images.answer_start == 14
    assert (images.input_ids[:, 9:13] == hf.image_token_id).all()
    model, profile = load_model("tiny-qwen2.5-vl")
    ev = Evaluator(
        model, profile, tiny_data.calib, tiny_data.eval, "FP8_DEFAULT_CFG", "cpu", images=images
    )
    assert ev.evaluate(())["image_kl_mean"] == pytest.approx(0.0, abs=1e-9)
    full = ev.evaluate(make_plan(score_tables["kl_div"][0], 8, 1.0).fp8_modules)
    assert full["image_kl_mean"] > 0 and 0 <= full["image_top1_agreement"] <= 1
    visual_on = [
        n
        for n, m in ev.model.named_modules()
        if "visual" in n and n.endswith("_quantizer") and m.is_enabled
    ]
    assert visual_on == []
    ev.images = replace(images, pixel_values=-images.pixel_values)  # another image ...
    try:
        other = ev._image_logprobs(0)
    finally:
        ev.images = images
    assert not torch.allclose(other, ev._image_reference[0])  # ... changes the answer

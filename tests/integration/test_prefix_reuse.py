"""kl_div prefix reuse: the same scores and plans as full forwards, and the same logits per family.

Replaying the decoder from a block's recorded inputs runs the same blocks on the same tensors, so
everything here is compared bitwise (``==``, ``torch.equal``), not within a tolerance.
"""

import itertools
import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from orchestrator.core.config import DataConfig, load_config
from orchestrator.core.planning import make_plan
from orchestrator.model.data import build_datasets, hf_tokenizer, read_text
from orchestrator.model.loading import load_model, resolve_source
from orchestrator.model.scoring import ScoringSetup, score
from orchestrator.model.scoring_forward import PrefixReuse, find_decoder, full_forward
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def _assert_same(on, off):
    assert on.key == off.key  # reuse_prefix is not part of the cache key
    assert [(g.name, g.score) for g in on.groups] == [(g.name, g.score) for g in off.groups]
    assert any(g.score > 0 for g in on.groups)
    grid = load_config(ROOT / "search_spaces" / "demo_tiny.yaml").search
    for point in itertools.product(grid.effective_bits, grid.coverage, grid.strategies):
        assert make_plan(on, *point) == make_plan(off, *point), point


def test_tiny_preset_scores_and_plans_equal_full_forwards(score_tables, tiny_data, tmp_path):
    on, setup, _ = score_tables["kl_div"]  # the session's table, scored with reuse (the default)
    assert setup.reuse_prefix
    model, profile = load_model("tiny-qwen2.5-vl")
    off = score(model, profile, tiny_data.score, replace(setup, reuse_prefix=False), tmp_path)
    _assert_same(on, off)


def test_reference_preset_scores_and_plans_equal_full_forwards(tmp_path, caplog):
    name = "wikitext-qwen2.5-vl"
    text = tmp_path / "head.txt"  # enough held-out text for the batches, tokenized in a blink
    text.write_text(read_text(ROOT / "data" / "wikitext-2" / "test.txt")[:20000], encoding="utf-8")
    cfg = DataConfig(
        source=str(text),
        seq_len=32,
        batch_size=1,
        calib_batches=1,
        score_batches=1,  # 12 blocks x 4 groups: 49 forwards per variant
        eval_batches=1,
    )
    data = build_datasets(cfg, 4096, hf_tokenizer(resolve_source(name), None, False), 0).score
    tables = {}
    for reuse in (True, False):
        model, profile = load_model(name)
        setup = ScoringSetup(name, None, profile.name, data.hash, "kl_div", "FP8_DEFAULT_CFG", 1, 1)
        with caplog.at_level(logging.INFO, logger="orchestrator.model.scoring_forward"):
            tables[reuse] = score(
                model, profile, data, replace(setup, reuse_prefix=reuse), tmp_path / str(reuse)
            )
    # reuse really ran: every quantized forward (one per group and batch) started at its block;
    # the one full forward is calibration's
    groups = len(tables[True].groups)
    assert f": {groups}/{groups + 2} forwards replayed" in caplog.text  # + recorded, full
    # the progress line counted ModelOpt's loop exactly: 1 batch x (1 + groups) forwards
    assert "kl_div/FP8_DEFAULT_CFG: 100% (1 of 1 batches)" in caplog.text
    _assert_same(tables[True], tables[False])


TEXT = dict(
    hidden_size=64,
    num_hidden_layers=4,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    max_position_embeddings=2048,
)
IDS = dict(image_token_id=2, video_token_id=3, vision_start_token_id=4, vision_end_token_id=5)
MROPE = {"mrope_section": [2, 3, 3]}


def _family(kind):
    import transformers as T

    torch.manual_seed(0)
    if kind == "qwen2":
        return T.Qwen2ForCausalLM(T.Qwen2Config(**TEXT))
    if kind == "qwen3":
        return T.Qwen3ForCausalLM(T.Qwen3Config(**TEXT, head_dim=16))
    if kind == "qwen2_vl":
        text = {**TEXT, "rope_scaling": {"type": "mrope", **MROPE}}
        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2)
        cfg = T.Qwen2VLConfig(text_config=text, vision_config=vision, **IDS)
        return T.Qwen2VLForConditionalGeneration(cfg)
    if kind == "qwen2_5_vl":
        return load_model("tiny-qwen2.5-vl")[0]
    # Qwen3-VL adds deepstack image features to the hidden states after blocks 0 and 1
    rope = {"rope_type": "default", "mrope_interleaved": True, **MROPE}
    text = {**TEXT, "head_dim": 16, "rope_scaling": rope}
    vision = dict(
        depth=3,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        deepstack_visual_indexes=[0, 1],
        num_position_embeddings=64,
    )
    return T.Qwen3VLForConditionalGeneration(
        T.Qwen3VLConfig(text_config=text, vision_config=vision, **IDS)
    )


def _image_batch(model):
    """One image+text prompt as the model's inputs (the vision tower runs in the full forward):
    8 text tokens, a seeded random 56x56 image (4x4 patches of 14 px, merged 2x2 into 4 image
    tokens) and 16 answer tokens. Hand-built patches are fine here: the test compares two ways of
    running the same inputs, not what a processor makes of a photograph."""
    vision = model.config.vision_config
    merge = int(getattr(vision, "spatial_merge_size", 2))
    grid = (1, 2 * merge, 2 * merge)
    patches = grid[0] * grid[1] * grid[2]
    patch_dim = (
        int(getattr(vision, "in_channels", 3))
        * int(getattr(vision, "temporal_patch_size", 2))
        * int(getattr(vision, "patch_size", 14)) ** 2
    )
    rng = np.random.default_rng(0)
    text = rng.integers(6, 512, 24)
    image = [IDS["vision_start_token_id"]] + [IDS["image_token_id"]] * (patches // merge**2)
    image += [IDS["vision_end_token_id"]]
    ids = torch.as_tensor(np.concatenate([text[:8], image, text[8:]])[None], dtype=torch.long)
    return {
        "input_ids": ids,
        "pixel_values": torch.as_tensor(
            rng.standard_normal((patches, patch_dim)), dtype=torch.float32
        ),
        "image_grid_thw": torch.tensor([grid]),
        "mm_token_type_ids": (ids == IDS["image_token_id"]).int(),
    }


CASES = [(k, "tokens") for k in ("qwen2", "qwen3", "qwen2_vl", "qwen2_5_vl", "qwen3_vl")] + [
    (k, "image") for k in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
]


@pytest.mark.parametrize(("kind", "inputs"), CASES)
def test_replay_from_each_block_gives_the_full_forward_logits(kind, inputs):
    import modelopt.torch.quantization as mtq

    model = _family(kind).eval()
    batch = _image_batch(model) if inputs == "image" else torch.randint(6, 512, (2, 16))
    with torch.inference_mode():
        mtq.quantize(model, mtq.FP8_DEFAULT_CFG, forward_loop=lambda m: full_forward(m, batch))
        reuse = PrefixReuse(model, find_decoder(model))
        reuse.attach()
        mtq.disable_quantizer(model, "*")
        assert torch.equal(reuse(model, batch), full_forward(model, batch))  # recorded
        for k in range(4):
            mtq.enable_quantizer(model, f"*layers.{k}.mlp.*")
            assert torch.equal(reuse(model, batch), full_forward(model, batch)), k
            mtq.disable_quantizer(model, f"*layers.{k}.*")
        reuse.detach()
    # deepstack changes the hidden states after blocks 0 and 1: replay starts at block 2 or later
    replayed = 2 if (kind, inputs) == ("qwen3_vl", "image") else 4
    assert reuse.counts == {"recorded": 1, "replayed": replayed, "full": 4 - replayed}
    assert reuse.skipped_blocks == sum(range(4 - replayed, 4))


def test_a_batch_over_the_budget_runs_in_full(monkeypatch):
    import modelopt.torch.quantization as mtq

    from orchestrator.model import scoring_forward

    monkeypatch.setattr(scoring_forward, "PREFIX_BUDGET_BYTES", 1024)
    model = _family("qwen2").eval()
    batch = torch.randint(6, 512, (2, 16))  # 4 blocks x 2 x 16 x 64 x 4 bytes > 1 KiB
    with torch.inference_mode():
        mtq.quantize(model, mtq.FP8_DEFAULT_CFG, forward_loop=lambda m: full_forward(m, batch))
        reuse = PrefixReuse(model, find_decoder(model))
        reuse.attach()
        mtq.disable_quantizer(model, "*")
        reuse(model, batch)
        mtq.enable_quantizer(model, "*layers.3.*")
        assert torch.equal(reuse(model, batch), full_forward(model, batch))
        reuse.detach()
    assert reuse.counts == {"recorded": 1, "replayed": 0, "full": 1}


def test_reuse_is_off_with_reuse_prefix_false_and_for_gradient():
    from orchestrator.model.scoring_forward import scoring_step

    model = _family("qwen2")
    for method, reuse in (("kl_div", False), ("gradient", True)):
        with scoring_step(model, method, reuse, "t", 1) as step:
            assert step.step is full_forward
    with scoring_step(model, "kl_div", True, "t", 1) as step:
        assert isinstance(step.step, PrefixReuse)
    setup = ScoringSetup("m", None, "p", "h", "kl_div", "r", 1, 1)
    assert replace(setup, reuse_prefix=False).key() == setup.key()

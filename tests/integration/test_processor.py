"""Every VL family's image+text rows are what the model's own processor makes, and they reach the
model with M-RoPE's 3-D positions.

For tiny checkpoints of Qwen2-VL, Qwen2.5-VL and Qwen3-VL (with the reference tokenizer, chat
template and image processor settings), a mixed batch of the sweep's data (a photograph's chat and
a WikiText-2 window) is compared with what transformers' processor returns for the same chat through
``apply_chat_template(..., tokenize=True)``, and the positions the language model receives are
compared with the model's own ``get_rope_index``.
"""

from __future__ import annotations

import pytest
import torch

from orchestrator.checks import absolute_paths
from orchestrator.core.config import load_config
from orchestrator.model.batches import batches, calibration_batches
from orchestrator.model.datasets import build_data
from orchestrator.model.images import CAPTION_PROMPT, load_encoder, read_records
from orchestrator.model.loading import load_model, resolve_config
from tests.integration.families import save_tiny

pytestmark = pytest.mark.integration

VL = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]


def _settings(src) -> list[str]:
    return [
        f"model.source={src}",
        "data.source=data/wikitext-2/test.txt",
        "data.image_source=data/images",  # the photographs with captions.tsv
        "data.image_fraction=0.5",
        "data.seq_len=160",
        "data.batch_size=2",
        "data.calib_batches=1",
        "data.score_batches=1",
        "data.eval_batches=1",
        "data.report_batches=1",
        "scoring.num_calib_steps=1",
        "scoring.num_score_steps=1",
    ]


@pytest.fixture(scope="module", params=VL)
def family(request, tmp_path_factory):
    src = save_tiny(request.param, tmp_path_factory.mktemp(request.param), reads=True)
    cfg = absolute_paths(load_config(None, _settings(src)))
    return request.param, src, cfg, build_data(cfg)


def test_the_batch_holds_what_the_processor_returns_for_the_same_chat(family):
    _, src, cfg, data = family
    (batch,) = batches(data.calib, "cpu")
    assert batch.image_rows == (True, False)  # a photograph's chat, then a text window
    record = read_records(cfg.data.image_source, "data.image_source", cfg.data)[0]
    encoder = load_encoder(str(src), None, False, resolve_config(str(src)))
    processor = encoder.processor
    chat = [
        {
            "role": "user",
            "content": [
                {"type": "image", "path": str(cfg.data.image_source) + "/astronaut.jpg"},
                {"type": "text", "text": CAPTION_PROMPT},
            ],
        }
    ]
    assert record.where.endswith("line 1") and b"JFIF" in record.image[:16]  # astronaut.jpg
    own = processor.apply_chat_template(
        chat, tokenize=True, return_dict=True, add_generation_prompt=True, return_tensors="pt"
    )
    n = own["input_ids"].shape[1]
    answer = processor.tokenizer(record.answer, add_special_tokens=False)["input_ids"]
    length = int(batch.inputs["attention_mask"][0].sum())
    assert length == n + len(answer)
    assert torch.equal(batch.input_ids[0, :n], own["input_ids"][0])
    assert batch.input_ids[0, n:length].tolist() == answer
    types = batch.inputs["mm_token_type_ids"]
    assert torch.equal(types[0, :n], own["mm_token_type_ids"][0].long())
    assert int(types[0].sum()) == int(own["image_grid_thw"].prod()) // encoder.merge**2 > 0
    assert not types[1].any()  # the text window: no image token
    assert torch.equal(batch.inputs["image_grid_thw"], own["image_grid_thw"])
    assert torch.equal(batch.inputs["pixel_values"], own["pixel_values"])
    assert set(own) - set(batch.inputs) == set()  # every input the processor gives, the batch has


@torch.no_grad()
def test_the_language_model_gets_the_models_own_mrope_positions(family):
    model_type, src, _, data = family
    model, _ = load_model(str(src))
    seen: list[torch.Tensor] = []

    def grab(_mod, _args, kwargs):
        seen.append(kwargs["position_ids"])

    hook = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        forwards = (*batches(data.calib, "cpu"), *calibration_batches(data.calib, "cpu"))
        with_images = [b for b in forwards if "pixel_values" in b.inputs]
        assert len(with_images) == 2  # the padded batch, and its image row cut to its tokens
        for batch in with_images:
            seen.clear()
            model(**batch.inputs)
            i = batch.inputs
            want, _ = model.model.get_rope_index(
                i["input_ids"],
                mm_token_type_ids=i["mm_token_type_ids"],
                image_grid_thw=i["image_grid_thw"],
                attention_mask=i["attention_mask"],
            )
            (got,) = seen
            assert got is not None, model_type
            assert torch.equal(got[-3:], want), model_type  # 3-D: temporal, height, width
            image = batch.image_rows.index(True)
            vision = i["mm_token_type_ids"][image].bool()
            real = i["attention_mask"][image].bool()
            # image tokens share a temporal position and run over a grid: not 0, 1, 2, ...
            assert not torch.equal(got[-3][image][real], torch.arange(int(real.sum())))
            assert len(set(got[-3][image][vision].tolist())) == 1
    finally:
        hook.remove()

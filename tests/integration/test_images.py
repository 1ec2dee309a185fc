"""Real photographs (data/images) through the reference preset's image processor and chat template,
mixed with WikiText-2 rows, calibrated, measured on answer tokens; the vision tower stays BF16."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from orchestrator.checks import absolute_paths
from orchestrator.core.config import load_config
from orchestrator.model.batches import batches, calibration_batches
from orchestrator.model.data import TokenSet
from orchestrator.model.datasets import build_data
from orchestrator.model.loading import load_model
from orchestrator.model.quantize import fp8_quant_config, lm_parts
from orchestrator.model.worker import Evaluator, accumulate_metrics, summarize
from orchestrator.search.trial import error_bars

pytestmark = pytest.mark.integration

SETTINGS = [
    "model.source=wikitext-qwen2.5-vl",
    "data.source=data/wikitext-2/test.txt",
    "data.image_source=data/images/records.jsonl",
    "data.image_fraction=0.5",
    "data.seq_len=160",
    "data.batch_size=4",
    "data.calib_batches=1",
    "data.score_batches=2",
    "data.eval_batches=1",
    "data.report_batches=1",
    "scoring.num_calib_steps=1",
    "scoring.num_score_steps=2",
]


@pytest.fixture(scope="module")
def data():
    return build_data(absolute_paths(load_config(None, SETTINGS)))


@pytest.fixture(scope="module")
def evaluator(data):
    """In float32: these tests compare padded batches with rows alone, and a BF16 matmul rounds
    differently for another batch shape (2 % on the image answers' KL), which would hide a mask
    or position error as well as show one."""
    model, profile = load_model("wikitext-qwen2.5-vl", dtype="float32")
    return Evaluator(model, profile, data.calib, data.eval, "FP8_DEFAULT_CFG", "cpu")


def test_records_go_through_the_processor_as_chat_prompts(data):
    ev = data.eval
    assert ev.image_rows.tolist() == [[True, False, True, False]]
    grids = np.concatenate(ev.grids + data.calib.grids)
    vision_tokens = {int(g.prod()) // 4 for g in grids}  # merge 2 x 2
    assert len(vision_tokens) > 1  # photos of other sizes give other numbers of vision tokens
    row = ev.tokens[0, 0][ev.attention[0, 0]]
    assert (row == 3).sum() == int(ev.grids[0][0].prod()) // 4  # <|image_pad|> per vision token
    assert row[:10].tolist() == [32, 96, 352, 67, 314, 446, 96, 34, 346, 269]  # "<|im_start|>user"
    assert ev.targets[0, 1].sum() == 159 and not ev.targets[0, 1, 0]  # a text row: all but first
    assert not ev.targets[0, 0][~ev.attention[0, 0]].any()  # no padding is a target
    assert ev.pixels[0].shape == (int(sum(g.prod() for g in ev.grids[0])), 1176)


def test_hashes_cover_image_bytes_and_processor_settings(data):
    again = build_data(absolute_paths(load_config(None, SETTINGS)))
    assert again.hashes() == data.hashes()
    e = data.eval
    assert replace(e, image_shas=("0" * 64, *e.image_shas[1:])).hash != e.hash
    assert replace(e, settings="other").hash != e.hash
    text = build_data(absolute_paths(load_config(None, [*SETTINGS[:2], *SETTINGS[4:]])))
    assert text.eval.image_rows is None and text.eval.hash != e.hash


def test_all_bf16_is_exact_full_fp8_is_not_and_the_vision_tower_stays_bf16(evaluator):
    ev = evaluator
    bf16 = ev.evaluate(())
    assert bf16["kl_mean"] == pytest.approx(0.0, abs=1e-9)
    assert bf16["image_kl_mean"] == pytest.approx(0.0, abs=1e-9)
    assert bf16["image_nll_delta"] == pytest.approx(0.0, abs=1e-9)
    full = ev.evaluate(ev.eligible)
    assert full["image_kl_mean"] > 0 and full["text_kl_mean"] > 0
    assert 0 <= full["image_top1_agreement"] <= 1
    answer_tokens = ev.eval_batches[0].counts()[1]
    assert full["image_eval_tokens"] >= answer_tokens > 0
    assert full["eval_tokens"] == full["text_eval_tokens"] + full["image_eval_tokens"]
    bars = error_bars(full["per_sequence"], seed=0)
    for name in ("kl", "image_kl", "text_kl"):
        assert bars[f"{name}_ci_low"] <= full[f"{name}_mean"] <= bars[f"{name}_ci_high"], name
    ev._set_enabled(ev.eligible)
    try:
        visual_on = [
            n
            for n, m in ev.model.named_modules()
            if "visual" in n and n.endswith("_quantizer") and m.is_enabled
        ]
    finally:
        ev._set_enabled(())
    assert visual_on == [] and any("visual" in n for n, _ in ev.model.named_modules())


def test_another_image_changes_the_answer_logits(evaluator):
    ev = evaluator
    batch = ev.eval_batches[0]
    other = {**batch.inputs, "pixel_values": batch.inputs["pixel_values"].flip(0)}
    answer = batch.positions[0]
    same, changed = ev._hidden(batch), ev._hidden(replace(batch, inputs=other))
    assert not torch.allclose(same[0, answer], changed[0, answer], atol=1e-4)
    text_row = batch.positions[1]  # a text row of the same batch does not see the image
    assert torch.allclose(same[1, text_row], changed[1, text_row])


def _alone(s: TokenSet) -> list[TokenSet]:
    """Each row of ``s`` as a set of its own, cut to its real tokens: no padding anywhere."""
    out = []
    for i in range(s.tokens.shape[0]):
        first = 0
        for r in range(s.tokens.shape[1]):
            n = int(s.attention[i, r].sum())
            image = bool(s.image_rows[i, r])
            patches = int(s.grids[i][first].prod()) if image else 0
            start = int(sum(g.prod() for g in s.grids[i][:first]))
            out.append(
                replace(
                    s,
                    tokens=s.tokens[i : i + 1, r : r + 1, :n],
                    attention=s.attention[i : i + 1, r : r + 1, :n],
                    targets=s.targets[i : i + 1, r : r + 1, :n],
                    mm_types=s.mm_types[i : i + 1, r : r + 1, :n],
                    image_rows=s.image_rows[i : i + 1, r : r + 1],
                    pixels=(s.pixels[i][start : start + patches],),
                    grids=(s.grids[i][first : first + int(image)],),
                )
            )
            first += int(image)
    return out


@torch.no_grad()
def test_padded_mixed_batches_measure_what_rows_alone_measure(evaluator, data):
    ev = evaluator
    plan = ev.eligible
    batched = ev.evaluate(plan)
    sums = torch.zeros(2, 4, dtype=torch.float64)
    counts = [0, 0]
    for row in _alone(data.eval):
        (b,) = batches(row, "cpu")
        ref = ev._hidden(b)
        ev._set_enabled(plan)
        try:
            q = ev._hidden(b)
        finally:
            ev._set_enabled(())
        one = torch.zeros(1, 4, dtype=torch.float64)
        accumulate_metrics(one, ref, q, b, ev.head)
        sums[int(b.image_rows[0])] += one[0]
        counts = [a + c for a, c in zip(counts, b.counts(), strict=True)]
    image = summarize(sums[1].tolist(), counts[1])
    text = summarize(sums[0].tolist(), counts[0])
    assert counts[1] == batched["image_eval_tokens"] and counts[0] == batched["text_eval_tokens"]
    per = batched["per_sequence"]
    assert len(per["image_kl"]) == 2 and sum(per["image_tokens"]) == counts[1]
    for name, alone in (("image", image), ("text", text)):
        for k in ("kl_mean", "nll_delta", "top1_agreement"):
            assert batched[f"{name}_{k}"] == pytest.approx(alone[k], rel=1e-3, abs=1e-6), (name, k)


def _input_amax(model, modules) -> dict[str, torch.Tensor]:
    return {n: model.get_submodule(n).input_quantizer.amax.clone() for n in modules}


def _model(loud_token: int | None = None):
    """The preset and its eligible modules; ``loud_token``'s embedding row scaled by 100 (float32,
    as the evaluator these ranges are compared with)."""
    model, profile = load_model("wikitext-qwen2.5-vl", dtype="float32")
    if loud_token is not None:
        with torch.no_grad():
            model.get_input_embeddings().weight[loud_token] *= 100
    return model, [m.name for m in profile.eligible_modules(model)]


def _calibrated_on(forwards, loud_token: int | None = None) -> dict[str, torch.Tensor]:
    """Input ranges of every eligible module, max-calibrated on ``forwards`` (model inputs)."""
    import modelopt.torch.quantization as mtq

    model, eligible = _model(loud_token)

    def loop(m):
        with torch.no_grad():
            for inputs in forwards:
                lm_parts(m)[0](**inputs, use_cache=False)

    names = {n for n, _ in model.named_modules()}
    mtq.quantize(model, fp8_quant_config("FP8_DEFAULT_CFG", eligible, names), forward_loop=loop)
    return _input_amax(model, eligible)


def test_calibration_ranges_come_from_real_tokens_only(evaluator, data):
    """The resident evaluator was calibrated by ``quantize_plan`` on the padded calibration set."""
    calib = data.calib
    assert calib.image_rows.any() and not calib.attention.all()  # padded image rows
    assert all(b.inputs["attention_mask"].all() for b in calibration_batches(calib, "cpu"))
    ours = _input_amax(evaluator.model, evaluator.eligible)
    alone = _calibrated_on([batches(row, "cpu")[0].inputs for row in _alone(calib)])
    assert all(torch.equal(ours[n], alone[n]) for n in ours)  # each row alone, trimmed
    # On this preset's random weights the padding positions' inputs stay below the real tokens'
    # maxima, so padding would not move a range here. A pad token that stands out (its embedding
    # x 100; no real token has its id, so our ranges stay as they are) shows what padding does.
    (pad,) = np.unique(calib.tokens[~calib.attention])
    assert pad not in calib.tokens[calib.attention]
    padded = _calibrated_on([b.inputs for b in batches(calib, "cpu")], int(pad))
    assert any(not torch.equal(padded[n], ours[n]) for n in ours)


def test_mixed_set_scores_and_its_shards_add_up_to_the_whole(data, tmp_path):
    """AutoQuantize calibrates on the first score batch without its padding, in every shard."""
    from orchestrator.model.scoring import (
        ScoringSetup,
        merge_shards,
        score,
        score_shard,
        shard_indices,
    )

    s = data.score
    assert s.image_rows.any() and not s.attention.all()  # padded image rows
    model, profile = load_model("wikitext-qwen2.5-vl")
    args = ("wikitext-qwen2.5-vl", None, profile.name, s.hash, "gradient", "FP8_DEFAULT_CFG", 1, 2)
    whole = score(model, profile, s, ScoringSetup(*args), tmp_path)
    parts = [
        score_shard(*load_model("wikitext-qwen2.5-vl"), s, ScoringSetup(*args), idx)
        for idx in shard_indices(2, 2)
    ]
    merged, _ = merge_shards(parts)
    assert [g.name for g in merged.groups] == [g.name for g in whole.groups]
    scores = [g.score for g in whole.groups]
    assert all(x > 0 for x in scores)
    assert [g.score for g in merged.groups] == pytest.approx(scores, rel=1e-4, abs=1e-12)

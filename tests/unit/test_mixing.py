"""How image+text rows mix into the three sets: evenly spread, disjoint, masked, and calibrated
without padding. No model: numpy arrays and the tensors of the batches."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from orchestrator.core.config import DataConfig, DataError
from orchestrator.model.batches import batches, calibration_batches
from orchestrator.model.data import (
    ImageSamples,
    build_datasets,
    byte_tokenizer,
    image_places,
)
from orchestrator.model.images import Encoded

pytestmark = pytest.mark.unit


def _samples(n: int) -> list[Encoded]:
    """Record i: 5 + i % 3 prompt tokens of value 300 + i, the second of them its one image
    token, then 3 answer tokens; 4 patches."""
    out = []
    for i in range(n):
        ids = np.array([300 + i] * (5 + i % 3) + [7, 8, 9], dtype=np.int64)
        pixels = np.full((4, 6), float(i), dtype=np.float32)
        mm = np.zeros(len(ids), dtype=np.int64)
        mm[1] = 1
        out.append(Encoded(ids, len(ids) - 3, pixels, np.array([1, 2, 2]), f"sha{i}", mm))
    return out


TEXT = "".join(chr(97 + i % 26) for i in range(4000))


def _cfg(tmp_path, text=TEXT, **kw) -> DataConfig:
    f = tmp_path / "text.txt"
    f.write_text(text)
    base = dict(source=str(f), seq_len=16, batch_size=4, calib_batches=1, score_batches=2)
    return DataConfig(**{**base, "eval_batches": 2, "report_batches": 0, **kw})


@pytest.mark.parametrize("rows,fraction,want", [(4, 0.5, 2), (8, 0.25, 2), (4, 1.0, 4), (4, 0, 0)])
def test_image_places_are_evenly_spread(rows, fraction, want):
    placed = image_places(rows, fraction)
    assert placed.sum() == want
    if 0 < want < rows:
        gaps = np.diff(np.flatnonzero(placed))
        assert gaps.max() - gaps.min() <= 1


def test_mixed_sets_take_records_front_and_back_and_mask_padding(tmp_path):
    cfg = _cfg(tmp_path)
    images = ImageSamples(_samples(12), 0.5, "records.jsonl", 0, "settings")
    data = build_datasets(cfg, 512, byte_tokenizer(512), 0, images)
    firsts = {
        s.name: [int(s.tokens[b, r, 0]) for b, r in zip(*np.nonzero(s.image_rows), strict=True)]
        for s in (data.calib, data.score, data.eval)
    }
    assert firsts == {
        "calib": [300, 301],
        "score": [302, 303, 304, 305],
        "eval": [308, 309, 310, 311],  # from the back: never calibrated or scored on
    }
    ev = data.eval
    assert ev.image_rows.tolist() == [[True, False, True, False]] * 2
    row = ev.tokens[0, 0]
    n = int(ev.attention[0, 0].sum())
    assert row[n - 3 : n].tolist() == [7, 8, 9] and not row[n:].any()  # answer, then padding
    assert np.flatnonzero(ev.targets[0, 0]).tolist() == [n - 3, n - 2, n - 1]
    assert ev.targets[0, 1].sum() == 15 and ev.attention[0, 1].all()  # a text window
    # the processor's token types travel with each row: its image token, nothing on text rows
    assert np.flatnonzero(ev.mm_types[0, 0]).tolist() == [1] and not ev.mm_types[0, 1].any()
    assert [p[:, 0].tolist() for p in ev.pixels] == [[8.0] * 4 + [9.0] * 4, [10.0] * 4 + [11.0] * 4]
    assert ev.image_shas == ("sha8", "sha9", "sha10", "sha11")


def test_the_report_takes_the_last_records_and_selection_those_before(tmp_path):
    """Each record is a document: the report set's come from the very back, the selection set's
    just before them, and every row of both names its document."""
    letters = np.random.default_rng(0).integers(97, 123, 4000)  # no two windows alike
    cfg = _cfg(tmp_path, "".join(map(chr, letters)), report_batches=1)
    images = ImageSamples(_samples(16), 0.5, "records.jsonl", 0, "settings")
    data = build_datasets(cfg, 512, byte_tokenizer(512), 0, images)
    assert data.report is not None and data.report.tokens.shape == (1, 4, 16)
    assert data.report.image_shas == ("sha14", "sha15")
    assert data.eval.image_shas == ("sha10", "sha11", "sha12", "sha13")
    assert data.calib.docs is None and data.report.docs is not None
    docs = data.report.docs.ravel().tolist()
    # two records, and two windows of the text, which is one paragraph: one document
    assert len(set(docs)) == 3 and docs.count(docs[1]) == 2
    rows = {s.name: {r.tobytes() for r in s.tokens.reshape(-1, 16)} for s in data.all()}
    assert not rows["report"] & (rows["calib"] | rows["score"] | rows["eval"])


def test_text_only_sets_keep_their_shape_and_hash(tmp_path):
    cfg = _cfg(tmp_path)
    data = build_datasets(cfg, 512, byte_tokenizer(512), 0)
    assert data.eval.image_rows is None and data.eval.tokens.shape == (2, 4, 16)
    # a window of the text, at a multiple of seq_len
    windows = {tuple(map(ord, TEXT[i : i + 16])) for i in range(0, 4000 - 15, 16)}
    assert all(tuple(r.tolist()) in windows for r in data.calib.tokens.reshape(-1, 16))


def test_too_few_records_names_the_knob(tmp_path):
    images = ImageSamples(_samples(9), 0.5, "records.jsonl", 0, "settings")
    with pytest.raises(DataError, match="data.image_fraction=0.5: 'records.jsonl' holds 9"):
        build_datasets(_cfg(tmp_path), 512, byte_tokenizer(512), 0, images)


def test_evaluation_takes_its_own_fraction_and_the_same_records_either_way(tmp_path):
    """Text-only calibration (fraction 0) and image+text calibration, judged on one evaluation
    set: the eval_fraction alone decides the evaluation rows, so two such sweeps can be paired."""
    cfg = _cfg(tmp_path)
    text_calib = ImageSamples(_samples(14), 0.0, "records.jsonl", 0, "settings", 1.0)
    mixed_calib = ImageSamples(_samples(14), 0.5, "records.jsonl", 0, "settings", 1.0)
    a = build_datasets(cfg, 512, byte_tokenizer(512), 0, text_calib)
    b = build_datasets(cfg, 512, byte_tokenizer(512), 0, mixed_calib)
    assert not a.calib.image_rows.any() and not a.score.image_rows.any()
    assert b.calib.image_rows.sum() == 2 and b.score.image_rows.sum() == 4
    assert a.eval.image_rows.all() and a.eval.hash == b.eval.hash
    assert a.calib.hash != b.calib.hash
    assert a.eval.image_shas == tuple(f"sha{i}" for i in range(6, 14))  # the last 8, from the back
    # the report set too: eval_fraction decides it, so two such sweeps share it
    with_report = _cfg(tmp_path, report_batches=1)
    a, b = (
        build_datasets(with_report, 512, byte_tokenizer(512), 0, replace(x, samples=_samples(18)))
        for x in (text_calib, mixed_calib)
    )
    assert a.report.image_rows.all() and a.report.hash == b.report.hash


def _rows_of(parts) -> list[tuple]:
    """Each row of the forwards: its tokens, targets and its image's patches (or None)."""
    out = []
    for b in parts:
        grids = b.inputs.get("image_grid_thw", torch.zeros(0, 3, dtype=torch.long))
        ends = np.cumsum([0, *(int(g.prod()) for g in grids)])
        images = iter(range(len(grids)))
        for r, img in enumerate(b.image_rows):
            px = None
            if img:
                i = next(images)
                px = b.inputs["pixel_values"][ends[i] : ends[i + 1]].numpy().tobytes()
            real = b.inputs["attention_mask"][r].bool()
            out.append(
                (tuple(b.input_ids[r][real].tolist()), tuple(b.targets[r][real].tolist()), px)
            )
    return sorted(out, key=repr)


def test_calibration_forwards_hold_every_real_token_and_no_padding(tmp_path):
    samples = _samples(12)
    long = np.array([400] * 13 + [7, 8, 9], dtype=np.int64)  # exactly seq_len: no padding
    pixels, mm = np.full((8, 6), 0.0, np.float32), np.zeros(len(long), np.int64)
    mm[1] = 1
    samples[0] = Encoded(long, 13, pixels, np.array([1, 2, 4]), "s0", mm)
    samples[2] = replace(samples[0], image_sha="s2")
    images = ImageSamples(samples, 0.5, "records.jsonl", 0, "settings")
    data = build_datasets(_cfg(tmp_path), 512, byte_tokenizer(512), 0, images)
    for s, per_forward in ((data.calib, 1), (data.score, 2), (data.score, 1)):
        parts = calibration_batches(s, "cpu", per_forward)
        assert all(bool(b.inputs["attention_mask"].all()) for b in parts)
        assert _rows_of(parts) == _rows_of(batches(s, "cpu", per_forward))
        stacked = [b for b in parts if len(b.image_rows) > 1]
        assert len(stacked) == len(s.tokens) // per_forward  # unpadded rows stay together
        assert all(b.input_ids.shape[1] == 16 for b in stacked)
        alone = [b for b in parts if len(b.image_rows) == 1]
        assert len(alone) == int((~s.attention.all(-1)).sum())
        assert all(b.image_rows == (True,) and b.input_ids.shape[1] < 16 for b in alone)
        for b in parts:
            assert b.input_ids[:, 1:][b.targets[:, 1:]].numel() == sum(b.counts())
            if "pixel_values" in b.inputs:  # M-RoPE's token types, cut like the ids
                types = b.inputs["mm_token_type_ids"]
                assert types.shape == b.input_ids.shape
                assert types.sum(1).tolist() == [int(img) for img in b.image_rows]
    (full, _) = calibration_batches(data.calib, "cpu")  # record 0 fills its row: stacked, 8 patches
    assert full.image_rows == (True, False, False) and full.inputs["pixel_values"].shape[0] == 8


def test_text_only_calibration_forwards_are_the_batches(tmp_path):
    data = build_datasets(_cfg(tmp_path), 512, byte_tokenizer(512), 0)
    ours, plain = calibration_batches(data.score, "cpu", 2), batches(data.score, "cpu", 2)
    assert [b.inputs.keys() for b in ours] == [b.inputs.keys() for b in plain] == [{"input_ids"}]
    assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(ours, plain, strict=True))

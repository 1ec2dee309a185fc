"""The three kinds of image+text source give the same records; text-only sources are not mistaken
for them. No model: records only (PIL reads the images)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.core.config import DataConfig, DataError
from orchestrator.model.images import (
    CAPTION_PROMPT,
    image_fraction,
    image_source,
    is_image_source,
    read_records,
    records_from_dataset,
)
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

IMAGES = ROOT / "data" / "images"
CFG = DataConfig()


def _jsonl():
    return read_records(str(IMAGES / "records.jsonl"), "data.image_source", CFG)


def test_jsonl_records_read_their_images_relative_to_the_file():
    records = _jsonl()
    assert len(records) == 28
    assert records[0].image == (IMAGES / "astronaut.jpg").read_bytes()
    assert records[0].prompt == "Describe this image." and records[0].answer.startswith("A smil")


def test_parquet_records_hold_the_image_bytes(tmp_path):
    rows = [json.loads(x) for x in (IMAGES / "records.jsonl").read_text().splitlines()]
    table = pa.table(
        {
            "picture": [(IMAGES / r["image"]).read_bytes() for r in rows],
            "question": [r["prompt"] for r in rows],
            "reply": [r["answer"] for r in rows],
        }
    )
    pq.write_table(table, tmp_path / "records.parquet")
    cfg = DataConfig(image_field="picture", prompt_field="question", answer_field="reply")
    got = read_records(str(tmp_path / "records.parquet"), "data.image_source", cfg)
    assert [(r.image, r.prompt, r.answer) for r in got] == [
        (r.image, r.prompt, r.answer) for r in _jsonl()
    ]
    assert is_image_source(str(tmp_path / "records.parquet"), cfg)
    assert not is_image_source(str(tmp_path / "records.parquet"), CFG)  # no "image" column


def test_a_folder_with_captions_answers_the_caption_prompt():
    got = read_records(str(IMAGES), "data.image_source", CFG)
    assert len(got) == 7 and {r.prompt for r in got} == {CAPTION_PROMPT}
    by_image = {r.image: r.answer for r in _jsonl() if r.prompt == CAPTION_PROMPT}
    assert {r.image: r.answer for r in got} == by_image


def test_a_hugging_face_dataset_with_an_image_column():
    datasets = pytest.importorskip("datasets", reason="the datasets package is not installed")
    rows = _jsonl()[:3]
    ds = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": r.image, "path": None} for r in rows],
            "prompt": [r.prompt for r in rows],
            "answer": [r.answer for r in rows],
        },
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "prompt": datasets.Value("string"),
                "answer": datasets.Value("string"),
            }
        ),
    )
    got = records_from_dataset(ds, "hf:mem", "data.image_source", CFG)
    assert [(r.image, r.prompt, r.answer) for r in got] == [
        (r.image, r.prompt, r.answer) for r in rows
    ]
    with pytest.raises(DataError, match="data.answer_field='reply': data.image_source='hf:mem'"):
        records_from_dataset(ds, "hf:mem", "data.image_source", DataConfig(answer_field="reply"))


def test_which_source_holds_the_images_and_the_default_mix():
    text = str(ROOT / "data" / "wikitext-2" / "test.txt")
    records = str(IMAGES / "records.jsonl")
    assert image_source(DataConfig(source=text)) is None
    both = DataConfig(source=text, image_source=records)
    assert image_source(both) == records and image_fraction(both) == 0.5
    alone = DataConfig(source=records)
    assert image_source(alone) == records and image_fraction(alone) == 1.0

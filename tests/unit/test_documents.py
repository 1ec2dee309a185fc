"""The report set is drawn across the source's documents and shares nothing with the sets that
choose: WikiText sections as documents, one window per document, disjoint from calibration,
scoring and selection. No model: the shipped WikiText-2 test file and the byte tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from orchestrator.core.config import DataConfig
from orchestrator.model.data import build_datasets, byte_tokenizer, split_documents

pytestmark = pytest.mark.unit
TEST_TXT = Path(__file__).resolve().parents[2] / "data" / "wikitext-2" / "test.txt"


def test_sections_are_documents_and_subsections_stay_in_them():
    text = (
        " intro line \n = Title = \n body one \n = = Career = = \n career text \n"
        " = = = 2000 – 2005 = = = \n early years \n = Other Title = \n more \n"
    )
    docs = split_documents([text])
    assert [d.strip().splitlines()[0].strip() for d in docs] == [
        "intro line",
        "= Title =",
        "= = Career = =",
        "= Other Title =",
    ]
    assert "early years" in docs[2]  # a level-3 heading stays in its section
    # no headings: records are documents; one record: its blank-line paragraphs
    assert split_documents(["a b", "c d"]) == ["a b", "c d"]
    assert split_documents(["p one\n\np two\n\n\n"]) == ["p one", "p two"]
    # an equation-looking line is no heading
    assert split_documents(["x = y =\nz"]) == ["x = y =\nz"]


@pytest.fixture(scope="module")
def wikitext_sets():
    cfg = DataConfig(
        source=str(TEST_TXT),
        seq_len=48,
        batch_size=8,
        calib_batches=2,
        score_batches=5,
        eval_batches=4,
        report_batches=13,
    )
    data = build_datasets(cfg, 512, byte_tokenizer(512), 0)
    text = TEST_TXT.read_text(encoding="utf-8")
    return cfg, data, split_documents([text])


def test_the_report_set_spans_over_100_sections_across_the_articles(wikitext_sets):
    cfg, data, docs = wikitext_sets
    report = data.report
    assert report is not None and report.tokens.shape == (13, 8, 48)
    numbers = report.docs.ravel().tolist()
    assert len(set(numbers)) == len(numbers) == 104  # one window from each of 104 sections
    # each row is a window of the document it names
    for row, n in zip(report.tokens.reshape(-1, 48), numbers, strict=True):
        assert bytes(row.tolist()).decode("utf-8", "replace") in docs[n] or (
            bytes(row.tolist()) in docs[n].encode()
        )
    # spread over the file, not a contiguous run: titles are level-1 headings
    articles = np.cumsum(
        [d.lstrip().startswith("= ") and not d.lstrip().startswith("= =") for d in docs]
    )
    spanned = {int(articles[n]) for n in numbers}
    assert len(spanned) >= 40, len(spanned)  # of the file's ~62 articles


def test_no_set_that_chooses_shares_a_window_or_a_document_with_the_report(wikitext_sets):
    _, data, _ = wikitext_sets
    rows = {s.name: {r.tobytes() for r in s.tokens.reshape(-1, 48)} for s in data.all()}
    for name in ("calib", "score", "eval"):
        assert not rows["report"] & rows[name], name
    for a, b in (("calib", "score"), ("calib", "eval"), ("score", "eval")):
        assert not rows[a] & rows[b], (a, b)
    assert not set(data.report.docs.ravel()) & set(data.eval.docs.ravel())
    # the selection set is drawn across the file too: its 32 windows start in many documents
    assert len(set(data.eval.docs.ravel())) >= 24


def test_the_seed_draws_the_documents_and_the_same_seed_the_same_sets(wikitext_sets):
    cfg, data, _ = wikitext_sets
    again = build_datasets(cfg, 512, byte_tokenizer(512), 0)
    other = build_datasets(cfg, 512, byte_tokenizer(512), 1)
    assert again.hashes() == data.hashes()
    assert set(other.report.docs.ravel()) != set(data.report.docs.ravel())


def test_another_draw_changes_the_sets_that_choose_and_keeps_the_report(wikitext_sets):
    cfg, data, _ = wikitext_sets
    other = build_datasets(cfg.model_copy(update={"draw": 1}), 512, byte_tokenizer(512), 0)
    assert other.report.hash == data.report.hash
    for name in ("calib", "score", "eval"):
        assert other.hashes()[name] != data.hashes()[name], name
    rows = {r.tobytes() for s in (other.calib, other.score, other.eval) for r in s.tokens[0]}
    assert not rows & {r.tobytes() for r in data.report.tokens.reshape(-1, 48)}


def test_jsonl_records_are_documents(tmp_path):
    f = tmp_path / "r.jsonl"
    lines = [json.dumps({"text": chr(97 + i) * 40}) for i in range(12)]
    f.write_text("\n".join(lines))
    cfg = DataConfig(
        source=str(f),
        seq_len=16,
        batch_size=2,
        calib_batches=1,
        score_batches=1,
        eval_batches=1,
        report_batches=2,
    )
    data = build_datasets(cfg, 512, byte_tokenizer(512), 0)
    letters = {chr(int(r[0])) for r in data.report.tokens.reshape(-1, 16)}
    assert len(letters) == 4  # four records, one window each
    chosen = {chr(int(r[0])) for s in (data.calib, data.score, data.eval) for r in s.tokens[0]}
    assert not letters & chosen

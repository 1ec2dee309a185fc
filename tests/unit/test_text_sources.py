"""Text sources that cannot fill the sets are refused with one line naming the field and the fix:
a record without the text, too few windows for the sets a file feeds, ids beyond the model's
vocabulary. No model: files, the byte tokenizer and numpy."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.core.config import DataConfig, DataError
from orchestrator.model.data import build_datasets, byte_tokenizer, check_source
from orchestrator.model.datasets import _within_vocab

pytestmark = pytest.mark.unit


def test_a_parquet_file_without_the_text_column_names_its_columns(tmp_path):
    f = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"body": ["some text"], "id": [1]}), f)
    with pytest.raises(DataError) as e:
        check_source(str(f), "data.source")
    assert str(e.value) == (
        f"data.source='{f}': no 'text' column (data.text_field; its columns: body, id); "
        "set data.text_field to the column that holds the text"
    )
    check_source(str(f), "data.source", "body")  # the right field reads


def test_windows_are_counted_per_file_and_set(tmp_path):
    """With eval_source, each file answers for the sets it feeds, and says which and how many."""
    text, held_out = tmp_path / "text.txt", tmp_path / "held_out.txt"
    text.write_text("a" * 16 * 12)  # 12 windows of 16 bytes
    held_out.write_text("b" * 16 * 3)
    cfg = DataConfig(
        source=str(text),
        eval_source=str(held_out),
        seq_len=16,
        batch_size=2,
        calib_batches=1,
        score_batches=2,
        eval_batches=2,
        report_batches=0,
    )
    with pytest.raises(DataError) as e:
        build_datasets(cfg, 512, byte_tokenizer(512), 0)
    assert str(e.value).startswith(
        f"data.eval_source='{held_out}': 3 windows of 16 tokens, need 4 (selection 4); "
        "use more text, or fewer batches"
    )
    enough_held_out = cfg.model_copy(update={"score_batches": 6, "eval_batches": 1})
    with pytest.raises(DataError) as e:
        build_datasets(enough_held_out, 512, byte_tokenizer(512), 0)
    assert (
        f"data.source='{text}': 12 windows of 16 tokens, need 14 (calibration 2 + scoring 12)"
        in str(e.value)
    )


def test_ids_beyond_the_models_vocabulary_are_refused():
    tokenize = _within_vocab(byte_tokenizer(512), 100, "model.source='m'")
    assert tokenize("ab") == [97, 98]
    with pytest.raises(DataError, match="token id 122, beyond the model's vocab_size 100"):
        tokenize("z")

"""Each family swept end to end with the data it is accepted for, by `python -m orchestrator.sweep`
on CPU: the VL families on a mix of image+text chats (real photographs) and WikiText-2 windows, the
text families on WikiText-2, each read by the checkpoint's own tokenizer and processor. Qwen2.5-VL's
image+text sweeps are ``tests/e2e/test_objectives.py``'s."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import yaml

from tests.e2e.test_families import SMALLEST
from tests.e2e.test_sweep import sweep
from tests.integration.families import save_tiny

pytestmark = pytest.mark.e2e

TEXT = ["--set", "data.source=data/wikitext-2/test.txt", "--set", "data.eval_batches=2"]
IMAGES = [
    *("--set", "data.image_source=data/images", "--set", "data.image_fraction=0.5"),
    *("--set", "data.seq_len=160"),
]


@pytest.mark.parametrize(
    "model_type,rows",
    [("qwen2_vl", "image+text"), ("qwen3_vl", "image+text"), ("qwen2", "text"), ("qwen3", "text")],
)
def test_family_sweeps_the_data_it_is_accepted_for(model_type, rows, tmp_path):
    src = save_tiny(model_type, tmp_path / model_type, reads=True)
    out = tmp_path / "out"
    data = [*TEXT, *(IMAGES if rows == "image+text" else ())]
    # SMALLEST's synthetic data replaced by the family's own reading of real text (and images)
    args = [*SMALLEST, *data]
    proc = sweep(out, "--set", f"model.source={src}", *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = yaml.safe_load((out / "schemes.yaml").read_text())
    assert len({s["name"] for s in doc["schemes"]}) == 3
    trials = pq.read_table(out / "trials.parquet").to_pylist()
    done = [t for t in trials if t["status"] == "FINISHED"]
    assert len(done) == len(trials) > 0 and all(t["kl_mean"] > 0 for t in done)
    if rows == "image+text":  # the image answers were measured, apart from the text windows
        assert all(t["image_eval_tokens"] > 0 and t["text_eval_tokens"] > 0 for t in done)
    else:
        assert not any((t.get("image_eval_tokens") or 0) > 0 for t in done)

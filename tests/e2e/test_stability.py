"""scripts/stability.py end to end: two real sweeps on two draws of the text that chooses, the
same report set, the summary per name and the doc's table. The smallest sweeps that read text."""

from __future__ import annotations

import json

import pytest

from tests.e2e.test_families import SMALLEST
from tests.e2e.test_sweep import run_module

pytestmark = pytest.mark.e2e

TEXT = [
    *("--set", "model.source=tiny-qwen2.5-vl"),
    *("--set", "data.source=data/wikitext-2/test.txt"),
    *("--set", "data.eval_batches=2"),
]
DOC = """# doc
<!-- generated: stability (from nowhere) -->
old
<!-- end generated -->
prose
<!-- generated: schemes (from elsewhere) -->
kept as it is
<!-- end generated -->
"""


def test_two_draws_share_the_report_set_and_the_summary_lands_in_the_doc(tmp_path):
    doc = tmp_path / "SCHEMES.md"
    doc.write_text(DOC)
    out = tmp_path / "st"
    args = ["--output", str(out), "--runs", "2", "--doc", str(doc), *SMALLEST, *TEXT]
    proc = run_module("scripts.stability", *args, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    hashes = [json.loads((out / f"draw-{i}" / "sweep.json").read_text()) for i in (0, 1)]
    data = [h["data_hashes"] for h in hashes]
    assert data[0]["report"] == data[1]["report"]  # every KL on the same documents
    assert data[0]["calib"] != data[1]["calib"] and data[0]["score"] != data[1]["score"]
    summary = json.loads((out / "stability.json").read_text())
    assert summary["runs"] == 2 and summary["measured_on"] == "report"
    rows = {r["name"]: r for r in summary["names"]}
    assert set(rows) == {"fp8_autoquant_top25", "fp8_autoquant_top50", "fp8_autoquant_full"}
    for r in rows.values():
        assert 0.0 <= r["jaccard_min"] <= r["jaccard_mean"] <= 1.0
        assert r["kl_min"] <= r["kl_mean"] <= r["kl_max"] and len(r["fp8_fractions"]) == 2
    text = doc.read_text()
    assert "old" not in text and "| `fp8_autoquant_top25` |" in text
    assert "kept as it is" in text and "prose" in text
    # a second call reads the finished runs, runs nothing
    again = run_module("scripts.stability", *args, timeout=300)
    assert again.returncode == 0 and again.stdout.count("read, not run again") == 2

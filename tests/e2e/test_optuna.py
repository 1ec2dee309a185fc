"""The adaptive searcher: OptunaSearch on two objectives (bits and the image answers' KL), seeded
with the grid."""

from __future__ import annotations

import math
import re

import pyarrow.parquet as pq
import pytest
import yaml

from tests.e2e.test_sweep import sweep

pytestmark = pytest.mark.e2e


def test_optuna_searcher_runs_the_seed_grid_then_samples(tmp_path):
    out = tmp_path / "out"
    proc = sweep(
        out,
        "--set",
        "search.searcher=optuna",
        "--set",
        "search.num_samples=3",
        "--set",
        "scoring.methods=[kl_div]",
        "--set",
        "search.coverage=[0.5,1.0]",
        "--set",
        "search.effective_bits=[8,12,14]",
        "--set",
        "controls.enabled=false",
        "--set",
        "search.strategies=[solve,mlp_only]",  # 3 x 2 x 2 seeding points
        "--set",
        "selection.objective=image_kl_mean",  # what Optuna minimises beside the bits
        "--config",
        "search_spaces/demo_multimodal.yaml",  # image+text rows mixed with text
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = pq.read_table(out / "trials.parquet").to_pylist()
    seeds = int(re.search(r"12 grid point\(s\) -> (\d+) distinct plan", proc.stdout).group(1))
    assert len(rows) == seeds + 3  # the de-duplicated seeding grid, then 3 sampled points
    assert all(r["status"] == "FINISHED" and math.isfinite(r["kl_mean"]) for r in rows)
    assert all(math.isfinite(r["image_kl_mean"]) for r in rows)  # image rows went through
    assert yaml.safe_load((out / "schemes.yaml").read_text())["objective"] == "image_kl_mean"
    sampled = {round(r["effective_bits"], 6) for r in rows} - {8.0, 12.0, 14.0}
    assert sampled and all(8 <= b <= 14 for b in sampled)
    assert {r["strategy"] for r in rows} == {"solve", "mlp_only"}  # a dimension Optuna searches

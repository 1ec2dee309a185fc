"""The adaptive scoring budget in a real sweep (``core/budget.py``, ``search/pool.run_scoring``):
the reference preset scored one batch at a time on a real local Ray instance, stopped once two
batches in a row moved no grid plan (or at the maximum), and every output saying how many batches
it used and why."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.core.budget import MAXIMUM, STABLE
from orchestrator.core.config import read_written_config
from orchestrator.core.planning import plan_for
from orchestrator.core.points import grid_points
from orchestrator.core.records import table_key
from orchestrator.outputs.tables import read_score_tables
from tests.e2e.test_sweep import SMALL, sweep

pytestmark = pytest.mark.e2e

MAXIMUM_BATCHES = 5  # the demo's score set
RULE = [
    *("--set", "scoring.adaptive.chunk=1", "--set", "scoring.adaptive.patience=2"),
    *("--set", "scoring.adaptive.tolerance=0"),  # any plan change counts
    *("--set", "scoring.shards=1"),  # a chunk holds a batch per shard at least
]


def test_scoring_stops_when_the_plans_hold_and_says_so(tmp_path):
    out = tmp_path / "out"
    proc = sweep(
        out, *SMALL, *RULE, "--set", f"scoring.num_score_steps={MAXIMUM_BATCHES}", "--set",
        "search.effective_bits=[8,10,12,14]",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (table,) = read_score_tables(out).values()
    used, stop, changes = (table.meta[k] for k in ("score_batches_used", "stop", "plan_changes"))
    # one chunk per batch; the first sets all four grid plans
    assert len(changes) == used and changes[0] == 4
    assert 3 <= used <= MAXIMUM_BATCHES  # the rule cannot stop before patience + 1 chunks
    if stop == STABLE:
        assert changes[-2:] == [0, 0] and (used == 3 or changes[-3] > 0)
    else:
        assert stop == MAXIMUM and used == MAXIMUM_BATCHES and any(changes[-2:])
    assert table.meta["shard_batches"] == [[i] for i in range(used)]
    assert table.meta["budget"] == {"chunk": 1, "patience": 2, "tolerance": 0.0}
    regret = table.meta["plan_regret"]  # the worst change per chunk: how much worse the old plan
    assert len(regret) == used and regret[0] is None
    assert all((r > 0) == (c > 0) for r, c in zip(regret[1:], changes[1:], strict=True))
    # the plans the trials ran are the ones the stopping table gives
    cfg = read_written_config(out / "config.yaml")
    trials = pq.read_table(out / "trials.parquet").to_pylist()
    tables = {table_key(table.method, table.fp8_recipe): table}
    grid = {plan_for(p, tables).plan_hash for p in grid_points(cfg.search, tables)[0]}
    assert {t["plan_hash"] for t in trials} == grid
    # scores.parquet, schemes.yaml and the console say how many batches and why
    rows = pq.read_table(out / "scores.parquet").to_pylist()
    assert {(r["score_batches"], r["stop"]) for r in rows} == {(used, stop)}
    schemes = yaml.safe_load((out / "schemes.yaml").read_text())["schemes"]
    assert {(s["knobs"]["score_batches_used"], s["knobs"]["score_stop"]) for s in schemes} == {
        (used, stop)
    }
    assert "kl_div/FP8_DEFAULT_CFG: up to 5 score batches, 1 a chunk" in proc.stdout
    assert f"kl_div/FP8_DEFAULT_CFG scored: {used} of 5 batches" in proc.stdout or (
        f"kl_div/FP8_DEFAULT_CFG scored: all {used} batches" in proc.stdout
    )
    # and the sweep's MLflow parent run records it beside the scoring time
    doc = yaml.safe_load((out / "schemes.yaml").read_text())
    parent = MlflowClient(f"sqlite:///{out / 'mlflow.db'}").get_run(doc["parent_run_id"])
    assert parent.data.metrics["score_batches_used.kl_div.FP8_DEFAULT_CFG"] == used

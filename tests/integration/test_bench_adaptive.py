"""``scripts/bench_adaptive.py --smoke``: plan changes against score batches on the tiny preset,
and each rule replayed on them (the benchmark behind docs/benchmarks.md's adaptive-budget table)."""

from __future__ import annotations

import json

import pytest

from orchestrator.core.budget import BudgetRule
from tests.integration.test_scripts import run_script

pytestmark = pytest.mark.integration


def test_bench_adaptive_smoke_replays_each_rule_on_the_per_batch_plans(tmp_path):
    result = tmp_path / "adaptive.json"
    proc = run_script("scripts/bench_adaptive.py", "--smoke", "--out", str(result))
    doc = json.loads(result.read_text())
    assert doc["batches"] == 6 and set(doc["methods"]) == {"gradient", "kl_div"}
    for method, m in doc["methods"].items():
        points = m["grid_points"]
        assert points == 3 and len(m["changed_since_previous"]) == 6
        assert m["changed_since_previous"][0] == points  # the first batch sets every plan
        assert m["differ_from_full"][-1] == 0 and len(m["seconds_per_batch_call"]) == 6
        assert (
            m["worst_regret_on_full_scores"][-1] == 0
            and m["worst_regret_since_previous"][0] is None
        )
        assert all(r >= -1e-9 for r in m["worst_regret_on_full_scores"])  # the solve is exact
        for spec, r in m["rules"].items():
            chunk, patience = (int(x) for x in spec.partition("@")[0].split("x"))
            used, changes = r["batches_used"], r["plan_changes_per_chunk"]
            assert changes[0] == points and r["chunks"] == len(changes)
            if r["on"]:
                assert BudgetRule(6, chunk, patience).on
                assert used == min(6, chunk * len(changes))
            else:  # a rule that cannot stop early scores everything in one chunk
                assert used == 6 and len(changes) == 1
            if used < 6:  # stopped early: the last `patience` chunks moved no plan
                assert not any(changes[-patience:])
            assert (r["plans_differing_from_full"] == 0) == (r["worst_regret_on_full_scores"] == 0)
            calib = doc["num_calib_steps"]
            fpb = m["forwards_per_batch"]
            assert r["forwards_share"] == pytest.approx(
                (used * fpb + len(changes) * calib) / (6 * fpb + calib)
            )
        assert f"{method}: " in proc.stdout
    assert doc["methods"]["kl_div"]["forwards_per_batch"] == doc["methods"]["kl_div"]["groups"] + 1

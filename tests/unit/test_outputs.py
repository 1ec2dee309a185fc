from dataclasses import replace

import pytest

from orchestrator.outputs.tables import read_trials, write_trials

from .helpers import result

pytestmark = pytest.mark.unit


def test_trials_round_trip_with_per_sequence_sums_and_labels(tmp_path):
    seq = {"kl": (0.1, 0.2), "agree": (9.0, 8.0), "tokens": (10.0, 10.0)}
    rows = [
        replace(
            result("a", 14, 1e-3),
            strategy="ends_bf16:1",
            per_sequence=seq,
            numerics="bfloat16, vLLM fused scales",
        ),
        replace(result("b", 14, 2e-3), kind="control", strategy="", control="random:0"),
        result("f", 12, 0.0, status="FAILED"),
    ]
    write_trials(rows, tmp_path / "t.parquet")
    back = read_trials(tmp_path / "t.parquet")
    assert back == rows
    assert [r.label for r in back] == ["ends_bf16:1", "control random:0", "solve"]
    assert [r.numerics for r in back] == ["bfloat16, vLLM fused scales", "", ""]


def test_a_sweep_that_cannot_bind_a_name_is_advised_by_its_own_grid(tmp_path):
    """sweep and select hand finalize the config's grid: 14 bits shared its plan with 15 (measured
    once, as 15), so 14 is in the grid and the message must not ask for it."""
    from orchestrator.core.config import load_catalog, load_config
    from orchestrator.outputs.publish import SweepFacts, finalize

    cfg = load_config(None, ["search.effective_bits=[8, 12, 14, 15]", "search.coverage=[1.0]"])
    rows = [result("e", 8, 0.2), result("c", 12, 0.004), result("a", 15, 0.001, frac=0.31)]
    done = finalize(
        tmp_path, rows, {}, load_catalog(), None, {"sweep": "t"}, SweepFacts.of(cfg, {})
    )
    assert done.selection is None and done.error is not None
    assert "no plan lands in the band (nearest: 31.0% FP8)" in done.error
    assert "add effective_bits" not in done.error

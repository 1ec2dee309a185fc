from dataclasses import replace

import pytest

from orchestrator.outputs.tables import read_trials, write_trials

from .helpers import result

pytestmark = pytest.mark.unit


def test_trials_round_trip_with_per_sequence_sums_and_labels(tmp_path):
    seq = {"kl": (0.1, 0.2), "agree": (9.0, 8.0), "tokens": (10.0, 10.0)}
    rows = [
        replace(result("a", 14, 1e-3), strategy="ends_bf16:1", per_sequence=seq),
        replace(result("b", 14, 2e-3), kind="control", strategy="", control="random:0"),
        result("f", 12, 0.0, status="FAILED"),
    ]
    write_trials(rows, tmp_path / "t.parquet")
    back = read_trials(tmp_path / "t.parquet")
    assert back == rows
    assert [r.label for r in back] == ["ends_bf16:1", "control random:0", "solve"]

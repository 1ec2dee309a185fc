"""Which MLflow store a sweep writes to: never the original's from a copied or moved folder."""

from __future__ import annotations

import pytest

from orchestrator.checks import tracking_uri
from orchestrator.tracking.uri import default_tracking_uri, folder_uri, recorded_uri

pytestmark = pytest.mark.unit


def test_a_resumed_folder_uses_its_own_store_unless_the_user_gave_one(tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://elsewhere:5000")
    own = {"name": "s"}  # a record without a URI: the sweep ran on its folder's own store
    assert tracking_uri(None, own, copy) == default_tracking_uri(copy)
    server = {"name": "s", "tracking_uri": "http://mlflow:5000"}
    assert tracking_uri(None, server, copy) == "http://mlflow:5000"
    monkeypatch.chdir(tmp_path)
    given = tracking_uri("sqlite:///x.db", own, copy)  # --tracking-uri always wins
    assert given == f"sqlite:///{tmp_path.resolve() / 'x.db'}"
    assert tracking_uri(None, None, copy) == "http://elsewhere:5000"  # a new sweep: MLflow's own
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri(None, None, copy) == default_tracking_uri(copy)


def test_an_older_record_spelling_out_its_own_store_is_read_as_the_folders_own(tmp_path):
    original, copy = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    older = {  # what sweep.json held before the store was derived from --output
        "tracking_uri": f"sqlite:///{original / 'mlflow.db'}",
        "ray_storage_path": str(original / "ray_results"),
    }
    assert recorded_uri(older) is None
    assert folder_uri(older, copy) == default_tracking_uri(copy)
    shared = {**older, "tracking_uri": f"sqlite:///{tmp_path / 'team.db'}"}
    assert folder_uri(shared, copy) == f"sqlite:///{tmp_path / 'team.db'}"

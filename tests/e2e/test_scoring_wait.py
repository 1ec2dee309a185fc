"""Scoring can run for minutes; a write the storage refuses meanwhile (a full disk, found by the
driver's heartbeat) stops the driver's wait for the scores within seconds, not when scoring ends.
A real local Ray on the loopback alias, a real remote task that would take a minute."""

from __future__ import annotations

import threading
import time

import pytest

from orchestrator.outputs import storage
from tests.conftest import HEAD_IP

pytestmark = pytest.mark.e2e


def test_a_refused_write_stops_the_wait_for_scores_within_seconds(tmp_path, monkeypatch):
    import ray

    from orchestrator.search.pool import _watching_storage

    monkeypatch.setattr(storage, "_first", None)  # no failure from an earlier test
    ray.init(_node_ip_address=HEAD_IP, num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        slow = ray.remote(lambda: time.sleep(60) or 1)
        ref = slow.remote()
        full = storage.failure(tmp_path / "score_cache" / "x.json", "No space left on device")
        threading.Timer(1.0, storage.report, [full]).start()  # as the heartbeat thread does
        t0 = time.monotonic()
        with pytest.raises(storage.WriteFailed) as raised:
            _watching_storage([ref], every_s=0.5)
        assert raised.value is full
        assert time.monotonic() - t0 < 10  # the task still had about a minute to go
    finally:
        ray.shutdown()

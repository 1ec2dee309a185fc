"""Writes the storage refuses for good, on a real full file system (a tmpfs mounted for the test):
one error naming the file and the space left, no temporary file behind, the owner released."""

from __future__ import annotations

import errno
import json
import pickle
import sqlite3
import time

import pytest

from orchestrator.outputs import ownership, storage
from orchestrator.outputs.files import write_text
from orchestrator.outputs.ownership import OWNER_DIR, acquire
from orchestrator.outputs.storage import WriteFailed
from tests.conftest import fill, tmpfs

pytestmark = pytest.mark.unit


@pytest.fixture
def full(tmp_path, monkeypatch):
    """A 1 MiB tmpfs holding a written file, then filled to the last byte."""
    monkeypatch.setattr(storage, "_first", None)  # the process-wide record of a failure
    with tmpfs(tmp_path / "disk", "1m") as disk:
        write_text(disk / "schemes.yaml", "old\n")
        fill(disk)
        yield disk


def _leftovers(folder):
    return sorted(
        p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or p.stat().st_size == 0
    )


def test_a_write_to_a_full_disk_is_one_error_naming_the_file_and_the_space_left(full):
    with pytest.raises(WriteFailed) as e:
        write_text(full / "schemes.yaml", "new\n" * 1000)
    line = str(e.value)
    assert line.startswith(f"cannot write {full / 'schemes.yaml'}: No space left on device (")
    assert f"free on {full})" in line and "run the same command again" in line
    assert "\n" not in line
    assert (full / "schemes.yaml").read_text() == "old\n"  # the old file is whole
    assert _leftovers(full) == []


def test_the_error_survives_a_trip_to_another_process_and_is_found_behind_wrappers(tmp_path):
    found = storage.failure(tmp_path / "trials.parquet", "No space left on device")
    again = pickle.loads(pickle.dumps(found))  # Ray carries a trial's error this way
    assert str(again) == str(found) and again.what == str(tmp_path / "trials.parquet")
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))
        except OSError as inner:
            raise RuntimeError("Tune could not save the experiment state") from inner
    except RuntimeError as outer:
        assert storage.find(outer, tmp_path).what == str(tmp_path / "x")
        assert storage.refused_for_good(outer)
    sqlite = sqlite3.OperationalError("database or disk is full")  # as MLflow's store raises it
    assert storage.find(sqlite, tmp_path / "mlflow.db").reason == "database or disk is full"
    for other in (OSError(errno.ECONNREFUSED, "Connection refused"), ValueError("bad")):
        assert storage.find(other, tmp_path) is None and not storage.refused_for_good(other)


def test_the_owner_on_a_full_disk_reports_it_and_is_still_released(full):
    # taken while there was room, then the disk fills: the heartbeat reports, release still works
    (full / "filler").unlink()
    owned = acquire(full / "out", heartbeat_seconds=0.05)
    fill(full)
    deadline = time.monotonic() + 5
    while storage.reported() is None:
        assert time.monotonic() < deadline, "the heartbeat did not report the full disk"
        time.sleep(0.05)
    assert str(full / "out" / OWNER_DIR) in storage.reported().what
    owned.release()
    (record,) = (full / "out" / OWNER_DIR).glob("*.json")
    assert json.loads(record.read_text())["released"] is True
    assert ownership.live_owner(full / "out") is None
    assert _leftovers(full / "out") == []


def test_taking_a_folder_on_a_full_disk_is_a_write_failure_and_leaves_nothing(full):
    with pytest.raises(WriteFailed, match="No space left on device"):
        acquire(full / "out")
    assert _leftovers(full) == []  # the owner's temporary record went with the failure

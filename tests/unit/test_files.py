"""The one atomic writer: readers see the old file or the new one, and no temporary file stays."""

from __future__ import annotations

import threading

import pytest

from orchestrator.outputs.files import atomic_path, write_bytes, write_text

pytestmark = pytest.mark.unit


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "schemes.yaml"
    write_text(path, "old\n")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half of the new fi")
        raise RuntimeError("the writer died")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["schemes.yaml"]


def test_a_write_replaces_the_file_and_makes_its_folder(tmp_path):
    path = tmp_path / "plans" / "abc.json"
    write_bytes(path, b"1")
    write_text(path, "2\n")
    assert path.read_text() == "2\n"
    assert [p.name for p in path.parent.iterdir()] == ["abc.json"]


def test_concurrent_writers_of_one_file_never_share_a_temporary(tmp_path):
    """Every thread holds its temporary open at once; each rename lands one writer's whole text."""
    path = tmp_path / "trials.parquet"
    writers = 8
    together = threading.Barrier(writers)
    temps: list[str] = []

    def write(i: int) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(f"writer {i}\n" * 1000)
            temps.append(tmp.name)
            together.wait(timeout=10)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(temps)) == writers
    assert all(t.startswith(".trials.parquet.") and t.endswith(".tmp") for t in temps)
    text = path.read_text()
    assert text in {f"writer {i}\n" * 1000 for i in range(writers)}
    assert [p.name for p in tmp_path.iterdir()] == ["trials.parquet"]

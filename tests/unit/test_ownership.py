"""The owner record of an output folder: refuse a live owner, take over a dead one, one winner.

Records from another host are faked (no second host needed): the protocol only reads them."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from orchestrator.outputs import ownership
from orchestrator.outputs.ownership import (
    OWNER_DIR,
    STALE_AFTER_SECONDS,
    OutputInUse,
    Owner,
    acquire,
)

pytestmark = pytest.mark.unit


def _records(out: Path) -> dict[int, dict]:
    return {int(p.stem): json.loads(p.read_text()) for p in (out / OWNER_DIR).glob("*.json")}


def _fake(out: Path, generation: int, **fields) -> Owner:
    """A record as another driver would have left it."""
    now = time.time()
    record = Owner(
        host="other-host",
        boot_id="boot-of-other-host",
        pid_ns="pid:[1]",
        pid=17917,
        pid_start=42,
        started=now - 3600,
        heartbeat=now,
        token=f"fake{generation}",
    )
    record = replace(record, **fields)
    (out / OWNER_DIR).mkdir(parents=True, exist_ok=True)
    (out / OWNER_DIR / f"{generation:08d}.json").write_text(json.dumps(asdict(record)))
    return record


def _here(**fields) -> dict:
    """Fields that place a faked record on this machine."""
    me = ownership._this_process()
    return {"host": me.host, "boot_id": me.boot_id, "pid_ns": me.pid_ns, **fields}


def test_a_fresh_folder_is_taken_and_released(tmp_path):
    out = tmp_path / "out"
    with acquire(out) as held:
        (record,) = _records(out).values()
        assert record["pid"] == os.getpid() and not record["released"]
        assert ownership.live_owner(out) == held.record
    (record,) = _records(out).values()
    assert record["released"] and ownership.live_owner(out) is None
    with acquire(out):  # a released folder is taken again, as the next generation
        assert sorted(_records(out)) == [2]


def test_a_live_owner_on_another_host_is_refused_and_nothing_is_written(tmp_path):
    out = tmp_path / "out"
    _fake(out, 3)
    before = sorted(p.name for p in (out / OWNER_DIR).iterdir())
    with pytest.raises(OutputInUse) as e:
        acquire(out)
    assert str(e.value).startswith(f"--output {out} is in use by the sweep started ")
    assert "on host other-host, pid 17917; wait for it, stop it, or use another --output" in str(
        e.value
    )
    assert sorted(p.name for p in (out / OWNER_DIR).iterdir()) == before
    with pytest.raises(OutputInUse):
        ownership.check_free(out)


def test_a_stale_heartbeat_from_another_host_is_taken_over(tmp_path, caplog):
    out = tmp_path / "out"
    _fake(out, 3, heartbeat=time.time() - STALE_AFTER_SECONDS - 5)
    with caplog.at_level(logging.WARNING, "orchestrator.outputs.ownership"), acquire(out):
        assert sorted(_records(out)) == [4]  # the owner removes older generations
        assert _records(out)[4]["pid"] == os.getpid()
    (line,) = [r.getMessage() for r in caplog.records if "took over" in r.getMessage()]
    assert "on host other-host, pid 17917: no heartbeat for" in line


def test_a_heartbeat_just_inside_the_timeout_is_still_alive(tmp_path):
    out = tmp_path / "out"
    _fake(out, 1, heartbeat=time.time() - STALE_AFTER_SECONDS + 5)
    with pytest.raises(OutputInUse):
        acquire(out)


def test_a_dead_pid_on_this_host_is_taken_over_at_once(tmp_path, caplog):
    out = tmp_path / "out"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _fake(out, 1, **_here(pid=gone.pid))  # heartbeat fresh: the pid alone decides
    with caplog.at_level(logging.WARNING, "orchestrator.outputs.ownership"), acquire(out):
        pass
    (line,) = [r.getMessage() for r in caplog.records if "took over" in r.getMessage()]
    assert f"pid {gone.pid} is gone" in line


def test_a_reused_pid_is_told_apart_by_its_start_time(tmp_path, caplog):
    out = tmp_path / "out"
    _, start = ownership.process_stat()
    _fake(out, 1, **_here(pid=os.getpid(), pid_start=start - 1))
    with caplog.at_level(logging.WARNING, "orchestrator.outputs.ownership"), acquire(out):
        pass
    assert any("now belongs to another process" in r.getMessage() for r in caplog.records)
    _fake(out, 5, **_here(pid=os.getppid(), pid_start=ownership.process_stat(os.getppid())[1]))
    with pytest.raises(OutputInUse):  # the same pid and start: alive, however old its heartbeat
        acquire(out)


def _race(out: str, barrier, results) -> None:
    barrier.wait()
    try:
        held = acquire(Path(out))
    except OutputInUse:
        results.put("refused")
        barrier.wait()
        return
    results.put("won")
    barrier.wait()  # hold until every racer has decided: a dead winner may rightly be taken over
    held.release()


@pytest.mark.parametrize("stale", [False, True])
def test_of_racing_acquirers_exactly_one_wins(tmp_path, stale):
    out = tmp_path / "out"
    if stale:
        _fake(out, 7, heartbeat=time.time() - STALE_AFTER_SECONDS - 5)
    ctx = mp.get_context("fork")
    n = 6
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(out), barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = sorted(results.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert outcomes == ["refused"] * (n - 1) + ["won"]
    records = _records(out)
    assert len(records) == 1 and next(iter(records.values()))["released"]
    assert not list((out / OWNER_DIR).glob(".*"))  # no temporary file left behind


def test_the_heartbeat_is_refreshed_and_a_takeover_stops_the_old_owner(tmp_path):
    out = tmp_path / "out"
    lost = []
    held = acquire(out, heartbeat_seconds=0.05, on_lost=lost.append)
    first = held.record.heartbeat
    deadline = time.monotonic() + 10
    while _records(out)[1]["heartbeat"] == first:
        assert time.monotonic() < deadline, "no heartbeat written"
        time.sleep(0.02)
    newer = _fake(out, 2)  # it was judged dead while it was only slow
    while not lost:
        assert time.monotonic() < deadline, "the takeover went unnoticed"
        time.sleep(0.02)
    assert lost == [newer] and held.lost
    held.release()
    assert not _records(out)[2]["released"]  # the old owner leaves the new one's record alone


def test_sigterm_releases_the_folder(tmp_path):
    out = tmp_path / "out"
    code = (
        "import sys, time; from pathlib import Path\n"
        "from orchestrator.outputs.ownership import acquire\n"
        "with acquire(Path(sys.argv[1])):\n"
        "    print('held', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    (record,) = _records(out).values()
    assert record["pid"] == proc.pid and record["released"]


def test_export_reads_a_running_sweeps_folder_says_so_and_writes_nothing_there(tmp_path, capsys):
    from orchestrator.export import __main__ as export_cli

    out = tmp_path / "out"
    handlers, level = logging.root.handlers[:], logging.root.level  # export sets up logging
    with acquire(out):  # this process stands in for the running sweep
        before = sorted(p.relative_to(out) for p in out.rglob("*"))
        try:
            code = export_cli.main(["--output", str(out), "--scheme", "x", "--dest", str(tmp_path)])
        finally:
            logging.root.handlers, logging.root.level = handlers, level
        assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    captured = capsys.readouterr()
    assert f"--output {out} is in use by the sweep started " in captured.out
    assert "exporting the schemes.yaml it holds now" in captured.out
    assert code == 2 and "no schemes.yaml" in captured.err  # this folder never got that far

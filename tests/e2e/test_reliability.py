"""Faults and restarts on the tiny preset with a real local Ray instance and real MLflow stores.
Each test is one small sweep; docs/reliability.md lists what each one proves."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.outputs.ownership import OWNER_DIR
from tests.conftest import ROOT
from tests.e2e.test_sweep import SMALL as SMALL_SWEEP
from tests.e2e.test_sweep import run_module, start_sweep, sweep
from tests.faults import HELD_PID, fault_env

pytestmark = pytest.mark.e2e

SMALL = [*SMALL_SWEEP, "--set", "search.max_failures=1"]


def _children(out: Path, status: str | None = None):
    if not (out / "mlflow.db").exists():  # never create the store (or the folder) from here
        return []
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("demo-tiny")
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], "tags.kind = 'trial'", max_results=1000)
    return [r for r in runs if status is None or r.info.status == status]


def test_raising_nan_and_killed_trials_fail_cleanly_and_the_sweep_goes_on(tmp_path):
    out, markers = tmp_path / "out", tmp_path / "faults"
    faults = fault_env(
        markers,
        raise_on_bits=[15],
        nan_on_bits=[13],
        kill_on_bits=[10],
        kill_once_on_bits=[12],
        kill_worker_once_on_bits=[11],  # the GPU worker process dies mid-evaluation
    )
    proc = sweep(out, *SMALL, "--set", "search.effective_bits=[8,10,11,12,13,14,15]", env=faults)
    # published without the three failed plans, and says so: exit 4, one line naming them
    assert proc.returncode == 4, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = pq.read_table(out / "trials.parquet").to_pylist()
    by_bits = {t["effective_bits"]: t for t in trials}
    # the worker died under bits=11 once (Ray restarted it) and the dispatcher ran it again
    assert (markers / f"{by_bits[11]['plan_hash']}.worker_killed").exists()
    assert not list(markers.glob("*.kill_worker"))  # the worker took the request
    assert by_bits[11]["status"] == "FINISHED"
    # whichever worker held it (two may serve the tiny preset) is named, with the point
    lost = [line for line in proc.stdout.splitlines() if "was lost" in line]
    assert any(re.search(r"worker \d+ was lost while measuring kl_div-b11-c1", x) for x in lost), (
        lost or proc.stdout[-3000:]
    )
    assert by_bits[15]["status"] == "FAILED" and "injected fault" in by_bits[15]["error"]
    assert by_bits[13]["status"] == "FAILED" and "non-finite" in by_bits[13]["error"]
    assert by_bits[10]["status"] == "FAILED" and by_bits[10]["error"]
    assert by_bits[12]["status"] == "FINISHED"  # died once, finished on its retry
    assert {b for b, t in by_bits.items() if t["status"] == "FINISHED"} == {8, 11, 12, 14}
    runs = _children(out)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert len({r.data.tags["plan_hash"] for r in runs}) == len(runs) == len(trials)
    failed = {r.data.tags["plan_hash"]: r for r in runs if r.info.status == "FAILED"}
    assert {by_bits[b]["plan_hash"] for b in (10, 13, 15)} == set(failed)
    assert "injected fault" in failed[by_bits[15]["plan_hash"]].data.tags["error"]
    schemes = yaml.safe_load((out / "schemes.yaml").read_text())["schemes"]
    failed_hashes = {by_bits[b]["plan_hash"] for b in (10, 13, 15)}
    assert not failed_hashes & {s["plan_hash"] for s in schemes}
    assert "3 failed" in proc.stdout
    # a failure's cause is on the console, not only in logs/ (which hold Tune's tracebacks)
    assert "injected fault at effective_bits=15" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert line.startswith("error: the schemes were chosen without 3 trial(s) that failed: ")
    for b in (10, 13, 15):
        assert f"b={b} c=1 kl_div solve (plan {by_bits[b]['plan_hash'][:8]})" in line
    doc = yaml.safe_load((out / "schemes.yaml").read_text())
    assert {m["plan_hash"] for m in doc["missing_plans"]} == failed_hashes
    select = run_module("orchestrator.select", "--output", str(out))  # it says so, too
    assert select.returncode == 4, select.stdout[-3000:] + select.stderr[-3000:]
    assert "error: the schemes were chosen without 3 trial(s) that failed: " in select.stderr
    assert "run the sweep's command on this --output again" in select.stderr


def _strip_run_ids(text: str) -> dict:
    """schemes.yaml without what differs between two runs of one config: the MLflow run ids
    (the parent's, each scheme's and the knee's)."""
    doc = yaml.safe_load(text)
    doc.pop("parent_run_id")
    for s in [*doc["schemes"], doc.get("knee") or {}]:
        s.pop("mlflow_run_id", None)
    return doc


# one worker, eight plans: the driver-kill, worker-kill and signal tests, and their one
# undisturbed run to compare with; two score steps halve the scoring each fresh folder pays
GRID = [
    *SMALL,
    "--set",
    "search.effective_bits=[8,9,10,11,12,13,14,15]",
    "--set",
    "search.max_concurrent=1",
    "--set",
    "scoring.num_score_steps=2",
]


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("undisturbed") / "out"
    proc = sweep(out, *GRID)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_driver_killed_mid_sweep_resumes_to_the_same_result(tmp_path, undisturbed):
    grid = GRID
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.sweep", "--output", str(out), *grid],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        # count reported trials on disk: reading the MLflow store here could race its creation
        while len(list(out.glob("ray_results/tune/*/checkpoint_*"))) < 3:
            assert driver.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.5)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    before = {r.info.run_id: r.info.end_time for r in _children(out, "FINISHED")}
    proc = sweep(out, *grid)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # its owner record was left behind; the pid is gone, so the rerun took over at once
    assert f"took over --output {out} from the sweep started " in proc.stdout
    assert f"pid {driver.pid}: pid {driver.pid} is gone" in proc.stdout
    after = _children(out)
    assert all(r.info.status == "FINISHED" for r in after)
    assert len({r.data.tags["plan_hash"] for r in after}) == len(after)  # no duplicate runs
    ends = {r.info.run_id: r.info.end_time for r in after}
    assert all(ends[k] == v for k, v in before.items())  # finished trials were not run again
    assert _strip_run_ids((out / "schemes.yaml").read_text()) == _strip_run_ids(
        (undisturbed / "schemes.yaml").read_text()
    )


class Driver:
    """A sweep in the background, in its own process group, its lines read as they come."""

    def __init__(self, out: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.sweep", "--output", str(out), *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        self.lines.extend(self.proc.stdout)

    def alive(self, deadline: float) -> None:
        if self.proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise AssertionError("".join(self.lines)[-3000:])

    def wait_for(self, pattern: str, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while True:
            hit = [ln for ln in self.lines if re.search(pattern, ln)]
            if hit:
                return hit[0]
            self.alive(deadline)
            time.sleep(0.2)

    def finish(self, timeout: float = 600) -> str:
        """Its exit status and everything it printed."""
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.reader.join(timeout=30)
        return "".join(self.lines)


def _modules(out: Path) -> dict[str, tuple[str, list[str], float]]:
    """Each scheme's plan, modules and KL."""
    doc = yaml.safe_load((out / "schemes.yaml").read_text())
    return {
        s["name"]: (
            s["plan_hash"],
            json.loads((out / s["modules"]).read_text())["fp8_modules"],
            s["metrics"]["kl_mean"],
        )
        for s in doc["schemes"]
    }


def test_a_worker_killed_mid_round_costs_no_trial_and_changes_no_scheme(tmp_path, undisturbed):
    """SIGKILL of the (only) worker while it measures a plan: Ray restarts it, the dispatcher
    runs the plan again on it, and Tune never sees the loss (``max_failures=0``: any failure
    Tune saw would be final)."""
    out, markers = tmp_path / "out", tmp_path / "faults"
    faults = fault_env(markers, hold_worker_once_on_bits=[12])
    driver = Driver(out, *GRID, "--set", "search.max_failures=0", env=faults)
    held = markers / HELD_PID
    deadline = time.monotonic() + 300
    while not held.exists():
        driver.alive(deadline)
        time.sleep(0.2)
    pid = int(held.read_text())
    os.kill(pid, signal.SIGKILL)
    log = driver.finish()
    assert driver.proc.returncode == 0, log[-3000:]
    assert not Path(f"/proc/{pid}").exists()  # the worker process itself died
    assert "worker 0 was lost while measuring kl_div-b12-c1" in log
    assert re.search(r"worker 0 is back after \d+s", log)
    trials = pq.read_table(out / "trials.parquet").to_pylist()
    assert len(trials) == 8 and {t["status"] for t in trials} == {"FINISHED"}
    runs = _children(out)
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
    assert "8 trial(s) finished, 0 failed" in log
    assert not [ln for ln in log.splitlines() if ln.startswith("error: ")]
    assert _modules(out) == _modules(undisturbed)


def _released(out: Path) -> bool:
    records = sorted((out / OWNER_DIR).glob("*.json"))
    return bool(records) and json.loads(records[-1].read_text())["released"]


def test_sigterm_and_sigint_stop_cleanly_and_the_rerun_resumes(tmp_path, undisturbed):
    """SIGTERM (a job runner's stop) exits 143 and SIGINT (Ctrl+C) 130, each with Ray shut down
    and the folder released, once Tune has saved every finished trial: the rerun counts them as
    done, runs only the rest, and ends where an undisturbed sweep does."""
    out = tmp_path / "out"
    first = Driver(out, *GRID)
    first.wait_for(r"(^|\s)2/8 ")  # the trial line: "HH:MM:SS 2/8 <point>: FP8 ..."
    first.proc.send_signal(signal.SIGTERM)
    log = first.finish(timeout=120)
    assert first.proc.returncode == 143, log[-3000:]
    assert "stopped by SIGTERM; finished trials are kept" in log
    assert "Traceback" not in log and _released(out)
    finished = {r.info.run_id: r.info.end_time for r in _children(out, "FINISHED")}
    assert len(finished) >= 2

    second = Driver(out, *GRID)
    head = second.wait_for(r"trial\(s\) already done")
    done = int(re.search(r"(\d+) of 8 trial\(s\) already done", head)[1])
    assert done >= 2  # every trial reported before SIGTERM, none run again
    second.wait_for(rf"(^|\s){done + 1}/8 ")  # the count goes on from there
    os.killpg(second.proc.pid, signal.SIGINT)  # Ctrl+C: the terminal's whole process group
    log = second.finish(timeout=120)
    assert second.proc.returncode == 130, log[-3000:]
    assert "stopped by SIGINT" in log and "Traceback" not in log and _released(out)

    proc = sweep(out, *GRID)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = {r.info.run_id: r.info.end_time for r in _children(out)}
    assert len(runs) == 8 and all(runs[k] == v for k, v in finished.items())
    assert _strip_run_ids((out / "schemes.yaml").read_text()) == _strip_run_ids(
        (undisturbed / "schemes.yaml").read_text()
    )


def _owner_records(out: Path) -> list[tuple[str, int, str, bool]]:
    """(generation, pid, token, released) of each record; the heartbeat is left out: it ticks."""
    docs = [(p.stem, json.loads(p.read_text())) for p in (out / OWNER_DIR).glob("*.json")]
    return sorted((g, d["pid"], d["token"], d["released"]) for g, d in docs)


def test_a_second_driver_on_a_running_sweep_is_refused_and_changes_nothing(tmp_path):
    grid = [*SMALL, "--set", "search.effective_bits=[8,12,14]", "--set", "search.max_concurrent=1"]
    out = tmp_path / "out"
    first = start_sweep(out, *grid)  # returns once a trial has reported: sweep.json exists
    # frozen (not killed) while the others look: it is alive for certain, and writes nothing
    os.kill(first.pid, signal.SIGSTOP)
    try:
        files = {f: (out / f).read_bytes() for f in ("sweep.json", "config.yaml")}
        owners = _owner_records(out)
        second = sweep(out, *grid)
        select = run_module("orchestrator.select", "--output", str(out))
        assert {f: (out / f).read_bytes() for f in files} == files
        assert _owner_records(out) == owners == [("00000001", first.pid, owners[0][2], False)]
    finally:
        os.kill(first.pid, signal.SIGCONT)
        log, _ = first.communicate(timeout=600)
    assert second.returncode == 2, second.stdout[-3000:] + second.stderr[-3000:]
    (line,) = second.stderr.splitlines()
    assert line.startswith(f"error: --output {out} is in use by the sweep started ")
    assert line.endswith(f"pid {first.pid}; wait for it, stop it, or use another --output")
    assert "Ray" not in second.stdout and "resuming" not in second.stdout
    assert select.returncode == 2 and f"pid {first.pid}; run select when" in select.stderr
    assert first.returncode == 0, log[-3000:]
    trials = pq.read_table(out / "trials.parquet").to_pylist()
    assert len(list((out / "ray_results" / "tune").glob("trainable_*"))) == len(trials) == 3
    runs = _children(out)
    assert len({r.data.tags["plan_hash"] for r in runs}) == len(runs) == len(trials)
    assert [o[1:] for o in _owner_records(out)] == [(first.pid, owners[0][2], True)]


def _write_one_trial(uri: str, exp_id: str, parent: str, i: int, start) -> str:
    from orchestrator.tracking import client

    start.wait()
    target = client.TrackingTarget(uri, exp_id, parent)
    run_id, _ = client.start_child(target, f"p{i}", f"t{i}", {"i": i}, {"kind": "trial"})
    client.finish_child(
        target, run_id, {"kl_mean": i / 10, "top1_agreement": 1.0}, {"plan.json": {"i": i}}
    )
    return run_id


def test_eight_trials_write_to_one_sqlite_store_at_once(tmp_path):
    from orchestrator.tracking import client, uri

    uri = uri.default_tracking_uri(tmp_path)
    exp = client.ensure_experiment(uri, "concurrency", tmp_path / "art", "concurrency test")
    parent = client.start_parent(uri, exp, "p", {}, {"kind": "sweep"})
    ctx = mp.get_context("spawn")
    with ctx.Manager() as m:
        start = m.Event()
        with ctx.Pool(8) as pool:
            jobs = [
                pool.apply_async(_write_one_trial, (uri, exp, parent, i, start)) for i in range(8)
            ]
            time.sleep(2.0)
            start.set()
            ids = [j.get(timeout=180) for j in jobs]
    runs = client.children(client.TrackingTarget(uri, exp, parent))
    assert sorted(r.info.run_id for r in runs) == sorted(ids)
    assert all(r.info.status == "FINISHED" for r in runs)
    assert sorted(r.data.metrics["kl_mean"] for r in runs) == [i / 10 for i in range(8)]


def test_a_child_run_of_an_older_store_is_found_by_its_plan_hash_tag(tmp_path):
    """Stores written before ``point_key`` went tagged each child with both; a resume finds it."""
    from orchestrator.tracking import client
    from orchestrator.tracking.uri import default_tracking_uri

    uri = default_tracking_uri(tmp_path)
    exp = client.ensure_experiment(uri, "older", tmp_path / "art", "older store")
    parent = client.start_parent(uri, exp, "p", {}, {"kind": "sweep"})
    target = client.TrackingTarget(uri, exp, parent)
    old_tags = {"mlflow.parentRunId": parent, "point_key": "h1", "plan_hash": "h1", "kind": "trial"}
    old = MlflowClient(uri).create_run(exp, run_name="old", tags=old_tags).info.run_id
    client.finish_child(target, old, {"kl_mean": 0.5}, {})
    assert client.start_child(target, "h1", "new", {}, {}) == (old, {"kl_mean": 0.5})
    new, stored = client.start_child(target, "h2", "new", {}, {"kind": "trial"})
    assert stored is None and new != old
    assert MlflowClient(uri).get_run(new).data.tags[client.PLAN_TAG] == "h2"

"""A sweep's folder and the storage under it: a copy writes only to itself, a full disk stops the
sweep with exit 5 and the rerun finishes it as if nothing happened, a damaged file is refused or
rebuilt. One finished sweep (the baseline) serves every test; the disk-full sweep runs on a real
tmpfs (CI runs as root; elsewhere it skips, saying why)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.outputs.ownership import OWNER_DIR
from orchestrator.outputs.storage import WriteFailed
from orchestrator.tracking.uri import ARTIFACTS, default_tracking_uri
from tests.conftest import ROOT, fill, resize, tmpfs
from tests.e2e.test_reliability import _strip_run_ids
from tests.e2e.test_sweep import SMALL, run_module, sweep
from tests.faults import fault_env

pytestmark = pytest.mark.e2e

# three points, one per catalog name, one trial at a time; scoring as short as it can be
GRID = [
    *SMALL,
    "--set",
    "search.effective_bits=[8,12,14]",
    "--set",
    "search.max_concurrent=1",
    "--set",
    "scoring.num_score_steps=1",
    "--set",
    "scoring.num_calib_steps=1",
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("storage") / "baseline"
    proc = sweep(out, *GRID)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by its sha256: what "left untouched" means."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _schemes(out: Path) -> dict:
    """schemes.yaml without what differs between two runs of one config (the MLflow run ids)."""
    return _strip_run_ids((out / "schemes.yaml").read_text())


# what a trial measured, apart from when, where and how fast
MEASURED = ("plan_hash", "status", "achieved_bits", "kl_mean", "kl_ci_low", "kl_ci_high", "nll")


def _trials(out: Path) -> list[dict]:
    rows = pq.read_table(out / "trials.parquet").to_pylist()
    keep = [{k: v for k, v in r.items() if k in MEASURED or k.startswith("seq_")} for r in rows]
    return sorted(keep, key=lambda r: r["plan_hash"])


def _log_into_copy(copy: Path, experiment: str, parent: str) -> subprocess.CompletedProcess:
    """What a resumed sweep does first, in a new process as it is (MLflow caches each run's
    artifact location per process): follow the folder, then log a parent output."""
    code = f"""
from pathlib import Path
from orchestrator.tracking import client
from orchestrator.tracking.uri import default_tracking_uri, follow_folder
copy = Path({str(copy)!r})
print(follow_folder(copy), follow_folder(copy))
target = client.TrackingTarget(default_tracking_uri(copy), {experiment!r}, {parent!r})
client.log_parent_outputs(target, [copy / "y.txt"], {{}})
"""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_a_copied_store_keeps_its_new_artifacts_in_the_copy(tmp_path):
    from orchestrator.tracking import client

    original = tmp_path / "a"
    uri = default_tracking_uri(original)
    exp = client.ensure_experiment(uri, "e", original / ARTIFACTS, "store test")
    parent = client.start_parent(uri, exp, "p", {}, {"kind": "sweep"})
    (original / "x.txt").write_text("x")
    client.log_parent_outputs(client.TrackingTarget(uri, exp, parent), [original / "x.txt"], {})
    copy = tmp_path / "b"
    shutil.copytree(original, copy)
    before = snapshot(original)
    (copy / "y.txt").write_text("y")
    proc = _log_into_copy(copy, exp, parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [str(original.resolve()), "None"]  # rewritten once
    assert (copy / ARTIFACTS / "e" / parent / "artifacts" / "y.txt").read_text() == "y"
    run = MlflowClient(default_tracking_uri(copy)).get_run(parent)
    assert run.info.artifact_uri.startswith((copy / ARTIFACTS).resolve().as_uri() + "/")
    assert snapshot(original) == before


def test_a_store_on_a_full_disk_fails_at_once_naming_itself(tmp_path):
    """SQLite's "database or disk is full" is not retried for half a minute: it stays full."""
    from orchestrator.tracking import client

    with tmpfs(tmp_path / "disk", "8m") as disk:
        uri = default_tracking_uri(disk)
        exp = client.ensure_experiment(uri, "e", disk / ARTIFACTS, "store test")
        fill(disk)
        started = time.monotonic()
        with pytest.raises(WriteFailed) as e:
            client.start_parent(uri, exp, "p", {"a": 1}, {"kind": "sweep"})
        assert time.monotonic() - started < 5
        line = str(e.value)
        assert line.startswith(f"cannot write {disk / 'mlflow.db'}: database or disk is full (")
        assert f"B free on {disk})" in line and "\n" not in line


def test_a_copy_resumes_and_exports_into_itself_and_rebuilds_a_damaged_table(finished, tmp_path):
    before = snapshot(finished)
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    trials = copy / "trials.parquet"
    trials.write_bytes(trials.read_bytes()[: trials.stat().st_size // 2])  # cut short
    resumed = sweep(copy, *GRID)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"--output {copy}: trials.parquet changed since the sweep wrote it" in resumed.stdout
    assert f"--output {copy} was copied or moved from {finished}" in resumed.stdout
    assert _trials(copy) == _trials(finished) and _schemes(copy) == _schemes(finished)
    scheme = yaml.safe_load((copy / "schemes.yaml").read_text())["schemes"][0]
    dest = tmp_path / "ckpt"
    exported = run_module(
        "orchestrator.export",
        "--output",
        str(copy),
        "--scheme",
        scheme["name"],
        "--dest",
        str(dest),
    )
    assert exported.returncode == 0, exported.stdout[-3000:] + exported.stderr[-3000:]
    assert snapshot(finished) == before  # neither wrote a byte into the original
    store = MlflowClient(default_tracking_uri(copy))
    assert store.get_run(scheme["mlflow_run_id"]).data.tags["export.modelopt"] == str(dest)
    record = json.loads((copy / "sweep.json").read_text())
    assert "tracking_uri" not in record and record["ray_storage_path"] == "ray_results"
    parent = store.get_run(record["parent_run_id"])
    logged = Path(parent.info.artifact_uri.removeprefix("file://")) / "sweep.json"
    assert logged.is_relative_to(copy) and logged.read_text() == (copy / "sweep.json").read_text()


def test_an_export_to_a_full_disk_is_one_line_and_leaves_nothing(finished, tmp_path):
    scheme = yaml.safe_load((finished / "schemes.yaml").read_text())["schemes"][0]
    with tmpfs(tmp_path / "disk", "1m") as disk:
        fill(disk)
        args = ["--output", str(finished), "--scheme", scheme["name"], "--dest", str(disk / "c")]
        proc = run_module("orchestrator.export", *args)
        assert proc.returncode == 5, proc.stdout[-3000:] + proc.stderr[-3000:]
        (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
        assert line.startswith("error: cannot write ") and f"B free on {disk})" in line
        assert "Traceback" not in proc.stderr
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])


def test_a_damaged_file_is_refused_with_one_line_and_exit_2(finished, tmp_path):
    doc = yaml.safe_load((finished / "schemes.yaml").read_text())
    plan, knee = doc["schemes"][0], doc["knee"]
    scores = next(p.relative_to(finished) for p in (finished / "scores").glob("*.parquet"))
    never = tmp_path / "never"
    export = ["--scheme", plan["name"], "--dest", str(never)]
    cases = [
        ("select", "trials.parquet", []),
        ("select", str(scores), []),
        ("select", "config.yaml", []),
        ("export", plan["modules"], export),
        ("export", "schemes.yaml", export),
        ("export", knee["modules"], ["--scheme", "knee", "--dest", str(never)]),  # exportable too
        ("compare_sweeps", "trials.parquet", ["--against", str(finished)]),
    ]
    for i, (command, name, args) in enumerate(cases):
        copy = tmp_path / f"copy{i}"
        shutil.copytree(finished, copy)
        _cut(copy / name)
        proc = run_module(f"orchestrator.{command}", "--output", str(copy), *args)
        assert proc.returncode == 2, (command, name, proc.stdout[-2000:], proc.stderr[-2000:])
        (line,) = proc.stderr.splitlines()
        assert line.startswith(f"error: --output {copy}: {name} changed since the sweep wrote it")
        assert not never.exists()
    edited = tmp_path / "edited"
    shutil.copytree(finished, edited)
    record = json.loads((edited / "sweep.json").read_text())
    record["parent_run_id"] = "0" * 32  # edited by hand, still valid JSON
    (edited / "sweep.json").write_text(json.dumps(record))
    proc = run_module("orchestrator.select", "--output", str(edited))
    assert proc.returncode == 2
    assert "sweep.json does not match its own sha256" in proc.stderr


def test_a_full_disk_stops_the_sweep_and_the_rerun_finishes_it_identically(finished, tmp_path):
    with tmpfs(tmp_path / "disk", "64m") as disk:
        out = disk / "out"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **fault_env(sleep_seconds=4)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.sweep", "--output", str(out), *GRID],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 400
            while not list(out.glob("ray_results/tune/*/checkpoint_*")):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "no trial reported in time"
                time.sleep(0.3)
            fill(disk)
            full_at = time.monotonic()
            stdout, stderr = proc.communicate(timeout=120)
            stopped_after = time.monotonic() - full_at
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert proc.returncode == 5, stdout[-3000:] + stderr[-3000:]
        assert stopped_after < 60, f"the sweep ran on for {stopped_after:.0f}s on a full disk"
        (line,) = [x for x in stderr.splitlines() if x.startswith("error:")]
        assert line.startswith("error: cannot write ") and f"B free on {disk})" in line
        assert "Traceback" not in stdout + stderr
        assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
        (owner,) = (out / OWNER_DIR).glob("*.json")
        assert json.loads(owner.read_text())["released"] is True
        resize(disk, "256m")  # more room; the filler stays
        rerun = sweep(out, *GRID)
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
        assert _trials(out) == _trials(finished)
        assert _schemes(out) == _schemes(finished)

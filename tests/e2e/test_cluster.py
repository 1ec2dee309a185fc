"""The sweep against real services it does not own: a two-node Ray cluster started with `ray start`
(head on 127.0.0.2, a second raylet on 127.0.0.3), a real `mlflow server` on 127.0.0.1 started by
scripts/mlflow_server.sh, and `ray job submit`, also through scripts/submit_sweep.sh. Fixtures find
free ports, time out rather than hang, and stop only the processes they started (matched by their
private temp folders), even when a test fails."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.outputs.tables import read_score_tables
from tests.conftest import HEAD_IP, ROOT, WORKER_IP, free_port
from tests.e2e.test_sweep import SMALL as SMALL_SWEEP
from tests.e2e.test_sweep import start_sweep, sweep
from tests.faults import fault_env

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
SMALL = [
    *SMALL_SWEEP,
    "--set",
    "search.effective_bits=[8,10,12,14,15]",
    "--set",
    "search.cpus_per_trial=1",
]


def _kill_tree_matching(marker: str) -> None:
    procs = [
        p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])
    ]
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=20)


def _run(cmd: list[str], timeout: int = 120, **kw) -> subprocess.CompletedProcess:
    # the venv's bin first: a job's `python` must be the one that has the project installed
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": path, **kw.pop("env", {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kw)


@pytest.fixture(scope="module")
def cluster():
    """Head (1 CPU) + worker (1 CPU) on loopback aliases; yields (gcs address, job server URL)."""
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a limit
    port, dash = free_port(HEAD_IP), free_port(HEAD_IP)
    gcs = f"{HEAD_IP}:{port}"
    try:
        head = _run(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                f"--node-ip-address={HEAD_IP}",
                f"--port={port}",
                "--num-cpus=1",
                "--include-dashboard=true",
                f"--dashboard-host={HEAD_IP}",
                f"--dashboard-port={dash}",
                f"--ray-client-server-port={free_port(HEAD_IP)}",
                *_agent_ports(HEAD_IP),
                f"--temp-dir={temp}",
                "--disable-usage-stats",
            ]
        )
        assert head.returncode == 0, head.stdout + head.stderr
        worker = _run(
            [
                str(BIN / "ray"),
                "start",
                f"--address={gcs}",
                f"--node-ip-address={WORKER_IP}",
                "--num-cpus=1",
                *_agent_ports(WORKER_IP),
                # a folder of its own, as on a second machine: sharing the head's, its runtime-env
                # agent removed and unpacked a Ray Job's working_dir again under the running driver
                f"--temp-dir={temp}/w",
                "--disable-usage-stats",
            ]
        )
        assert worker.returncode == 0, worker.stdout + worker.stderr
        _wait_for_nodes(gcs, 2)
        yield gcs, f"http://{HEAD_IP}:{dash}"
    finally:
        _kill_tree_matching(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _agent_ports(ip: str) -> list[str]:
    """Free ports for each node's agents: the defaults collide with any other Ray on the machine."""
    return [
        f"--dashboard-agent-listen-port={free_port(ip)}",
        f"--dashboard-agent-grpc-port={free_port(ip)}",
        f"--metrics-export-port={free_port(ip)}",
        f"--runtime-env-agent-port={free_port(ip)}",
    ]


def _wait_for_nodes(gcs: str, n: int, timeout: float = 60) -> None:
    """Until ``n`` nodes are alive and each runs a task pinned to it (the scheduler knows it:
    the sweep places its workers node by node and Ray falls back to any node for one it does not
    know yet)."""
    code = (
        "import ray\n"
        "from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as A\n"
        f"ray.init(address='{gcs}', _node_ip_address='{HEAD_IP}')\n"
        "f = ray.remote(lambda: ray.get_runtime_context().get_node_id())\n"
        "ids = [x['NodeID'] for x in ray.nodes() if x['Alive']]\n"
        "ran = ray.get([f.options(num_cpus=0, scheduling_strategy=A(i, soft=False)).remote()"
        " for i in ids], timeout=30)\n"
        "print(sum(a == b for a, b in zip(ids, ran)))"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = _run([sys.executable, "-c", code], timeout=60)
        if out.stdout.strip().endswith(str(n)):
            return
        time.sleep(1)
    raise TimeoutError(f"cluster at {gcs} did not reach {n} nodes")


def _mlflow_server(root: Path, port: int) -> subprocess.Popen:
    """The README's tracking server: scripts/mlflow_server.sh (sqlite, artifacts served from
    ``root``) on 127.0.0.1, which execs ``mlflow server`` in this process's place."""
    proc = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "mlflow_server.sh"), str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # this venv's mlflow
            "MLFLOW_PORT": str(port),
            "MLFLOW_WORKERS": "1",
            # no job-execution consumers (7 processes of MLflow 3's GenAI jobs, which no sweep
            # uses): on the 2-core CI box they pushed the load to 12 and the client timeouts over
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        },
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            # the first store request of a fresh server is slow (the store is created); make it
            # here, so a test's short client timeouts meet a warm server
            warm = "api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
            urllib.request.urlopen(f"http://127.0.0.1:{port}/{warm}", timeout=60)
            return proc
        except OSError:
            assert proc.poll() is None, "mlflow server exited"
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise TimeoutError("mlflow server did not come up")


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    procs = [_mlflow_server(tmp_path / "mlflow", port)]

    def restart() -> None:
        procs.append(_mlflow_server(tmp_path / "mlflow", port))

    yield f"http://127.0.0.1:{port}", procs, restart
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)


def test_sweep_on_a_two_node_cluster_uses_both_nodes(cluster, tmp_path):
    gcs, _ = cluster
    out = tmp_path / "out"
    proc = sweep(
        out,
        "--address",
        gcs,
        *SMALL,
        "--set",
        "search.max_concurrent=2",
        "--set",
        "scoring.shards=2",  # the score batches split over both nodes, the sums merged
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "scoring 1 setup(s), each in 2 shard(s)" in proc.stdout
    (table,) = read_score_tables(out).values()
    assert table.meta["shards"] == 2 and len(table.meta["shard_seconds"]) == 2
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("demo-tiny").experiment_id], "tags.kind = 'trial'"
    )
    assert len({r.data.tags["ray_node_id"] for r in runs}) == 2
    assert "2 node(s)" in proc.stdout


def test_tracking_server_receives_everything_over_http(mlflow_server, tmp_path):
    uri, _, _ = mlflow_server
    out = tmp_path / "out"
    proc = sweep(out, "--tracking-uri", uri, *SMALL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("demo-tiny")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parent = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("kind") == "trial"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert len(children) == 5 and all(r.info.status == "FINISHED" for r in children)
    assert all("kl_mean" in r.data.metrics for r in children)
    assert {a.path for a in client.list_artifacts(children[0].info.run_id)} == {
        "plan.json",
        "per_sequence.json",
    }
    assert "schemes.yaml" in {a.path for a in client.list_artifacts(parent[0].info.run_id)}
    local = yaml.safe_load((out / "schemes.yaml").read_text())
    assert local["parent_run_id"] == parent[0].info.run_id
    assert not (out / "mlflow.db").exists() and not (out / "mlartifacts").exists()


def test_tracking_server_outage_loses_no_results(mlflow_server, tmp_path):
    uri, procs, restart = mlflow_server
    out = tmp_path / "out"
    driver = start_sweep(out, "--tracking-uri", uri, *SMALL, "--set", "search.max_concurrent=1")
    try:
        os.killpg(procs[0].pid, signal.SIGKILL)  # the server goes away mid-sweep ...
        procs[0].wait(timeout=30)
        time.sleep(8)
        restart()  # ... and comes back on the same port and store
        stdout, _ = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 0, stdout[-4000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("demo-tiny")
    children = client.search_runs([exp.experiment_id], "tags.kind = 'trial'")
    assert len(children) == 5 and all(r.info.status == "FINISHED" for r in children), stdout[-3000:]
    assert all("kl_mean" in r.data.metrics for r in children)
    assert not (out / "unlogged.json").exists()


def _job(jobs: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`ray job ...` against the test cluster; retries while the job agent is still starting."""
    verb, *rest = args
    return _until_agent([str(BIN / "ray"), "job", verb, "--address", jobs, *rest], timeout)


def _until_agent(cmd: list[str], timeout: int, **kw) -> subprocess.CompletedProcess:
    """``cmd`` that talks to the job server, again while its agent is still starting."""
    deadline = time.monotonic() + 90
    while True:
        proc = _run(cmd, timeout=timeout, **{"cwd": ROOT, **kw})
        if "No available agent" not in proc.stdout + proc.stderr or time.monotonic() > deadline:
            return proc
        time.sleep(2)


def test_ray_job_submit_logs_stop_and_resume(cluster, tmp_path):
    _, jobs = cluster
    out = tmp_path / "job"
    slow = {"env_vars": fault_env(sleep_seconds=2)}  # the job's trials, wherever they run
    sweep_cmd = [
        "--working-dir",
        str(ROOT),
        "--runtime-env-json",
        json.dumps(slow),
        "--",
        "python",
        "-m",
        "orchestrator.sweep",
        "--output",
        str(out),
        *SMALL,
        "--set",
        "search.max_concurrent=1",
        "--set",
        "search.effective_bits=[8,9,10,11,12,13,14,15]",
    ]
    first = _job(jobs, "submit", "--no-wait", "--submission-id", "sweep-1", *sweep_cmd)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    deadline = time.monotonic() + 300
    while not list(out.glob("ray_results/tune/*/checkpoint_*")):
        assert time.monotonic() < deadline, _job(jobs, "logs", "sweep-1").stdout[-3000:]
        time.sleep(0.5)
    logs = _job(jobs, "logs", "sweep-1")
    assert "ETA" in logs.stdout
    stop = _job(jobs, "stop", "sweep-1")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    status = _job(jobs, "status", "sweep-1")
    assert "was stopped" in status.stdout + status.stderr
    again = _job(jobs, "submit", "--submission-id", "sweep-2", *sweep_cmd)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "succeeded" in (again.stdout + again.stderr).lower()
    assert "resuming Tune experiment" in again.stdout
    assert len(yaml.safe_load((out / "schemes.yaml").read_text())["schemes"]) == 3


def test_tracking_server_that_never_returns_loses_no_results(mlflow_server, tmp_path):
    """With a short retry budget: trials keep their metrics, the sweep finishes its files and
    says what it could not log."""
    import pyarrow.parquet as pq

    uri, procs, _ = mlflow_server
    out = tmp_path / "out"
    env = {
        "FP8_SWEEP_TRACKING_ATTEMPTS": "2",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
        **fault_env(sleep_seconds=1),
    }
    driver = start_sweep(
        out, "--tracking-uri", uri, *SMALL, "--set", "search.max_concurrent=1", env=env
    )
    try:
        os.killpg(procs[0].pid, signal.SIGKILL)  # gone for good
        stdout, _ = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 0, stdout[-4000:]
    rows = pq.read_table(out / "trials.parquet").to_pylist()
    assert len(rows) == 5 and all(r["status"] == "FINISHED" for r in rows)
    assert all(r["kl_mean"] is not None for r in rows)
    assert (out / "schemes.yaml").exists()
    problems = yaml.safe_load((out / "unlogged.json").read_text())["problems"]
    assert problems and "could not be written to MLflow" in stdout


def test_submit_script_runs_the_sweep_as_a_ray_job(cluster, mlflow_server, tmp_path):
    """The README's Ray Job line: scripts/submit_sweep.sh with RAY_ADDRESS and SUBMIT_FLAGS, a
    relative OUTPUT (made absolute: the job runs in an uploaded copy of the checkout) and the
    tracking server of scripts/mlflow_server.sh."""
    _, jobs = cluster
    uri, _, _ = mlflow_server
    script = str(ROOT / "scripts" / "submit_sweep.sh")
    env = {"RAY_ADDRESS": jobs, "SUBMIT_FLAGS": "--submission-id script-1"}
    sweep_args = [*SMALL, "--set", "search.effective_bits=[8,12,14]"]  # one point per name
    proc = _until_agent(["bash", script, "job", uri, *sweep_args], 600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = _job(jobs, "status", "script-1")
    assert "succeeded" in (status.stdout + status.stderr).lower()
    schemes = yaml.safe_load((tmp_path / "job" / "schemes.yaml").read_text())
    assert len(schemes["schemes"]) == 3
    client = MlflowClient(uri)
    parent = client.get_run(schemes["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["kind"] == "sweep"

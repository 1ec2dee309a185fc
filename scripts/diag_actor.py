"""Why does a plan's evaluation run slower inside a Ray Tune trial actor? (issue 5)

    python scripts/diag_actor.py --work /tmp/fp8bench --out /tmp/diag.json
    python scripts/diag_actor.py --smoke --work /tmp/fp8smoke --out /tmp/diag.json        # CPU

Needs the model saved by ``scripts/bench_sweep.py run --stages kernel,model`` under ``--work``
(with ``--smoke``: ``bench_sweep.py run --smoke --stages model``, the tiny preset; Ray's parts then
take no GPU, and Ray's node address is ``FP8_SWEEP_NODE_IP`` when set, as for the sweep).
The same resident ``orchestrator.model.worker.Evaluator`` (one per process) measures the same plan
in several settings; each measurement records wall time, the CPU time of the calling thread and
of the whole process, the calling thread's voluntary / involuntary context switches, and the CPU
each of the process's threads used during the evaluation (from ``/proc/self/task``), so a slow
evaluation shows whether the evaluating thread itself did more work, waited (GIL, locks), or was
preempted.

Parts (``--parts``, comma-separated): ``plain`` (as is, with one intra-op thread, with a Python
thread polling a queue beside it, with one spinning beside it); ``threads`` (the warm main thread,
then fresh threads, one of them under cProfile); ``actor`` (a plain Ray actor with one GPU);
``tune`` (a Ray Tune function trainable with reused actors, several trials, each measuring before
and after an intermediate ``tune.report``); ``tune_pinned`` (the same, every measurement on
``orchestrator.model.device.on_model_thread``). Results of the H100 runs: docs/benchmarks.md,
item 7.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def _tasks() -> dict[str, tuple[str, float]]:
    """Per thread of this process: (name, CPU seconds so far)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            out[tid] = (name, (int(fields[11]) + int(fields[12])) / tick)
        except OSError:
            continue
    return out


def measure(ev: Any, plan: list[str], label: str) -> dict[str, Any]:
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    before = _tasks()
    r0 = resource.getrusage(resource.RUSAGE_THREAD)
    w0, t0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
    m = ev.evaluate(plan)
    sync()
    w1, t1, p1 = time.perf_counter(), time.thread_time(), time.process_time()
    r1 = resource.getrusage(resource.RUSAGE_THREAD)
    after = _tasks()
    busy = {
        f"{after[t][0]}[{t}]": round(after[t][1] - before.get(t, (None, 0.0))[1], 3)
        for t in after
        if after[t][1] - before.get(t, (None, 0.0))[1] > 0.005
    }
    return {
        "label": label,
        "wall": w1 - w0,
        "thread_cpu": t1 - t0,
        "process_cpu": p1 - p0,
        "voluntary_switches": r1.ru_nvcsw - r0.ru_nvcsw,
        "involuntary_switches": r1.ru_nivcsw - r0.ru_nivcsw,
        "thread": threading.current_thread().name,
        "python_threads": [t.name for t in threading.enumerate()],
        "torch_threads": torch.get_num_threads(),
        "affinity": len(os.sched_getaffinity(0)),
        "busy_threads": busy,
        "kl_mean": m["kl_mean"],
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pid": os.getpid(),
    }


_RESIDENT: dict[str, Any] = {}


def evaluator(args: argparse.Namespace) -> tuple[Any, list[str]]:
    """This process's resident Evaluator (built on first use, kept across Tune trials)."""
    from bench_sweep import load_setup

    from orchestrator.model.device import default_device
    from orchestrator.model.loading import load_model
    from orchestrator.model.worker import Evaluator

    if "ev" not in _RESIDENT:
        cfg, data = load_setup(args, 8)
        device = default_device()
        net, profile = load_model(cfg.model.source, device, cfg.model.dtype)
        _RESIDENT["ev"] = Evaluator(
            net,
            profile,
            data.calib,
            data.eval,
            "FP8_DEFAULT_CFG",
            device,
            int(cfg.search.reference_cache_gib * 2**30),
            cfg.model.fused_scales,  # as the sweep's trials measure
        )
    ev = _RESIDENT["ev"]
    return ev, list(ev.eligible)


def plain(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    ev, plan = evaluator(args)
    rows = [measure(ev, plan, "plain") for _ in range(3)]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    rows += [measure(ev, plan, "plain, torch threads 1") for _ in range(2)]
    torch.set_num_threads(n)
    stop = threading.Event()

    def poll() -> None:
        q: queue.Queue = queue.Queue()
        while not stop.is_set():
            try:
                q.get(timeout=0.01)
            except queue.Empty:
                pass

    def spin() -> None:
        x = 0
        while not stop.is_set():
            x += 1

    for name, fn in (("poller 10ms", poll), ("spinner", spin)):
        stop.clear()
        th = threading.Thread(target=fn, name=name, daemon=True)
        th.start()
        rows += [measure(ev, plan, f"plain + {name} thread") for _ in range(2)]
        stop.set()
        th.join()
    return rows


def threads(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The same evaluation on the warm main thread, then each on a thread of its own."""
    import cProfile
    import io
    import pstats

    ev, plan = evaluator(args)
    rows = [measure(ev, plan, "main thread (built the evaluator)")]

    def on_new_thread(label: str, profile: bool = False) -> None:
        prof = cProfile.Profile() if profile else None

        def body() -> None:
            if prof:
                prof.enable()
            rows.append(measure(ev, plan, label))
            if prof:
                prof.disable()
            rows.append(measure(ev, plan, label + ", again"))

        th = threading.Thread(target=body)
        th.start()
        th.join()
        if prof:
            for key in ("tottime", "cumulative"):
                buf = io.StringIO()
                pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(25)
                print(f"--- fresh-thread evaluation, by {key}\n" + buf.getvalue(), flush=True)

    on_new_thread("fresh thread 1")
    on_new_thread("fresh thread 2")
    on_new_thread("fresh thread 3 (profiled)", profile=True)
    rows.append(measure(ev, plan, "main thread again"))
    return rows


def actor(args: argparse.Namespace) -> list[dict[str, Any]]:
    import ray

    gpus = 0 if args.smoke else 1

    @ray.remote(num_gpus=gpus)
    class Worker:
        def run(self, a: argparse.Namespace, n: int, label: str) -> list[dict[str, Any]]:
            ev, plan = evaluator(a)
            return [measure(ev, plan, label) for _ in range(n)]

    w = Worker.remote()
    rows = ray.get(w.run.remote(args, 3, "ray actor, call 1"))
    rows += ray.get(w.run.remote(args, 2, "ray actor, call 2"))
    ray.kill(w)
    return rows


def _trainable(config: dict[str, Any]) -> None:
    from ray import tune

    from orchestrator.model.device import on_model_thread

    a = argparse.Namespace(**config["args"])
    pinned = config.get("pinned", False)
    tag = "tune, model thread" if pinned else "tune"

    def run(fn: Any, *args: Any) -> Any:
        return on_model_thread(fn, *args) if pinned else fn(*args)

    ev, plan = run(evaluator, a)
    rows = [run(measure, ev, plan, f"{tag} trial {config['i']}, before report")]
    tune.report({"step": 1})
    rows.append(run(measure, ev, plan, f"{tag} trial {config['i']}, after report"))
    rows.append(run(measure, ev, plan, f"{tag} trial {config['i']}, after report"))
    tune.report({"step": 2, "rows": json.dumps(rows)})


def tuned(args: argparse.Namespace, trials: int, pinned: bool = False) -> list[dict[str, Any]]:
    from ray import tune

    fn = tune.with_resources(_trainable, {"cpu": 1, "gpu": 0 if args.smoke else 1})
    tuner = tune.Tuner(
        fn,
        param_space={
            "i": tune.grid_search(list(range(trials))),
            "args": vars(args),
            "pinned": pinned,
        },
        tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"diag-{int(pinned)}",
            storage_path=str(Path(args.work) / "diag_results"),
            verbose=0,
        ),
    )
    grid = tuner.fit()
    rows = []
    for r in sorted(grid, key=lambda r: r.config["i"]):
        if r.error:
            raise RuntimeError(r.error)
        rows += json.loads(r.metrics["rows"])
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/fp8bench")
    p.add_argument(
        "--src", default=str(ROOT), help="folder whose orchestrator/ this and every Ray process use"
    )
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--parts", default="plain,actor,tune")
    p.add_argument("--trials", type=int, default=4)
    args = p.parse_args()
    src = str(Path(args.src).resolve())
    sys.path.insert(0, src)  # before any orchestrator import
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [src, str(ROOT / "scripts"), os.environ.get("PYTHONPATH", "")]
    )
    parts = args.parts.split(",")
    rows: list[dict[str, Any]] = []
    if "plain" in parts:
        rows += plain(args)
    if "threads" in parts:
        rows += threads(args)
    if {"actor", "tune", "tune_pinned"} & set(parts):
        from orchestrator.search.ray_env import ray_environment

        ray_environment(None)  # as the sweep does: no Ray token saved to ~/.ray
        import ray

        node_ip = os.environ.get("FP8_SWEEP_NODE_IP", "127.0.0.1")
        ray.init(include_dashboard=False, _node_ip_address=node_ip)
        if "actor" in parts:
            rows += actor(args)
        if "tune" in parts:
            rows += tuned(args, args.trials)
        if "tune_pinned" in parts:
            rows += tuned(args, args.trials, pinned=True)
        ray.shutdown()
    Path(args.out).write_text(json.dumps(rows, indent=1))
    for r in rows:
        top = sorted(r["busy_threads"].items(), key=lambda kv: -kv[1])[:4]
        print(
            f"{r['label']:<34} wall {r['wall']:6.3f} thread cpu {r['thread_cpu']:6.3f} "
            f"proc cpu {r['process_cpu']:6.3f} vol {r['voluntary_switches']:6d} "
            f"invol {r['involuntary_switches']:5d} torch {r['torch_threads']:2d} "
            f"aff {r['affinity']:2d} py-threads {len(r['python_threads']):2d} busy {top}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

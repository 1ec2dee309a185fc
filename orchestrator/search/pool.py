"""The GPU workers on Ray: connecting, long-lived workers of one or more GPUs, dispatcher, scoring.

* Long-lived workers (``WorkerPool``), placed by the memory plan (:func:`plan_workers`): each
  reserves ``search.gpus_per_worker`` GPUs of one node (``auto``: the fewest that hold the model)
  and spreads the model over them; ``search.max_concurrent`` CPU workers without GPUs. They are
  created as soon as Ray is up: each imports ModelOpt and loads the model once, scores the
  shards it is given, then keeps a calibrated model resident for the trials
  (``orchestrator.model.worker``). A process per worker pays start-up once, not once for scoring
  and again for trials, and the trials' calibration happens before the first trial needs it.
* Scoring: ``scoring.shards`` per (method, FP8 recipe) setup, sent to the workers in turn, each
  scoring its share of the batches; the driver adds them up and caches the table on the (shared)
  output folder.
* Trials (``orchestrator.search.trial``) borrow a free worker through the dispatcher, an async actor
  that takes the worker back even if the trial's process dies, and that runs a call again when
  its worker dies under it (Ray restarts the worker): a lost worker is not the plan's failure.

Ray is imported in ``orchestrator.search`` only (``tests/unit/test_layers.py``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from orchestrator.core.budget import Watch, explain, group_scores
from orchestrator.core.config import ConfigError, ModelConfig
from orchestrator.core.memory import Slot, WorkerNeed
from orchestrator.core.records import ScoreTable
from orchestrator.outputs import storage
from orchestrator.outputs.console import log_wrapped

log = logging.getLogger(__name__)


def connect(address: str | None, node_ip: str | None = None) -> None:
    """Join ``address`` or start a local instance; loopback-pinned when ``node_ip`` is given."""
    kwargs: dict[str, Any] = {"log_to_driver": True}
    if node_ip:
        kwargs["_node_ip_address"] = node_ip
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(include_dashboard=False, **kwargs)
    res = ray.cluster_resources()
    log.info(
        "Ray: %d node(s), %g CPU, %g GPU",
        len([n for n in ray.nodes() if n.get("Alive")]),
        res.get("CPU", 0),
        res.get("GPU", 0),
    )


def put(obj: Any) -> Any:
    """``obj`` in the object store, once, for every worker and trial to read."""
    return ray.put(obj)


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()


def _worker_actor() -> type[Any]:
    """The Ray actor class around :class:`orchestrator.model.worker.Worker` (torch is imported
    here only, not in the driver's or the trials' imports of this module)."""
    from orchestrator.model.worker import Worker
    from orchestrator.runtime.logs import route_worker_output

    class GpuWorker(Worker):
        def __init__(
            self, model: ModelConfig, threads: int, gpus: int, log_file: str | None, label: str
        ) -> None:
            # before ModelOpt is imported: its prints and progress bars go to the worker's file
            route_worker_output(log_file, label, verbose=log_file is None)
            super().__init__(model, threads, gpus)

        def where(self) -> dict[str, Any]:
            return {**_here(), **self.startup}

        def evaluate_here(self, *args: Any) -> tuple[dict[str, float], dict[str, str]]:
            return self.evaluate(*args), _here()

    return GpuWorker


def _here() -> dict[str, str]:
    return {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname()}


# A worker lost under a call: its process died (ActorDiedError) or Ray is restarting it
# (ActorUnavailableError, "The actor is restarting"); both are RayActorError.
WORKER_LOST = ray.exceptions.RayActorError
# How long a trial that lost its worker waits for one to be free again: a restarted worker imports
# ModelOpt, loads the model and calibrates again before it can measure (minutes for a large model).
RESTART_WAIT_SECONDS = 1800.0
# A plan under which workers died this often is the plan's own failure (it runs them out of
# memory, say): the trial fails, and Tune's retries (search.max_failures) take over.
LOSSES_PER_EVALUATION = 3


class WorkerLost(RuntimeError):
    """No worker could measure the plan: they died under it too often, or none was back in time."""


class _Dispatcher:
    """Lends each trial a free worker and takes it back, also when the trial or the worker dies.

    An async actor: a trial's call waits here until a worker is free. The worker is returned in
    every case, so a trial process that dies mid-call cannot keep one. A worker that dies under a
    call (Ray restarts it) is not the plan's failure: the call runs again on the next worker free,
    which is this one once it answers after its restart, without the trial ever seeing the loss
    (a failure Tune saw would spend the retries meant for the plan's own errors, and a retry sent
    to a restarting worker fails again at once). An evaluation only measures, so running it again
    is safe even when Ray cannot say whether the lost call ran. Bounded: after
    :data:`RESTART_WAIT_SECONDS` without a free worker, or :data:`LOSSES_PER_EVALUATION` losses,
    the call raises :class:`WorkerLost`.
    It knows the workers by name, not by handle: handles in the constructor's arguments are
    references that a restart after the driver let them go could not resolve (Ray warns about
    exactly that, ray#53727).
    """

    def __init__(
        self,
        worker_names: Sequence[str],
        verbose: bool = False,
        restart_wait: float = RESTART_WAIT_SECONDS,
    ) -> None:
        from orchestrator.runtime.logs import route_worker_output

        route_worker_output(None, "dispatcher", verbose)  # its records reach the console
        self.worker_names = list(worker_names)
        self.restart_wait = restart_wait
        self.free: asyncio.Queue | None = None
        self.returning: set[asyncio.Task] = set()  # workers lost, waited for until they answer

    def _queue(self) -> asyncio.Queue:
        if self.free is None:
            self.free = asyncio.Queue()
            for i, name in enumerate(self.worker_names):
                self.free.put_nowait((i, ray.get_actor(name)))
        return self.free

    async def evaluate(self, data: list[Any], *args: Any, label: str = "a plan") -> Any:
        free = self._queue()
        losses: list[str] = []
        lost_at = 0.0
        while True:
            wait = None if not losses else self.restart_wait - (time.monotonic() - lost_at)
            try:
                i, w = await asyncio.wait_for(free.get(), wait)
            except TimeoutError:
                raise WorkerLost(
                    f"{label}: no worker came back within {self.restart_wait:.0f}s after "
                    f"{'; '.join(losses)}"
                ) from None
            try:
                result = await w.evaluate_here.remote(data[0], *args)
            except WORKER_LOST as e:
                losses.append(f"worker {i} was lost ({_first_line(e)})")
                lost_at = time.monotonic()
                self._return_when_back(i, w)
                if len(losses) >= LOSSES_PER_EVALUATION:
                    raise WorkerLost(f"{label}: {'; '.join(losses)}") from None
                log.warning(
                    "worker %d was lost while measuring %s (%s); it runs again on the next "
                    "worker free (Ray restarts this one)",
                    i,
                    label,
                    _first_line(e),
                )
                continue
            except BaseException:
                free.put_nowait((i, w))
                raise
            free.put_nowait((i, w))
            if losses:
                log.info("%s measured after %d lost worker(s)", label, len(losses))
            return result

    def _return_when_back(self, i: int, w: Any) -> None:
        task = asyncio.get_running_loop().create_task(self._when_back(i, w))
        self.returning.add(task)
        task.add_done_callback(self.returning.discard)

    async def _when_back(self, i: int, w: Any) -> None:
        """Lend the worker again once it answers (Ray restarted it); calls to it fail at once while
        it restarts, so ask again every few seconds, up to the restart wait."""
        assert self.free is not None
        t0 = time.monotonic()
        while True:
            left = self.restart_wait - (time.monotonic() - t0)
            try:
                await asyncio.wait_for(w.where.remote(), max(left, 1.0))
            except WORKER_LOST:
                if left > 0:
                    await asyncio.sleep(2.0)
                    continue
            except TimeoutError:
                pass
            else:
                log.info("worker %d is back after %.0fs", i, time.monotonic() - t0)
                self.free.put_nowait((i, w))
                return
            log.error(
                "worker %d did not come back within %.0fs; the sweep goes on without it",
                i,
                self.restart_wait,
            )
            return


def _first_line(e: BaseException) -> str:
    text = " ".join((str(e).strip().splitlines() or [""])[0].split())[:200]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@dataclass
class WorkerPool:
    """Long-lived workers of one or more GPUs each (or CPU workers), started once Ray is up."""

    workers: list[Any]
    dispatcher: Any
    startup: list[Any]  # refs: each worker's node, ModelOpt import and load seconds
    prepared: list[Any] = field(default_factory=list)  # refs: each worker's evaluator build

    @classmethod
    def start(
        cls, model: ModelConfig, slots: Sequence[Slot], threads: int, log_dir: Path | None
    ) -> WorkerPool:
        """Create the actors; each imports ModelOpt and loads the model while the driver goes on.

        A worker reserves its slot's GPUs on its slot's node (no CPUs: the trials reserve those)
        and spreads the model over them when there are several. Ray restarts a worker that dies: a
        GPU worker wherever its GPUs are free if its node is gone; a CPU worker, which reserves
        nothing, only on its own node (Ray would otherwise put every one of them on the driver's
        node). Worker ``i`` writes what libraries print to ``log_dir/worker-<i>.log`` (the output
        folder, which every node sees; a restarted worker appends), and only the sweep's records
        to the console; ``log_dir`` None leaves everything on the console (``--verbose``).
        """
        actor = ray.remote(_worker_actor())
        gpus = sorted({s.gpus for s in slots})
        log.info(
            "%d worker(s) on %d node(s), %s GPU(s) each",
            len(slots),
            len({s.node for s in slots}),
            f"{gpus[0]}" if len(gpus) == 1 else f"{gpus[0]}-{gpus[-1]}",
        )
        names = [f"fp8-sweep-worker-{uuid.uuid4().hex[:12]}" for _ in slots]
        workers = [
            actor.options(
                name=name,
                num_gpus=s.gpus,
                num_cpus=0,
                max_restarts=-1,
                scheduling_strategy=NodeAffinitySchedulingStrategy(s.node, soft=s.gpus > 0),
            ).remote(
                model,
                threads,
                max(1, s.gpus),
                None if log_dir is None else str(log_dir / f"worker-{i}.log"),
                f"worker {i}",
            )
            for i, (s, name) in enumerate(zip(slots, names, strict=True))
        ]
        dispatcher = (
            ray.remote(_Dispatcher)
            .options(num_cpus=0, max_restarts=-1)
            .remote(names, verbose=log_dir is None)
        )
        return cls(workers, dispatcher, [w.where.remote() for w in workers])

    def prepare(self, data_ref: Any, fp8_recipe: str, reference_cache_bytes: int) -> None:
        """Every worker builds its resident evaluator once the work already sent to it is done."""
        self.prepared = [
            w.prepare.remote(data_ref, fp8_recipe, reference_cache_bytes) for w in self.workers
        ]

    def log_startup(self, need: WorkerNeed | None = None) -> list[dict[str, Any]]:
        """Each worker's start-up (and evaluator build, when prepared): logged and returned, with
        its peak memory per phase under ``memory`` beside what the plan (``need``) promised."""
        infos = [_get_or_empty(r) for r in self.startup]
        built = [_get_or_empty(r) for r in self.prepared] or [{}] * len(infos)
        memory = [_get_or_empty(w.memory.remote()) for w in self.workers]
        plan = {} if need is None else {"plan": need.as_dict()}
        out = []
        for i, (info, b, m) in enumerate(zip(infos, built, memory, strict=True)):
            if not info:  # the worker died before it could say (Ray restarted it)
                continue
            out.append({"worker": i, **info, **b, "memory": {**m, **plan}})
            log_wrapped(
                log,
                f"worker {i} on {info['hostname']}: ModelOpt import {info['import_seconds']:.1f}s,"
                f" model load {info['load_seconds']:.1f}s"
                + (
                    ""
                    if not b
                    else f", quantizer insertion {b['setup_seconds']:.1f}s, calibration "
                    f"{b['calibration_seconds']:.1f}s, reference {b['reference_seconds']:.1f}s"
                ),
            )
        return out


def _alive_nodes() -> list[dict[str, Any]]:
    return sorted(
        (n for n in ray.nodes() if n.get("Alive")), key=lambda n: n.get("NodeManagerAddress", "")
    )


def cpu_nodes(count: int) -> list[str]:
    """The node of each CPU worker: the nodes with CPUs in turn (any alive node if none lists any).

    Ray's own spreading does not separate actors that reserve nothing, so the driver places them.
    """
    alive = _alive_nodes()
    slots = [n["NodeID"] for n in alive if n["Resources"].get("CPU", 0) > 0] or [
        n["NodeID"] for n in alive
    ]
    return [slots[i % len(slots)] for i in range(count)]


def plan_workers(
    need: WorkerNeed, gpus_per_worker: int | str, max_concurrent: int | None, local: bool
) -> list[Slot]:
    """The workers' slots on the cluster's GPU nodes (``memory.place``), or CPU workers.

    Each GPU node's memory per GPU comes from ``nvidia-smi`` on that node (a zero-resource task
    pinned there; this machine's answer on a local run); the smallest GPU of a node counts. A node
    that cannot hold a worker gets none and the log says why; none at all is bad input (exit 2).
    Without GPUs anywhere: ``max_concurrent`` CPU workers (default 1), spread over the nodes.
    """
    from orchestrator.core.memory import Node, place

    gpu_nodes = [n for n in _alive_nodes() if n["Resources"].get("GPU", 0) >= 1]
    if not gpu_nodes:
        return [Slot(node, 0) for node in cpu_nodes(max_concurrent or 1)]
    memory = _gpu_memory(gpu_nodes, local)
    for n in gpu_nodes:
        if not memory[n["NodeID"]]:
            log.warning("memory plan: node %s: nvidia-smi gave no memory; no worker", n["NodeID"])
    nodes = [
        Node(n["NodeManagerAddress"], int(n["Resources"]["GPU"]), memory[n["NodeID"]])
        for n in gpu_nodes
        if memory[n["NodeID"]]
    ]
    placement = place(need, nodes, gpus_per_worker, max_concurrent)
    for line in placement.lines:
        log_wrapped(log, f"memory plan: {line}")
    if not placement.workers:
        raise ConfigError(f"{need.describe()}; no node can hold a worker: {placement.lines}")
    by_address = {n["NodeManagerAddress"]: n["NodeID"] for n in gpu_nodes}
    return [Slot(by_address[s.node], s.gpus) for s in placement.workers]


def _gpu_memory(nodes: Sequence[dict[str, Any]], local: bool) -> dict[str, float]:
    """GiB per GPU of each node (its smallest GPU; 0 when the node cannot say)."""
    from orchestrator.runtime.host import local_gpu_memory_gib

    if local:
        here = local_gpu_memory_gib()
        return {n["NodeID"]: min(here, default=0.0) for n in nodes}
    probe = ray.remote(num_cpus=0)(local_gpu_memory_gib)
    refs = [
        probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote()
        for n in nodes
    ]
    sizes = ray.get(refs)
    return {n["NodeID"]: min(s, default=0.0) for n, s in zip(nodes, sizes, strict=True)}


def _get_or_empty(ref: Any) -> dict[str, Any]:
    try:
        return dict(ray.get(ref))
    except ray.exceptions.RayError:
        return {}


def scoring_shards(shards: int | str, num_score_steps: int, workers: int = 1) -> int:
    """Shards per setup: ``auto`` is one per worker (so one per GPU), at most the score steps."""
    n = workers if shards == "auto" else int(shards)
    return max(1, min(n, num_score_steps))


def _watching_storage(refs: list[Any], every_s: float = 2.0) -> list[Any]:
    """``ray.get(refs)``, looking every ``every_s`` seconds whether a write was refused for good
    meanwhile (the heartbeat reports a full disk, ``outputs/storage.py``): scoring can run for
    minutes, and the sweep stops within seconds of the first such write, not when scoring ends."""
    while True:
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=every_s)
        if len(ready) == len(refs):
            return list(ray.get(refs))
        found = storage.reported()
        if found is not None:
            raise found


@dataclass
class _Scoring:
    """One setup's progress through its chunks: the parts scored so far and what each chunk did to
    the grid's plans (``watch``)."""

    chunks: list[list[int]]
    watch: Watch
    parts: list[tuple[ScoreTable, Any]] = field(default_factory=list)


def run_scoring(
    pool: WorkerPool,
    data_ref: Any,
    setups: Sequence[Any],
    cache_dir: Path,
    shards: int | str = 1,
    plans: Callable[[ScoreTable], Sequence[frozenset[str]]] | None = None,
) -> list[ScoreTable]:
    """Every setup scored chunk by chunk (one chunk of all its batches unless its adaptive budget
    is on, ``core/budget.py``): each round sends every unfinished setup's next chunk, split in
    shards, to the workers in turn, one after another per worker.

    After a round the driver adds each setup's shards up (``scoring.merge_shards``), re-solves the
    grid's plans on the sums (``plans``) and stops a setup once its rule says so; a stopped setup's
    table records the batches it used and why it stopped, and is cached in ``cache_dir``.
    """
    from orchestrator.model.scoring import merge_shards, save, shard_indices

    n = len(pool.workers)
    progress = {s: _Scoring(s.rule().chunks(), Watch(s.rule())) for s in setups}
    counts = sorted({scoring_shards(shards, len(p.chunks[0]), n) for p in progress.values()})
    if counts[-1] > 1:
        each = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        what = "each chunk" if any(s.rule().on for s in setups) else "each"
        log.info("scoring %d setup(s), %s in %s shard(s) over the workers", len(setups), what, each)
    for s in setups:
        if s.rule().on:
            log_wrapped(log, f"{s.method}/{s.fp8_recipe}: {s.rule().describe()}")
    out: dict[Any, ScoreTable] = {}
    turn = 0
    while len(out) < len(setups):
        pending = {}
        for s, p in progress.items():
            if s in out:
                continue
            chunk = next(c for c in p.chunks if c[0] == p.watch.used)  # they run 0, 1, ... on
            refs = []
            for piece in shard_indices(len(chunk), scoring_shards(shards, len(chunk), n)):
                worker = pool.workers[turn % n]
                batches = [chunk[i] for i in piece]
                refs.append(worker.score.options(max_task_retries=1).remote(data_ref, s, batches))
                turn += 1
            pending[s] = (chunk, refs)
        for s, (chunk, refs) in pending.items():
            p = progress[s]
            got = _watching_storage(refs)
            p.parts += [(ScoreTable.from_dict(g["table"]), g["state"]) for g in got]
            table, state = merge_shards(p.parts)
            rule, w = s.rule(), p.watch
            now = tuple(plans(table)) if rule.on and plans is not None else None
            reason = w.observe(len(chunk), now, group_scores(table))
            if now is not None:
                worst = w.regret[-1]
                change = "set" if worst is None else f"with a {rule.change()}"
                worst_text = "" if worst is None else f" (worst {100 * worst:.2g}%)"
                log_wrapped(
                    log,
                    f"{s.method}/{s.fp8_recipe}: {w.used} score batches, {w.changes[-1]} of "
                    f"{len(now)} grid plans {change}{worst_text}",
                )
            if reason is None:
                continue
            meta = {
                **table.meta,
                "score_batches_used": w.used,
                "stop": reason,
                "plan_changes": list(w.changes),
                "plan_regret": list(w.regret),
                "budget": rule.key(),
            }
            table = replace(table, meta=meta)
            save(table, state, cache_dir)
            out[s] = table
            if rule.patience:
                explained = explain(reason, rule, w.used)
                log_wrapped(log, f"{s.method}/{s.fp8_recipe} scored: {explained}")
    return [out[s] for s in setups]

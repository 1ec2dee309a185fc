"""The device a worker runs on: the one model thread, synchronisation for timings, and peak GPU
memory per trial (:func:`peak_memory`) and per phase of a worker's life (:class:`PhasePeaks`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

T = TypeVar("T")
GIB = 2**30
# the allocator's peaks that peak_memory read (and reset) since a phase began, per GPU
_SEEN: dict[int, tuple[float, float]] = {}


def sync(device: str) -> None:
    """Wait for the device's queued work (a no-op on CPU): timings end here."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def peak_memory(device: str) -> dict[str, float]:
    """Peak GPU memory (allocated and reserved, GiB) since the last call, which resets it: of the
    fullest of this process's visible GPUs, which are the worker's own (a model spread over
    several fills each to its share; the memory plan is per GPU), and their sum."""
    if not device.startswith("cuda"):
        return {}
    gpus = range(torch.cuda.device_count())
    allocated = [torch.cuda.max_memory_allocated(g) / 2**30 for g in gpus]
    reserved = [torch.cuda.max_memory_reserved(g) / 2**30 for g in gpus]
    for g in gpus:
        seen = _SEEN.get(g, (0.0, 0.0))
        _SEEN[g] = (max(seen[0], allocated[g]), max(seen[1], reserved[g]))
        torch.cuda.reset_peak_memory_stats(g)
    out = {"peak_gpu_gib": max(allocated), "peak_gpu_reserved_gib": max(reserved)}
    if len(allocated) > 1:
        out["peak_gpu_gib_all"] = sum(allocated)
    return out


class PhasePeaks:
    """Peak GPU memory of each phase of a worker (``with peaks.phase("gradient"): ...``), summed
    over the process's GPUs: ``allocated_gib`` and ``reserved_gib`` from the allocator, and
    ``device_used_gib``, what ``nvidia-smi`` shows (total less free, every process on the GPU
    included), sampled every ``every_s`` by a thread while the phase runs and once at its end. A
    phase run again (scoring shards, trials) keeps its largest peaks. On CPU a phase records
    ``None`` for each. Phases do not nest.
    """

    KEYS = ("allocated_gib", "reserved_gib", "device_used_gib")

    def __init__(self, device: str, every_s: float = 0.05) -> None:
        self.cuda = device.startswith("cuda")
        self.every_s = every_s
        self.phases: dict[str, dict[str, float | None]] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if not self.cuda:
            try:
                yield
            finally:
                self.phases.setdefault(name, dict.fromkeys(self.KEYS))
            return
        gpus = range(torch.cuda.device_count())
        for g in gpus:
            torch.cuda.synchronize(g)
            torch.cuda.reset_peak_memory_stats(g)
            _SEEN.pop(g, None)
        used = [_used(g) for g in gpus]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(self.every_s):
                for g in gpus:
                    used[g] = max(used[g], _used(g))

        sampler = threading.Thread(target=sample, name=f"peaks-{name}", daemon=True)
        sampler.start()
        try:
            yield
        finally:
            for g in gpus:
                torch.cuda.synchronize(g)
            stop.set()
            sampler.join()
            for g in gpus:
                used[g] = max(used[g], _used(g))
            seen = [_SEEN.get(g, (0.0, 0.0)) for g in gpus]
            now = {
                "allocated_gib": sum(
                    max(seen[g][0], torch.cuda.max_memory_allocated(g) / GIB) for g in gpus
                ),
                "reserved_gib": sum(
                    max(seen[g][1], torch.cuda.max_memory_reserved(g) / GIB) for g in gpus
                ),
                "device_used_gib": sum(used),
            }
            before = self.phases.get(name) or {}
            self.phases[name] = {k: round(max(v, before.get(k) or 0.0), 4) for k, v in now.items()}

    def as_dict(self) -> dict[str, dict[str, float | None]]:
        return {k: dict(v) for k, v in self.phases.items()}


def _used(gpu: int) -> float:
    free, total = torch.cuda.mem_get_info(gpu)
    return (total - free) / GIB


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


_THREAD: ThreadPoolExecutor | None = None


def on_model_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on this process's one model thread and return its result (or raise its error).

    Ray Tune runs each trial's function on a thread of its own, also in a reused actor. On an H100
    the first fake-quant evaluation a thread makes costs about twice the CPU time of later ones
    (docs/benchmarks.md), so a trial on a new thread paid that every time; building the resident
    model and every evaluation on one long-lived thread pays it once per worker.
    """
    global _THREAD
    if _THREAD is None:
        _THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fp8-model")
    return _THREAD.submit(fn, *args, **kwargs).result()

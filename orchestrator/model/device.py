"""The device a worker runs on: the one model thread, synchronisation for timings, and peak GPU
memory per phase."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

T = TypeVar("T")


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
        torch.cuda.reset_peak_memory_stats(g)
    out = {"peak_gpu_gib": max(allocated), "peak_gpu_reserved_gib": max(reserved)}
    if len(allocated) > 1:
        out["peak_gpu_gib_all"] = sum(allocated)
    return out


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

"""Facts about where a run runs, read without starting CUDA: the git commit, this machine's GPUs
(nvidia-smi), host memory, and how long the process has been up."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import orchestrator
from orchestrator.core.config import PROJECT_ROOT

# What decides a score table's numbers (part of the score-cache key): a table scored with other
# releases of these is scored again.
MODEL_LIBRARIES = ("torch", "transformers", "nvidia-modelopt")


def library_versions(packages: Sequence[str] = MODEL_LIBRARIES) -> dict[str, str]:
    """Installed versions of ``packages``, ``not installed`` for one that is missing."""
    out = {}
    for p in packages:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "not installed"
    return out


def git_commit(root: Path = PROJECT_ROOT) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("GIT_COMMIT", "unknown")


def local_gpu_count() -> tuple[int, str]:
    """(count, reason) for this machine, without starting CUDA (or importing torch) in the driver.

    ``nvidia-smi`` answers in a fraction of a second; torch is the fallback where it is missing.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return 0, "CUDA_VISIBLE_DEVICES hides every GPU"
    caps = _smi_capabilities()
    if caps is None:
        import torch

        caps = [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
    if visible is not None:
        caps = caps[: len([v for v in visible.split(",") if v.strip()])]
    n = len(caps)
    if n == 0:
        return 0, "no CUDA device visible"
    cap = caps[0]
    fp8 = "FP8-capable" if cap >= (8, 9) else "no FP8 tensor cores (FP8 is emulated)"
    return n, f"{n} GPU(s), compute capability {cap[0]}.{cap[1]}: {fp8}"


def _smi_capabilities() -> list[tuple[int, int]] | None:
    """Each GPU's compute capability from ``nvidia-smi``; None when it cannot say."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        return [
            (int(major), int(minor))
            for major, minor in (
                line.strip().split(".") for line in out.splitlines() if line.strip()
            )
        ]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def local_gpu_memory_gib() -> list[float]:
    """Total memory (GiB) of each visible GPU here, from ``nvidia-smi``; empty without GPUs.

    ``CUDA_VISIBLE_DEVICES`` counts, as in :func:`local_gpu_count`. Torch answers only where a
    driver is present but ``nvidia-smi`` is not: a CPU machine's input checks import no torch.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        mib = [float(line) for line in out.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError, ValueError):
        if not Path("/dev/nvidiactl").exists():
            return []
        import torch

        n = torch.cuda.device_count()
        mib = [torch.cuda.get_device_properties(i).total_memory / 2**20 for i in range(n)]
    if visible is not None:
        mib = mib[: len([v for v in visible.split(",") if v.strip()])]
    return [m / 1024 for m in mib]


def host_memory_gib() -> float:
    """This machine's physical memory (GiB): what CPU workers share."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def process_age() -> float:
    """Seconds since this process began running the orchestrator (its package's first import,
    ``orchestrator.STARTED``): the start-up cost in logs and the sweep's wall time. Not the
    process's own start: a shell that ``exec``s its last command (``bash -c 'pip install ... &&
    python -m orchestrator.sweep'``) hands its start time, the install included, to Python."""
    return time.monotonic() - orchestrator.STARTED

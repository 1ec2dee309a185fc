"""Process set-up: logging, seeds, and the facts a run records about where it ran (and why)."""

from __future__ import annotations

import logging
import os
import random
import site
import subprocess
import sys
from pathlib import Path

import numpy as np

from orchestrator.config import PROJECT_ROOT


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stdout,
        force=True,
    )
    for noisy in ("alembic", "urllib3", "filelock", "ray.tune", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def seed_everything(seed: int) -> int:
    """Seeds random, numpy and (when loaded) torch; returns the seed for the record."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)
    return seed


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


def export_package_path() -> None:
    """Put this package's root on ``PYTHONPATH`` so local Ray workers import it from a checkout.

    Workers of a local Ray instance inherit the driver's environment, not its ``sys.path``; the
    driver leaves its working directory for the output folder before Ray starts, so a checkout run
    as ``python -m orchestrator.sweep`` without installing would be invisible to them. An installed
    package (site-packages) needs nothing.
    """
    root = PROJECT_ROOT.resolve()
    sites = {Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()]}
    if root in sites:
        return
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(root) not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(root), *parts])


def process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``; None elsewhere): start-up cost in logs.

    A process that was ``exec``-ed into (a shell's last command) counts from the shell's start.
    """
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return None


def default_tracking_uri(output: Path) -> str:
    return f"sqlite:///{(output / 'mlflow.db').resolve()}"


def absolute_uri(uri: str) -> str:
    """A relative ``sqlite:///name.db`` made absolute: the sweep and its trials run in other folders."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and uri != prefix + ":memory:":
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri

"""Process set-up: logging, seeds, and the facts a run records about where it ran (and why)."""

from __future__ import annotations

import logging
import os
import random
import secrets
import site
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from orchestrator.config import PROJECT_ROOT
from orchestrator.ownership import process_stat

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Ray, Tune, MLflow and friends log at INFO what a user of the sweep need not see even in a file.
_NOISY = ("alembic", "urllib3", "filelock", "ray.tune", "mlflow")


def _is_ours(record: logging.LogRecord) -> bool:
    return record.name == "orchestrator" or record.name.startswith("orchestrator.")


def setup_logging(verbose: bool = False, level: int = logging.INFO) -> None:
    """The console (stdout) shows the sweep's own records; ``verbose`` shows every library's too.

    Python warnings become log records (``py.warnings``), so a library's ``UserWarning`` stays off
    the console with the rest of its output.
    """
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
    if not verbose:
        console.addFilter(_is_ours)
    logging.basicConfig(level=level, handlers=[console], force=True)
    logging.captureWarnings(True)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def ray_environment(address: str | None, verbose: bool = False) -> None:
    """What Ray reads from the environment when it is imported, set before it is (explicit
    settings in the environment win).

    * A local instance the sweep starts (no ``--address``, no ``RAY_ADDRESS``) gets token auth with
      a token of its own, in the environment only. Left unset, Ray 2.60 turns token auth on and
      saves a new token to ``~/.ray/auth_token``, which then turns it on for every cluster the user
      starts later (and unauthenticated joins to those fail).
    * Unless ``verbose``: forwarded worker lines come as they are written, without Ray's
      ``(pid=...)`` prefix (a worker's records name the worker themselves) and without batching
      lines that differ only in their numbers (which would hold a progress line back for
      seconds); Tune's legacy reporter, silent at ``verbose=0``, replaces the new one, which
      prints its experiment table and a TensorBoard hint even then.
    """
    local = not address and not os.environ.get("RAY_ADDRESS")
    if local and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    if not verbose:
        for key in ("RAY_DEDUP_LOGS", "RAY_AIR_NEW_OUTPUT"):
            os.environ.setdefault(key, "0")
        os.environ.setdefault("RAY_DISABLE_WORKER_LOG_PREFIX", "1")


def divert_output(log_file: Path) -> Callable[[], None]:
    """While Ray runs in this (driver) process, all but the sweep's records go to ``log_file``;
    returns the function that undoes it.

    Ray's C++ core, Tune's prints, MLflow and transformers write to the process's stdout/stderr
    file descriptors, or to Python streams bound to them long before: descriptors 1 and 2 are
    pointed at ``log_file``. ``sys.stdout`` and the console handler keep the terminal (a copy of
    descriptor 1), and so do the worker lines Ray forwards to ``sys.stdout`` (workers write only
    the sweep's records there: :func:`route_worker_output`); what Ray forwards to ``sys.stderr``
    lands in the file. Every log record also goes to the file, so it tells the whole story.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = os.dup(1), os.dup(2)
    console = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    root = logging.getLogger()
    handlers = [h for h in root.handlers if type(h) is logging.StreamHandler]
    streams = [h.setStream(console) for h in handlers]
    file_handler = logging.FileHandler(log_file, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
    root.addHandler(file_handler)
    stdout, sys.stdout = sys.stdout, console

    def restore() -> None:
        sys.stdout = stdout
        for h, s in zip(handlers, streams, strict=True):
            h.setStream(s)
        root.removeHandler(file_handler)
        file_handler.close()
        console.close()
        sys.stderr.flush()
        for target, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, target)
            os.close(copy)

    return restore


_ROUTED = False


def route_worker_output(log_file: str | None, label: str, verbose: bool = False) -> None:
    """In a Ray worker process (once): the sweep's records on stdout, the rest to a file or stderr.

    Ray forwards a worker's stdout and stderr to the driver, which shows stdout on the console
    and keeps stderr in its log file (:func:`output_to`). So stdout carries only records of the
    ``orchestrator`` loggers, labelled (``[worker 0]``); with ``log_file`` the process's
    descriptors 1 and 2 (ModelOpt's prints and progress bars, warnings, transformers) go to that
    file, which also receives every record. ``verbose`` leaves the streams alone and shows every
    record.
    """
    global _ROUTED
    if _ROUTED:
        return
    _ROUTED = True
    fmt = logging.Formatter(
        f"%(asctime)s %(levelname)s %(name)s [{label}]: %(message)s", datefmt="%H:%M:%S"
    )
    console = logging.StreamHandler(sys.stdout)
    if not verbose:
        sys.stdout.flush()
        console = logging.StreamHandler(os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8"))
        console.addFilter(_is_ours)
        if log_file:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
    console.setFormatter(fmt)
    handlers: list[logging.Handler] = [console]
    if not verbose:
        rest = logging.StreamHandler(sys.stderr)
        rest.setFormatter(fmt)
        handlers.append(rest)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)
    logging.captureWarnings(True)
    for noisy in _NOISY:
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
    stat = process_stat()
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return None if stat is None else uptime - stat[1] / os.sysconf("SC_CLK_TCK")


def default_tracking_uri(output: Path) -> str:
    return f"sqlite:///{(output / 'mlflow.db').resolve()}"


def absolute_uri(uri: str) -> str:
    """A relative ``sqlite:///name.db`` made absolute: the sweep and its trials run in other
    folders."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and uri != prefix + ":memory:":
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri

"""The driver's side of a sweep's Ray session: the working folder, where libraries' output goes,
Ray itself and the worker pool, set up together and torn down in reverse, whatever happens.

Nothing a stage reads depends on the working directory (paths and the tracking URI are absolute);
the driver moves into ``--output`` anyway, which sidesteps Ray Jobs replacing the job's
``working_dir`` copy under a running Tune driver (ray#52343).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.core.inputs import Inputs
from orchestrator.runtime import stops
from orchestrator.runtime.logs import FILE_ONLY, divert_output
from orchestrator.search.ray_env import export_package_path

if TYPE_CHECKING:  # Ray is imported once the environment it reads is set (ray_env)
    from orchestrator.search.pool import WorkerPool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Session:
    pool: WorkerPool
    workers: int  # how many: one trial at a time on each


def logs_dir(inp: Inputs) -> Path | None:
    """Where Ray, Tune, ModelOpt and transformers write (None: the console, ``--verbose``)."""
    return None if inp.verbose else inp.output / "logs"


@contextmanager
def in_output_folder(inp: Inputs) -> Iterator[None]:
    """The driver in ``--output``, libraries' output in ``logs/driver.log`` until the end."""
    export_package_path()
    os.chdir(inp.output)
    logs = logs_dir(inp)
    restore = divert_output(logs / "driver.log") if logs else (lambda: None)
    try:
        yield
    finally:
        restore()


class RayUnavailable(Exception):
    """Ray did not start here, or the cluster at ``--address`` did not answer in Ray's own time;
    the message is the one line for the user (what failed and what to do), Ray's traceback went
    to the driver's log."""


@contextmanager
def ray_session(inp: Inputs) -> Iterator[Session]:
    """Ray joined or started, and the workers created at once: each imports ModelOpt and loads the
    model while the driver prepares the rest. Ray is shut down on the way out, SIGTERM and SIGINT
    included (``runtime/stops.py``: the handlers are taken back from ``ray.init``)."""
    from orchestrator.search import pool

    try:
        try:
            pool.connect(inp.address, os.environ.get("FP8_SWEEP_NODE_IP"))
        except Exception as e:  # Ray's start-up and join raise bare Exception, too
            raise _unavailable(inp, e) from e
        stops.take_back()  # ray.init set a SIGTERM handler that would exit 1, then abort (134)
        search = inp.cfg.search
        slots = pool.plan_workers(
            inp.need, search.gpus_per_worker, search.max_concurrent, local=not inp.address
        )
        workers = pool.WorkerPool.start(
            inp.cfg.model, slots, int(search.cpus_per_trial), logs_dir(inp)
        )
        yield Session(workers, len(slots))
    finally:
        pool.shutdown()


def _unavailable(inp: Inputs, e: Exception) -> RayUnavailable:
    """The one line for a Ray that did not come up; the traceback goes to the log file only."""
    logs = logs_dir(inp)
    log.error("Ray did not come up", exc_info=e, extra=FILE_ONLY)
    first = " ".join((str(e).strip().splitlines() or [""])[0].split()).rstrip(":")[:200]
    what = f"{e.__class__.__name__}: {first}" if first else e.__class__.__name__
    where = f"; Ray's traceback: {logs / 'driver.log'}" if logs else ""
    address = inp.address or os.environ.get("RAY_ADDRESS")  # ray.init joins RAY_ADDRESS too
    if address:
        named = f"--address {address}" if inp.address else f"RAY_ADDRESS={address}"
        return RayUnavailable(
            f"{named}: the Ray cluster there did not answer in time ({what}); check that its "
            f"head runs and this machine reaches it (ray status --address {address}), then run "
            f"the same command again{where}"
        )
    return RayUnavailable(
        f"the local Ray instance did not start in time ({what}); the machine may be overloaded "
        "or short of memory or /tmp space: run the same command again when it is less busy, or "
        f"start Ray yourself (ray start --head) and pass --address{where}"
    )

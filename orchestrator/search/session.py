"""The driver's side of a sweep's Ray session: the working folder, where libraries' output goes,
Ray itself and the worker pool, set up together and torn down in reverse, whatever happens.

Nothing a stage reads depends on the working directory (paths and the tracking URI are absolute);
the driver moves into ``--output`` anyway, which sidesteps Ray Jobs replacing the job's
``working_dir`` copy under a running Tune driver (ray#52343).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.core.inputs import Inputs
from orchestrator.runtime.logs import divert_output
from orchestrator.search.ray_env import export_package_path

if TYPE_CHECKING:  # Ray is imported once the environment it reads is set (ray_env)
    from orchestrator.search.pool import WorkerPool


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


@contextmanager
def ray_session(inp: Inputs) -> Iterator[Session]:
    """Ray joined or started, and the workers created at once: each imports ModelOpt and loads the
    model while the driver prepares the rest. Ray is shut down on the way out."""
    from orchestrator.search import pool

    try:
        pool.connect(inp.address, os.environ.get("FP8_SWEEP_NODE_IP"))
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

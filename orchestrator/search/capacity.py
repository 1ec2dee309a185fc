"""The memory plan at start-up: what a worker needs against what this machine (or cluster) has.

The driver calls :func:`plan` among its input checks, before Ray or MLflow start: the model's need
comes from its config alone (``memory.worker_need``), and on a local run this machine's GPUs come
from ``nvidia-smi``, so a model that fits none of them is refused there with the numbers
(:class:`~orchestrator.core.config.ConfigError`, exit 2, nothing written). On a cluster
(``--address``) the nodes are only known once Ray is up; ``pool.plan_workers`` places the workers
then, with the same arithmetic, and refuses the same way.

Without GPUs (``search.gpus: auto`` on a CPU machine) the plan is still printed and CPU workers
run, each holding its own model in the host's memory: ``search.max_concurrent`` of them must fit
it, else the check refuses and says how many would. The 72B preset is refused that way on a CPU
machine, with ``gpus: required`` as well as without.
"""

from __future__ import annotations

import logging

from orchestrator.core.config import ConfigError, SweepConfig
from orchestrator.core.memory import Node, WorkerNeed, Workload, cpu_workers, place, worker_need
from orchestrator.core.numerics import resolved_dtype
from orchestrator.model.loading import ModelFacts
from orchestrator.outputs.console import log_wrapped

log = logging.getLogger(__name__)


def workload_of(cfg: SweepConfig, facts: ModelFacts) -> Workload:
    """What a worker runs, in the dtype it will load (``auto``: BF16, the export's, on every
    device)."""
    dtype = resolved_dtype(cfg.model.dtype)
    d = cfg.data
    return Workload(
        facts.params,
        2 if dtype == "bfloat16" else 4,
        dtype,
        facts.num_layers,
        facts.hidden_size,
        facts.vocab_size,
        d.batch_size,
        d.seq_len,
        d.calib_batches,
        d.eval_batches,
        d.report_batches,
        tuple(cfg.scoring.methods),
        cfg.search.reference_cache_gib,
    )


def need_of(cfg: SweepConfig, facts: ModelFacts) -> WorkerNeed:
    """The worker's need per phase (``memory.worker_need``)."""
    return worker_need(workload_of(cfg, facts))


def plan(cfg: SweepConfig, facts: ModelFacts, address: str | None) -> WorkerNeed:
    """Log the plan; refuse a model that fits nowhere here. Returns the need for the cluster."""
    from orchestrator.runtime.host import host_memory_gib, local_gpu_count, local_gpu_memory_gib

    need = need_of(cfg, facts)
    if address:
        log_wrapped(
            log, f"memory plan: {need.describe()}; placed once the cluster's nodes are known"
        )
        return need
    gpus = local_gpu_memory_gib()
    log_wrapped(log, f"memory plan: {need.describe()}")
    source = f"model.source={cfg.model.source!r}"
    if not gpus:
        if cfg.search.gpus == "required":
            _, why = local_gpu_count()
            raise ConfigError(
                f"search.gpus='required' but this machine has none ({why}); {source}: "
                f"{need.describe()}; use gpus=auto or run on a GPU machine"
            )
        wanted = cfg.search.max_concurrent or 1
        count, line = cpu_workers(need.with_copy_gib(), host_memory_gib(), wanted)
        log_wrapped(log, f"memory plan: {line}")
        if count < wanted:
            raise ConfigError(
                f"{source}: {need.describe()}; {line}; lower search.max_concurrent to "
                f"{count} or run on GPUs"
                if count
                else f"{source}: {need.describe()}; {line}; run on GPUs"
            )
        return need
    node = Node("this machine", len(gpus), min(gpus))
    placement = place(need, [node], cfg.search.gpus_per_worker, cfg.search.max_concurrent)
    for line in placement.lines:
        log_wrapped(log, f"memory plan: {line}")
    if not placement.workers:
        raise ConfigError(f"{source}: {need.describe()}; {placement.lines[0]}")
    return need

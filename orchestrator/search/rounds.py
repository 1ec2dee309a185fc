"""The sweep's Ray stages after start-up: scoring fanned out over the workers, then the two Tune
rounds (the grid; the controls at each published scheme's share), each resumable. Between them
the driver asks ModelOpt's own solver for each scheme's share (the ``modelopt`` control) and
stores its answer in the score tables, which the paired round and the outputs then read."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.core.inputs import Inputs
from orchestrator.core.objectives import Objective
from orchestrator.core.planning import MODELOPT
from orchestrator.core.points import control_points, grid_plans, grid_points
from orchestrator.core.records import NamedScheme, ScoreTable, TrialResult, table_key
from orchestrator.outputs import integrity
from orchestrator.outputs.tables import write_score_tables
from orchestrator.tracking.sweep_run import run_tags

if TYPE_CHECKING:
    from orchestrator.model.data import DataSets
    from orchestrator.search.pool import WorkerPool
    from orchestrator.search.trial import TrialContext
    from orchestrator.tracking.client import TrackingTarget

log = logging.getLogger(__name__)


def score_all(inp: Inputs, pool: WorkerPool, data_ref: object, data: DataSets) -> list[ScoreTable]:
    """Cached tables are read here; the rest are scored by the workers, every shard at once."""
    from orchestrator.model.scoring import ScoringSetup, load_cached
    from orchestrator.search.pool import run_scoring, scoring_shards

    cfg = inp.cfg
    # a chunk is split in shards over the workers: one smaller than the shards would idle GPUs
    shards = scoring_shards(cfg.scoring.shards, cfg.scoring.num_score_steps, len(pool.workers))
    chunk = max(cfg.scoring.adaptive.chunk, shards)
    setups = [
        ScoringSetup(
            cfg.model.source,
            cfg.model.revision,
            inp.profile,
            data.score.hash,
            method,
            recipe,
            cfg.scoring.num_calib_steps,
            cfg.scoring.num_score_steps,
            cfg.scoring.reuse_prefix,
            chunk,
            cfg.scoring.adaptive.patience,
            cfg.scoring.adaptive.tolerance,
        )
        for method in cfg.scoring.methods
        for recipe in cfg.scoring.fp8_recipes
    ]
    cache = score_cache(inp)
    cached = {s: load_cached(cache, s) for s in setups}
    missing = [s for s, t in cached.items() if t is None]
    t0 = time.perf_counter()
    fresh = {}
    if missing:
        scored = run_scoring(
            pool,
            data_ref,
            missing,
            cache,
            cfg.scoring.shards,
            plans=lambda table: grid_plans(cfg.search, table),
        )
        fresh = dict(zip(missing, scored, strict=True))
    log.info(
        "scores: %d cached, %d computed in %.1fs",
        len(setups) - len(missing),
        len(missing),
        time.perf_counter() - t0,
    )
    return [cached[s] or fresh[s] for s in setups]


def score_cache(inp: Inputs) -> Path:
    """Where the score tables are cached, each with ModelOpt's search state."""
    return inp.output / "score_cache"


def trial_context(
    inp: Inputs,
    pool: WorkerPool,
    data_ref: object,
    data: DataSets,
    tables: Sequence[ScoreTable],
    target: TrackingTarget,
    reference_cache_bytes: int,
) -> TrialContext:
    from orchestrator.search import trial

    return trial.TrialContext(
        data=[data_ref],
        data_hashes=data.hashes(),
        dispatcher=pool.dispatcher,
        tables={table_key(t.method, t.fp8_recipe): t for t in tables},
        tracking=target,
        run_tags=run_tags(),
        reference_cache_bytes=reference_cache_bytes,
        seed=inp.cfg.seed,
        verbose=inp.verbose,
    )


def run_rounds(
    inp: Inputs, ctx: TrialContext, workers: int
) -> tuple[list[TrialResult], list[ScoreTable]]:
    """Round 1, the grid; then round 2, the controls at each published scheme's share. Returns
    the results and the score tables, with ModelOpt's solves at the schemes' shares when the
    controls include it.

    Each round is a Tune experiment of its own under the output folder, so each resumes.
    """
    from orchestrator.core.selection import SelectionError, select
    from orchestrator.search import tuner

    cfg = inp.cfg
    points, total = grid_points(cfg.search, ctx.tables)
    log.info("%d grid point(s) -> %d distinct plan(s)", total, len(points))
    space: dict[str, Sequence[Any]] = {
        "effective_bits": cfg.search.effective_bits,
        "coverage": cfg.search.coverage,
        "method": cfg.scoring.methods,
        "fp8_recipe": cfg.scoring.fp8_recipes,
        "strategy": cfg.search.strategies,
    }
    settings = tuner.TuneSettings(
        inp.output / "ray_results",
        "tune",
        cfg.search.max_failures,
        cfg.search.cpus_per_trial,
        cfg.search.searcher,
        cfg.search.num_samples,
        cfg.seed,
        cfg.selection.objective,
    )
    results = tuner.run_trials(ctx, points, space, settings, workers)
    objective = Objective(cfg.selection.objective)
    try:
        schemes = select(results, inp.catalog, cfg.selection.max_kl, objective).schemes
    except SelectionError:  # conclude reports why; there is nothing to compare with
        return results, list(ctx.tables.values())
    measured = {r.plan_hash for r in results if r.status == "FINISHED"}
    specs = cfg.controls.specs()
    if MODELOPT in specs:
        ctx = replace(ctx, tables=solve_with_modelopt(inp, ctx.tables, schemes))
    extra = control_points(ctx.tables, schemes, specs, measured)
    log.info(
        "paired round: %d control(s) x %d scheme(s) -> %d plan(s) not yet measured",
        len(specs),
        len(schemes),
        len(extra),
    )
    tables = list(ctx.tables.values())
    if not extra:
        return results, tables
    grid = replace(settings, name="tune-controls", searcher="grid")
    return results + tuner.run_trials(ctx, extra, space, grid, workers), tables


def solve_with_modelopt(
    inp: Inputs, tables: Mapping[str, ScoreTable], schemes: Sequence[NamedScheme]
) -> dict[str, ScoreTable]:
    """ModelOpt's own solve at each scheme's share, stored in the tables (and in ``scores/``, so
    ``select`` reads the same plans without ModelOpt); a resumed sweep solves again, the same."""
    t0 = time.perf_counter()
    from orchestrator.model.modelopt_plan import with_modelopt_solves  # torch, then ModelOpt

    solved = with_modelopt_solves(tables, schemes, score_cache(inp))
    # rewritten with the plans: their hashes recorded again, or select would refuse them
    integrity.record(inp.output, write_score_tables(inp.output, list(solved.values())))
    log.info(
        "ModelOpt's own solves at %d share(s): %.1fs with the imports",
        len(schemes),
        time.perf_counter() - t0,
    )
    return solved

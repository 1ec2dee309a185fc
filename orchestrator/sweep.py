"""``python -m orchestrator.sweep``: score once, one trial per distinct plan, name three schemes,
then measure the controls at their shares and compare.

    python -m orchestrator.sweep                                # offline demo (tiny preset, CPU ok)
    python -m orchestrator.sweep --config search_spaces/qwen2_5_vl_3b_fp8.yaml --output runs/3b
    python -m orchestrator.sweep --address ray://head:10001 --tracking-uri http://mlflow:5000 ...
    python -m orchestrator.sweep --set search.coverage=[0.5,1.0] --set seed=7

Exit codes: 0 done; 2 bad input (config, flags, model, data, output folder), reported before any
Ray, MLflow or model work; 3 the sweep ended but a catalog name cannot be honoured (no measured
point holds its FP8 share; the message names the budget to add); 4 the schemes were chosen
without trials that failed (published all the same; one line names their plans, and
schemes.yaml lists them under ``missing_plans``; 4 wins over 3); 5 the storage refused a write
(a full disk, an I/O error; ``outputs/storage.py``): the sweep stops within seconds with one
line naming the file and the free space, and the same command resumes once there is space;
143 / 130 stopped by SIGTERM / SIGINT (Ray shut down, the folder released, finished trials
kept); 1 anything else (a Ray that does not start or cannot be joined says so in one line; its
traceback is in logs/driver.log).
Running the same command on the same ``--output`` resumes: finished trials are not run again
(failed ones are), and a start that failed before it recorded its sweep (config.yaml and logs/
only) is taken over.
One driver per ``--output`` (``outputs/ownership.py``): while it runs, a second one exits 2 naming
it; one that died is taken over.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from orchestrator import cli
from orchestrator.checks import check_inputs
from orchestrator.core.config import ConfigError
from orchestrator.core.inputs import Inputs
from orchestrator.core.missing import missing_entries, missing_line
from orchestrator.core.objectives import Objective
from orchestrator.core.records import ScoreTable, TrialResult, table_key
from orchestrator.model.data import DataSets
from orchestrator.outputs import integrity, ownership, storage
from orchestrator.outputs.console import WIDTH, log_wrapped, wrap
from orchestrator.outputs.files import read_sweep_json, write_json, write_sweep_json, write_text
from orchestrator.outputs.publish import SweepFacts, finalize
from orchestrator.outputs.summary import closing_lines, print_summary
from orchestrator.outputs.tables import write_score_tables
from orchestrator.runtime import stops
from orchestrator.runtime.host import process_age
from orchestrator.runtime.logs import setup_logging
from orchestrator.runtime.seeds import seed_everything
from orchestrator.search.ray_env import ray_environment
from orchestrator.search.rounds import run_rounds, score_all, trial_context
from orchestrator.search.session import RayUnavailable, Session, in_output_folder, ray_session
from orchestrator.tracking.sweep_run import print_where, publish, settle_tracking, start_tracking
from orchestrator.tracking.uri import default_tracking_uri

if TYPE_CHECKING:  # Ray and MLflow are imported once the environment they read is set
    from orchestrator.search.trial import TrialContext
    from orchestrator.tracking.client import TrackingTarget

log = logging.getLogger("orchestrator.sweep")


def parser() -> cli.Parser:
    p = cli.Parser(
        "orchestrator.sweep",
        __doc__,
        output="output folder (default: runs/<name>)",
        verbose="show what Ray, Tune, ModelOpt and transformers print (default: in <output>/logs/)",
    )
    p.add_argument("--config", type=Path, help="sweep YAML (default: the offline demo)")
    p.add_argument("--tracking-uri", help="MLflow URI (default: sqlite:///<output>/mlflow.db)")
    p.add_argument("--address", help="existing Ray cluster to join (default: start a local one)")
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return parser().parse_args(argv)


def prepare(inp: Inputs, data: DataSets) -> TrackingTarget:
    """The MLflow parent run, and sweep.json that records it with the data sets' hashes. Every
    path in it is relative to ``--output``, and the tracking URI is there only when the user gave
    one (``tracking/uri.py``): a copied or moved folder keeps writing to itself."""
    cfg = inp.cfg
    target = start_tracking(inp, data)
    previous = read_sweep_json(inp.output) or {}
    given = inp.tracking_uri != default_tracking_uri(inp.output)
    write_sweep_json(
        inp.output,
        {
            "name": cfg.name,
            "config_hash": inp.config_hash,
            "parent_run_id": target.parent_run_id,
            "experiment_id": target.experiment_id,
            **({"tracking_uri": inp.tracking_uri} if given else {}),
            "ray_storage_path": "ray_results",
            "data_hashes": data.hashes(),
            # the files of an earlier run keep their hashes until this run rewrites them
            integrity.FILES: integrity.hashed(
                inp.output, ["config.yaml"], previous.get(integrity.FILES) or {}
            ),
        },
    )
    return target


def run(inp: Inputs, data: DataSets) -> int:
    """The stages, in order; each resumes from what ``--output`` already holds. ``data`` was built
    by the input checks."""
    record_config(inp)
    with in_output_folder(inp), ThreadPoolExecutor(max_workers=1) as side:
        tracked = side.submit(prepare, inp, data)  # MLflow while Ray and the workers start
        with ray_session(inp) as session:
            target = tracked.result()
            ctx = score(inp, session, data, target)
            results, tables = run_rounds(inp, ctx, session.workers)
            write_json(inp.output / "workers.json", session.pool.log_startup(inp.need))
    return conclude(inp, target, tables, results, data)


def record_config(inp: Inputs) -> None:
    """Seed, write the resolved config, and say so."""
    cfg = inp.cfg
    seed_everything(cfg.seed)
    inp.output.mkdir(parents=True, exist_ok=True)
    write_text(
        inp.output / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    )
    log_wrapped(
        log,
        f"resolved config {inp.config_hash} in {inp.output / 'config.yaml'} (model "
        f"{cfg.model.source}; {' + '.join(cfg.scoring.methods)} scores; inputs checked "
        f"{process_age():.1f}s after start)",
    )


def score(inp: Inputs, session: Session, data: DataSets, target: TrackingTarget) -> TrialContext:
    """The score tables (cached or scored by the workers), then the resident calibrated models;
    returns what every trial needs, the tables included."""
    from orchestrator.search.pool import put  # imports Ray: only once main set its environment

    data_ref = put(data)
    tables = score_all(inp, session.pool, data_ref, data)
    reference_cache_bytes = int(inp.cfg.search.reference_cache_gib * (1 << 30))
    session.pool.prepare(data_ref, inp.cfg.scoring.fp8_recipes[0], reference_cache_bytes)
    integrity.record(inp.output, write_score_tables(inp.output, tables))
    return trial_context(inp, session.pool, data_ref, data, tables, target, reference_cache_bytes)


def conclude(
    inp: Inputs,
    target: TrackingTarget,
    tables: Sequence[ScoreTable],
    results: list[TrialResult],
    data: DataSets,
) -> int:
    cfg = inp.cfg
    settled = settle_tracking(target, results)
    results = [
        r if r.mlflow_run_id else replace(r, mlflow_run_id=settled.run_ids.get(r.plan_hash, ""))
        for r in results
    ]
    header = {
        "sweep": cfg.name,
        "config_hash": inp.config_hash,
        "seed": cfg.seed,
        "parent_run_id": target.parent_run_id,
    }
    if missing_entries(results):  # published all the same, but never silently
        header["missing_plans"] = missing_entries(results)
    done = finalize(
        inp.output,
        results,
        {table_key(t.method, t.fp8_recipe): t for t in tables},
        inp.catalog,
        cfg.selection.max_kl,
        header,
        SweepFacts.of(cfg, data.hashes()),
        objective=Objective(cfg.selection.objective),
    )
    integrity.record(inp.output, integrity.published(done.entries, done.knee))
    problems = settled.problems + publish(inp, target, tables, results, done)
    print_summary(results, done, inp.output)
    print_where(inp, target)
    if problems:
        write_json(inp.output / "unlogged.json", {"problems": problems})
        warning = (
            f"warning: {len(problems)} item(s) could not be written to MLflow at {target.uri}; "
            f"see {inp.output / 'unlogged.json'} (results are in trials.parquet)"
        )
        for line in wrap(warning, WIDTH):
            print(line)
    for line in closing_lines(done, inp.output, process_age()):  # the next step, the time taken
        print(line)
    if done.error:
        print(f"error: {done.error}", file=sys.stderr)
    gone = missing_line(results)
    if gone:  # before exit 3: the missing trials may be what a name lacks
        print(f"error: {gone}", file=sys.stderr)
        return cli.ExitCode.MISSING_TRIALS
    return cli.ExitCode.NO_FRONT if done.error else cli.ExitCode.OK


@cli.command  # bad input, wherever raised: one line on stderr, exit 2
def main(argv: Sequence[str] | None = None) -> int:
    """Parse, check the inputs and build the data sets, take ``--output`` (before any Ray, MLflow
    or model work), then run."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    inp, data = check_inputs(args)
    owned = ownership.acquire(inp.output)  # held until the driver exits, SIGTERM included
    ray_environment(inp.address, inp.verbose)
    with owned, stops.on_overrun(owned.release):  # a stop stuck in Ray still releases it
        try:
            return run(inp, data)
        except ConfigError:  # no node of the cluster can hold a worker (known once Ray is up)
            raise  # bad input, exit 2; anything else from here on fails: exit 1
        except RayUnavailable as e:  # one line; Ray's traceback is in logs/driver.log
            print(f"error: {e}", file=sys.stderr)
            return cli.ExitCode.ERROR
        except KeyboardInterrupt:  # SIGTERM or SIGINT (runtime/stops.py): Ray is shut down
            log.warning(
                "stopped by %s; finished trials are kept: the same command resumes the sweep",
                stops.name(),
            )
            return stops.exit_code()
        except Exception as e:
            full = storage.find(e, inp.output)  # a full disk, wherever it was met: exit 5
            if full is not None:
                raise full from None
            where = "" if inp.verbose else f" (libraries' output: {inp.output / 'logs'}/)"
            log.exception("sweep failed%s", where)
            return cli.ExitCode.ERROR


if __name__ == "__main__":
    sys.exit(main())

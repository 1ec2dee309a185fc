"""``python -m orchestrator.sweep``: score once, one trial per distinct plan, name three schemes,
then measure the controls at their shares and compare.

    python -m orchestrator.sweep                                # offline demo (tiny preset, CPU ok)
    python -m orchestrator.sweep --config search_spaces/qwen2_5_vl_3b_fp8.yaml --output runs/3b
    python -m orchestrator.sweep --address ray://head:10001 --tracking-uri http://mlflow:5000 ...
    python -m orchestrator.sweep --set search.coverage=[0.5,1.0] --set seed=7

Exit codes: 0 done; 2 bad input (config, flags, model, data, output folder), reported before any
Ray, MLflow or model work; 3 the sweep ended but a catalog name cannot be honoured (no measured
point holds its FP8 share; the message names the budget to add); 1 anything else.
Running the same command on the same ``--output`` resumes: finished trials are not run again.
One driver per ``--output`` (``ownership.py``): while it runs, a second one exits 2 naming it; one
that died is taken over.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from orchestrator import ownership
from orchestrator.config import (
    PROJECT_ROOT,
    Catalog,
    ConfigError,
    SweepConfig,
    load_catalog,
    load_config,
)
from orchestrator.data import DataError, DataSets, check_source
from orchestrator.images import eval_image_fraction, image_source
from orchestrator.memory import WorkerNeed
from orchestrator.objectives import Objective
from orchestrator.outputs import (
    Finalized,
    SweepFacts,
    finalize,
    read_sweep_json,
    scheme_tracking,
    summary_lines,
    write_json,
    write_score_tables,
    write_text,
)
from orchestrator.points import control_points, grid_points, table_key, unreachable_names
from orchestrator.records import ScoreTable, TrialResult

log = logging.getLogger("orchestrator.sweep")

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_NO_FRONT = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see --help)\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = _Parser(prog="python -m orchestrator.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, help="sweep YAML (default: the offline demo)")
    p.add_argument("--output", type=Path, help="output folder (default: runs/<name>)")
    p.add_argument("--tracking-uri", help="MLflow URI (default: sqlite:///<output>/mlflow.db)")
    p.add_argument("--address", help="existing Ray cluster to join (default: start a local one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show what Ray, Tune, ModelOpt and transformers print (default: in <output>/logs/)",
    )
    return p.parse_args(argv)


@dataclass(frozen=True)
class Inputs:
    cfg: SweepConfig  # file paths made absolute
    config_hash: str  # of the config as written, so a sweep resumes from any working directory
    output: Path
    tracking_uri: str
    address: str | None
    catalog: Catalog  # read before Ray starts: nothing is read from the package afterwards
    profile: str
    need: WorkerNeed  # the memory plan: what one worker needs (orchestrator/memory.py)
    verbose: bool = False  # libraries' output on the console instead of in logs/


def absolute_paths(cfg: SweepConfig) -> SweepConfig:
    """Every file the config names, made absolute: the driver leaves its working directory."""
    from orchestrator.profiles import PRESETS, SHIPPED_PRESETS

    def fix(path: str | None) -> str | None:
        """Relative to the working directory, else to the project (shipped data and catalog)."""
        if path is None or path == "synthetic" or path.startswith("hf:"):
            return path
        p = Path(path).expanduser()
        if not p.is_absolute() and not p.exists() and (PROJECT_ROOT / p).exists():
            p = PROJECT_ROOT / p
        return str(p.resolve())

    model = cfg.model
    named = model.source in PRESETS or model.source in SHIPPED_PRESETS
    if not named and Path(model.source).expanduser().exists():
        model = model.model_copy(update={"source": fix(model.source)})
    data = cfg.data.model_copy(
        update={
            "source": fix(cfg.data.source),
            "eval_source": fix(cfg.data.eval_source),
            "image_source": fix(cfg.data.image_source),
        }
    )
    selection = cfg.selection.model_copy(update={"catalog": fix(cfg.selection.catalog)})
    return cfg.model_copy(update={"model": model, "data": data, "selection": selection})


def check_inputs(args: argparse.Namespace) -> Inputs:
    """Everything that can be wrong with the input, found before any Ray/MLflow/model work."""
    written = load_config(args.config, args.set)
    cfg = absolute_paths(written)
    catalog = load_catalog(cfg.selection.catalog)
    unreachable = unreachable_names(cfg.search, catalog)
    if unreachable:
        raise ConfigError("; ".join(unreachable))
    _check_sources(cfg)
    profile = _check_model(cfg)
    if image_source(cfg.data) is not None:
        _image_samples(cfg)  # reads and encodes every record: a bad one fails here
    need = plan_memory(cfg, args.address)
    output = (args.output or Path("runs") / cfg.name).expanduser().resolve()
    ownership.check_free(output)  # first: a running sweep's folder is in use, whatever it holds
    previous = read_sweep_json(output)
    if previous is not None and previous.get("config_hash") != written.config_hash():
        raise ConfigError(
            f"--output {output} holds sweep {previous.get('name')!r} with config hash "
            f"{previous.get('config_hash')}, not {written.config_hash()}; use another --output"
        )
    if (
        output.exists()
        and previous is None
        and any(p.name != ownership.OWNER_DIR for p in output.iterdir())
    ):
        raise ConfigError(
            f"--output {output} is not empty and holds no sweep; use another --output"
        )
    from orchestrator.runtime import absolute_uri, default_tracking_uri

    uri = absolute_uri(
        args.tracking_uri
        or (previous or {}).get("tracking_uri")
        or os.environ.get("MLFLOW_TRACKING_URI")  # set by `mlflow run` and by MLflow users
        or default_tracking_uri(output)
    )
    return Inputs(
        cfg, written.config_hash(), output, uri, args.address, catalog, profile, need, args.verbose
    )


def plan_memory(cfg: SweepConfig, address: str | None) -> WorkerNeed:
    """Print the memory plan; a model that fits no worker here is refused (``capacity``)."""
    from orchestrator import capacity
    from orchestrator.profiles import model_facts

    facts = model_facts(cfg.model.source, cfg.model.revision, cfg.model.trust_remote_code)
    return capacity.plan(cfg, facts, address)


def _check_model(cfg: SweepConfig) -> str:
    """The model's profile name, once its config resolves and fits the data settings."""
    from orchestrator.profiles import model_facts, profile_for

    try:
        facts = model_facts(cfg.model.source, cfg.model.revision, cfg.model.trust_remote_code)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise ConfigError(
            f"model.source={cfg.model.source!r}: not a preset, a local folder with config.json, "
            f"or a reachable hub id ({first[:160]})"
        ) from None
    try:
        profile = profile_for(facts.model_type)
    except ValueError as e:
        raise ConfigError(f"model.source={cfg.model.source!r}: {e}") from None
    if cfg.data.seq_len > facts.max_position_embeddings:
        raise ConfigError(
            f"data.seq_len={cfg.data.seq_len} exceeds the model's max_position_embeddings "
            f"{facts.max_position_embeddings}"
        )
    images = image_source(cfg.data)
    if images is not None and not facts.has_vision:
        raise ConfigError(
            f"data.image_source={images!r}: model {cfg.model.source!r} has no vision tower; "
            "use text data for a text-only model"
        )
    return profile.name


def _check_sources(cfg: SweepConfig) -> None:
    """Text files readable, the image+text mix possible; records are read in _image_samples."""
    from orchestrator.images import check_mix

    check_mix(cfg.data)
    if cfg.selection.objective == "image_kl_mean" and (
        image_source(cfg.data) is None or eval_image_fraction(cfg.data) == 0
    ):
        raise ConfigError(
            "selection.objective='image_kl_mean': the evaluation set has no image+text rows; "
            "set data.image_source (or an image+text data.source) with data.eval_image_fraction "
            "> 0, or use kl_mean"
        )
    if image_source(cfg.data) != cfg.data.source:
        check_source(cfg.data.source, "data.source", cfg.data.text_field)
    if cfg.data.eval_source:
        check_source(cfg.data.eval_source, "data.eval_source", cfg.data.text_field)


def _image_samples(cfg: SweepConfig) -> Any:
    """The encoded image+text records (``data.ImageSamples``) through the model's processor."""
    from orchestrator.images import image_samples
    from orchestrator.profiles import PRESETS, resolve_config, resolve_source

    m = cfg.model
    if m.source in PRESETS:
        raise ConfigError(
            f"model.source={m.source!r}: a random preset has no tokenizer or image processor for "
            "image+text data; use wikitext-qwen2.5-vl or a model folder"
        )
    hf = resolve_config(m.source, m.revision, m.trust_remote_code)
    return image_samples(cfg.data, resolve_source(m.source), m.revision, m.trust_remote_code, hf)


def build_data(cfg: SweepConfig) -> DataSets:
    from orchestrator.data import build_datasets, byte_tokenizer, hf_tokenizer
    from orchestrator.profiles import PRESETS, model_facts, resolve_source

    facts = model_facts(cfg.model.source, cfg.model.revision, cfg.model.trust_remote_code)
    vocab = facts.vocab_size
    if cfg.data.source == "synthetic":
        tokenize = None
    elif cfg.model.source in PRESETS:  # random weights, no tokenizer of their own
        tokenize = byte_tokenizer(vocab)
    else:  # a shipped preset reads text with its own tokenizer, from its folder
        tokenize = hf_tokenizer(
            resolve_source(cfg.model.source), cfg.model.revision, cfg.model.trust_remote_code
        )
    images = _image_samples(cfg) if image_source(cfg.data) is not None else None
    return build_datasets(cfg.data, vocab, tokenize, cfg.seed, images)


def score_all(inp: Inputs, pool: Any, data_ref: Any, data: DataSets) -> list[ScoreTable]:
    """Cached tables are read here; the rest are scored by the workers, every shard at once."""
    from orchestrator import cluster
    from orchestrator.scoring import ScoringSetup, load_cached

    cfg = inp.cfg
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
        )
        for method in cfg.scoring.methods
        for recipe in cfg.scoring.fp8_recipes
    ]
    cache = inp.output / "score_cache"
    cached = {s: load_cached(cache, s) for s in setups}
    missing = [s for s, t in cached.items() if t is None]
    t0 = time.perf_counter()
    fresh = {}
    if missing:
        scored = cluster.run_scoring(pool, data_ref, missing, cache, cfg.scoring.shards)
        fresh = dict(zip(missing, scored, strict=True))
    log.info(
        "scores: %d cached, %d computed in %.1fs",
        len(setups) - len(missing),
        len(missing),
        time.perf_counter() - t0,
    )
    return [cached[s] or fresh[s] for s in setups]


def run_tags() -> dict[str, str]:
    from orchestrator.runtime import git_commit
    from orchestrator.scoring import library_versions

    return {
        "git_commit": git_commit(),
        **{f"version.{k}": v for k, v in library_versions().items()},
    }


def start_tracking(inp: Inputs, data: DataSets) -> Any:
    from orchestrator import tracking

    cfg = inp.cfg
    previous = read_sweep_json(inp.output) or {}
    existing = previous.get("parent_run_id") or os.environ.get("MLFLOW_RUN_ID")
    exp_id = (
        tracking.run_experiment(inp.tracking_uri, existing)
        if existing
        else tracking.ensure_experiment(
            inp.tracking_uri, cfg.experiment, inp.output / "mlartifacts", describe(inp, False)
        )
    )
    flat = _flatten(cfg.model_dump(mode="json", exclude={"fault"}))
    tags = {
        tracking.NOTE_TAG: describe(inp, True),
        "config_hash": inp.config_hash,
        "kind": "sweep",
        **run_tags(),
        **{f"data_hash.{k}": v for k, v in data.hashes().items()},
    }
    parent = tracking.start_parent(inp.tracking_uri, exp_id, cfg.name, flat, tags, existing)
    target = tracking.TrackingTarget(inp.tracking_uri, exp_id, parent)
    tracking.share_view(target, KEY_COLUMNS, ("metrics", "achieved_bits"))
    return target


# What the runs table shows beside each trial's name (the point, the plan's size, its quality)
KEY_COLUMNS = (
    ("params", "method"),
    ("params", "strategy"),
    ("params", "control"),
    ("params", "effective_bits"),
    ("params", "coverage"),
    ("metrics", "achieved_bits"),
    ("metrics", "fp8_fraction"),
    ("metrics", "kl_mean"),
    ("metrics", "top1_agreement"),
    ("tags", "scheme_name"),
)


def describe(inp: Inputs, parent: bool) -> str:
    """The description MLflow's UI shows for the sweep's parent run, or for its experiment."""
    cfg = inp.cfg
    what = (
        f"FP8 mixed-precision sweep `{cfg.name}` of `{cfg.model.source}`: ModelOpt AutoQuantize "
        f"scores ({', '.join(cfg.scoring.methods)}), then one child run per distinct FP8 plan "
        f"over effective bits {cfg.search.effective_bits} x coverage {cfg.search.coverage}"
        + (
            ", then naive controls at each published scheme's FP8 share"
            if cfg.controls.enabled
            else ""
        )
        + ". The three published schemes are the child runs tagged `scheme_name`."
    )
    where = f"Outputs (schemes.yaml, trials.parquet, pareto.png, logs/): `{inp.output}`"
    if parent:
        return f"{what}\n\n{where}"
    return f"{what} One parent run per sweep, its trials nested under it.\n\n{where}"


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def prepare(inp: Inputs) -> tuple[DataSets, Any]:
    """The data sets and the MLflow parent run, and sweep.json that records them."""
    cfg = inp.cfg
    data = build_data(cfg)
    target = start_tracking(inp, data)
    write_json(
        inp.output / "sweep.json",
        {
            "name": cfg.name,
            "config_hash": inp.config_hash,
            "parent_run_id": target.parent_run_id,
            "experiment_id": target.experiment_id,
            "tracking_uri": inp.tracking_uri,
            "ray_storage_path": str(inp.output / "ray_results"),
            "data_hashes": data.hashes(),
        },
    )
    return data, target


def run(inp: Inputs) -> int:
    from orchestrator import cluster
    from orchestrator.runtime import (
        divert_output,
        export_package_path,
        process_age,
        seed_everything,
    )

    cfg = inp.cfg
    seed_everything(cfg.seed)
    inp.output.mkdir(parents=True, exist_ok=True)
    write_text(
        inp.output / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    )
    log.info(
        "resolved config %s in %s (model %s; %s scores; inputs checked %.1fs after start)",
        inp.config_hash,
        inp.output / "config.yaml",
        cfg.model.source,
        " + ".join(cfg.scoring.methods),
        process_age() or float("nan"),
    )
    # Nothing below reads the working directory (paths and the tracking URI are absolute); leaving
    # it for the output folder also sidesteps Ray Jobs replacing the job's working_dir copy under a
    # running Tune driver (ray#52343).
    export_package_path()
    os.chdir(inp.output)
    logs = None if inp.verbose else inp.output / "logs"
    restore = divert_output(logs / "driver.log") if logs else (lambda: None)
    side = ThreadPoolExecutor(max_workers=1)
    prepared = side.submit(prepare, inp)  # data and tracking while Ray and the workers start
    try:
        cluster.connect(inp.address, os.environ.get("FP8_SWEEP_NODE_IP"))
        # the workers import ModelOpt and load the model while the driver prepares the rest
        slots = cluster.plan_workers(
            inp.need, cfg.search.gpus_per_worker, cfg.search.max_concurrent, local=not inp.address
        )
        workers = len(slots)
        pool = cluster.WorkerPool.start(cfg.model, slots, int(cfg.search.cpus_per_trial), logs)
        data, target = prepared.result()
        data_ref = cluster.put(data)
        tables = score_all(inp, pool, data_ref, data)
        reference_cache_bytes = int(cfg.search.reference_cache_gib * (1 << 30))
        pool.prepare(data_ref, cfg.scoring.fp8_recipes[0], reference_cache_bytes)
        write_score_tables(inp.output, tables)
        ctx = trial_context(inp, pool, data_ref, data, tables, target, reference_cache_bytes)
        results = run_rounds(inp, ctx, tables, workers)
        write_json(inp.output / "workers.json", pool.log_startup())
    finally:
        side.shutdown(wait=True)
        cluster.shutdown()
        restore()
    return conclude(inp, target, tables, results, data)


def trial_context(
    inp: Inputs,
    pool: Any,
    data_ref: Any,
    data: DataSets,
    tables: Sequence[ScoreTable],
    target: Any,
    reference_cache_bytes: int,
) -> Any:
    from orchestrator import trainable

    return trainable.TrialContext(
        data=[data_ref],
        data_hashes=data.hashes(),
        dispatcher=pool.dispatcher,
        tables={table_key(t.method, t.fp8_recipe): t for t in tables},
        tracking=target,
        run_tags=run_tags(),
        fault=inp.cfg.fault,
        fault_dir=str(inp.output / "faults"),
        reference_cache_bytes=reference_cache_bytes,
        seed=inp.cfg.seed,
        verbose=inp.verbose,
    )


def run_rounds(
    inp: Inputs, ctx: Any, tables: Sequence[ScoreTable], workers: int
) -> list[TrialResult]:
    """Round 1, the grid; then round 2, the controls at each published scheme's exact share.

    Each round is a Tune experiment of its own under the output folder, so each resumes.
    """
    from orchestrator import tuner
    from orchestrator.selection import SelectionError, select

    cfg = inp.cfg
    points, total = grid_points(cfg.search, tables)
    log.info("%d grid point(s) -> %d distinct plan(s)", total, len(points))
    space = {
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
    except SelectionError:
        return results  # conclude reports why; there is nothing to compare with
    measured = {r.plan_hash for r in results if r.status == "FINISHED"}
    specs = cfg.controls.specs()
    extra = control_points(ctx.tables, schemes, specs, measured)
    log.info(
        "paired round: %d control(s) x %d scheme(s) -> %d plan(s) not yet measured",
        len(specs),
        len(schemes),
        len(extra),
    )
    if not extra:
        return results
    grid = replace(settings, name="tune-controls", searcher="grid")
    return results + tuner.run_trials(ctx, extra, space, grid, workers)


def conclude(
    inp: Inputs,
    target: Any,
    tables: Sequence[ScoreTable],
    results: list[TrialResult],
    data: DataSets,
) -> int:
    cfg = inp.cfg
    settled = _settle_tracking(target, results)
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
    problems = settled.problems + _publish(inp, target, tables, results, done)
    print_summary(results, done, inp.output)
    print_where(inp, target)
    if problems:
        write_json(inp.output / "unlogged.json", {"problems": problems})
        print(
            f"warning: {len(problems)} item(s) could not be written to MLflow at {target.uri}; "
            f"see {inp.output / 'unlogged.json'} (results are in trials.parquet)"
        )
    if done.error:
        print(f"error: {done.error}", file=sys.stderr)
        return EXIT_NO_FRONT
    return EXIT_OK


@dataclass
class _Settled:
    run_ids: dict[str, str]
    problems: list[str]


def _settle_tracking(target: Any, results: Sequence[TrialResult]) -> _Settled:
    """Close runs left RUNNING by killed trials, log trials the store missed, find run ids."""
    from orchestrator import tracking

    try:
        stale = tracking.close_stale_children(target, "trial process died before finishing")
        if stale:
            log.warning("marked %d child run(s) FAILED that were left RUNNING", len(stale))
        for r in results:
            if r.status == "FINISHED" and r.metrics.get("logged", 1.0) == 0.0:
                tracking.backfill_child(target, r.plan_hash, r.to_dict(), dict(r.metrics))
        children = tracking.children(target)
    except Exception as e:  # noqa: BLE001 - the store is gone: say what was not logged
        problems = [f"trial runs not settled: {e.__class__.__name__}: {e}"[:500]]
        problems += [f"trial {r.plan_hash} ({r.status})" for r in results if not r.mlflow_run_id]
        return _Settled({}, problems)
    by_point = {c.data.tags.get(tracking.POINT_TAG): c.info.run_id for c in children}
    return _Settled({k: v for k, v in by_point.items() if k}, [])


def _publish(
    inp: Inputs,
    target: Any,
    tables: Sequence[ScoreTable],
    results: Sequence[TrialResult],
    done: Any,
) -> list[str]:
    """Parent artifacts, scheme tags, parent status; returns what could not be written."""
    from orchestrator import tracking

    names = (
        "schemes.yaml",
        "trials.parquet",
        "scores.parquet",
        "pareto.png",
        "sensitivity.png",
        "sweep.json",
        "config.yaml",
    )
    ok = [r for r in results if r.status == "FINISHED"]
    try:
        tracking.log_parent_outputs(
            target,
            [inp.output / f for f in names],
            {
                "trials_finished": len(ok),
                "trials_failed": len(results) - len(ok),
                **{
                    f"scoring_seconds.{t.method}.{t.fp8_recipe}": float(t.meta.get("seconds", 0.0))
                    for t in tables
                },
                **{f"score_kl_spearman.{k}": v for k, v in done.correlation.items()},
                **{f"score_kl_spearman_within_share.{k}": v for k, v in done.within_share.items()},
            },
        )
        for s, entry in zip(
            done.selection.schemes if done.selection else (), done.entries, strict=True
        ):
            if s.mlflow_run_id:
                tags, metrics = scheme_tracking(entry)
                tracking.tag_run(target.uri, s.mlflow_run_id, tags)
                tracking.log_metrics(target.uri, s.mlflow_run_id, metrics)
                tracking.name_scheme_run(target.uri, s.mlflow_run_id, s.name)
        tracking.end_run(target.uri, target.parent_run_id, "FINISHED")
    except Exception as e:  # noqa: BLE001
        return [f"parent run {target.parent_run_id} outputs: {e.__class__.__name__}: {e}"[:500]]
    return []


def print_summary(results: Sequence[TrialResult], done: Finalized, output: Path) -> None:
    failed = [r for r in results if r.status != "FINISHED"]
    controls = sum(r.kind == "control" for r in results)
    print(
        f"\n{len(results) - len(failed)} trial(s) finished, {len(failed)} failed "
        f"({len(results) - controls} scored, {controls} control)"
    )
    for r in failed:
        print(f"  FAILED b={r.effective_bits:g} c={r.coverage:g} {r.method} {r.label}: {r.error}")
    for line in summary_lines(done, output):
        print(line)


def print_where(inp: Inputs, target: Any) -> None:
    """Where to look next: the MLflow UI on the sweep's experiment, and the libraries' logs."""
    from orchestrator.tracking import ui_hint

    print(f"\nMLflow: {ui_hint(target)}")
    if not inp.verbose:
        print(f"logs of Ray, Tune, ModelOpt and transformers: {inp.output / 'logs'}/")


def main(argv: Sequence[str] | None = None) -> int:
    from orchestrator.runtime import ray_environment, setup_logging

    args = parse_args(argv)
    setup_logging(args.verbose)
    try:
        inp = check_inputs(args)
        owned = ownership.acquire(inp.output)  # held until the driver exits, SIGTERM included
    except (ConfigError, DataError, ownership.OutputInUse) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    ray_environment(inp.address, inp.verbose)
    with owned:
        try:
            return run(inp)
        except ConfigError as e:  # no node of the cluster can hold a worker (known once Ray is up)
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:
            return EXIT_ERROR
        except Exception:
            where = "" if inp.verbose else f" (libraries' output: {inp.output / 'logs'}/)"
            log.exception("sweep failed%s", where)
            return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

"""Every check on a sweep's input, made before any Ray, MLflow or model work (exit 2 on failure).

The config and the catalog (strict pydantic), the names the grid can reach, the output folder (a
folder this user can write, free, holding this sweep, nothing, or only what a failed start of
this same sweep left), the cluster address (something listens there), the data sources, the model
(resolved to a supported family, its context length, a vision tower for image data), the memory
plan against this machine, and last the data sets themselves: the text tokenized by the model's
tokenizer and cut into windows, every image+text record encoded by its processor. What passes
becomes one :class:`~orchestrator.core.inputs.Inputs` record that every later stage reads, and the
built :class:`~orchestrator.model.data.DataSets` beside it (``core`` cannot name a ``model`` type),
so the sets are built once, and a source that cannot fill them is refused here, not after Ray.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from orchestrator.core.config import (
    PROJECT_ROOT,
    ConfigError,
    SweepConfig,
    load_catalog,
    load_config,
    read_written_config,
)
from orchestrator.core.inputs import Inputs
from orchestrator.core.memory import WorkerNeed
from orchestrator.core.objectives import Objective, missing_rows
from orchestrator.core.points import unreachable_names
from orchestrator.model.data import DataSets, check_source
from orchestrator.model.images import eval_image_fraction, image_source
from orchestrator.outputs import integrity, ownership
from orchestrator.outputs.files import read_sweep_json

log = logging.getLogger(__name__)


def absolute_paths(cfg: SweepConfig) -> SweepConfig:
    """Every file the config names, made absolute: the driver leaves its working directory."""
    from orchestrator.model.presets import PRESETS, SHIPPED_PRESETS

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


def check_inputs(args: argparse.Namespace) -> tuple[Inputs, DataSets]:
    """Everything that can be wrong with the input, found before any Ray/MLflow/model work; the
    cheap checks first, the data sets (seconds: the tokenizer, every record) last."""
    written = load_config(args.config, args.set)
    cfg = absolute_paths(written)
    catalog = load_catalog(cfg.selection.catalog)
    unreachable = unreachable_names(cfg.search, catalog)
    if unreachable:
        raise ConfigError("; ".join(unreachable))
    check_set_sizes(cfg)
    output = (args.output or Path("runs") / cfg.name).expanduser().resolve()
    previous = check_output(output, written.config_hash(), cfg, written.config_hash(legacy=True))
    if args.address:
        check_address(args.address)
    _check_sources(cfg)
    profile = _check_model(cfg)
    need = plan_memory(cfg, args.address)
    data = build_sets(cfg)
    uri = tracking_uri(args.tracking_uri, previous, output)
    inputs = Inputs(
        cfg, written.config_hash(), output, uri, args.address, catalog, profile, need, args.verbose
    )
    return inputs, data


def tracking_uri(given: str | None, previous: dict[str, Any] | None, output: Path) -> str:
    """``--tracking-uri``; else, resuming, the store the sweep started with (one the user gave,
    else this folder's own, wherever the folder is now); else ``MLFLOW_TRACKING_URI``; else the
    folder's own store. A copied or moved folder so never writes into the original's store."""
    from orchestrator.tracking.uri import absolute_uri, default_tracking_uri, recorded_uri

    if given:
        return absolute_uri(given)
    if previous is not None:
        return recorded_uri(previous) or default_tracking_uri(output)
    env = os.environ.get("MLFLOW_TRACKING_URI")  # set by `mlflow run` and by MLflow users
    return absolute_uri(env) if env else default_tracking_uri(output)


# What a start writes before sweep.json binds the folder to its sweep (sweep.record_config,
# session.in_output_folder, the default MLflow store); a folder holding only these, with the same
# config, is a start that failed (Ray did not come up, the driver was killed) and is taken over.
START_FILES = frozenset({"config.yaml", "logs", "mlflow.db", ownership.OWNER_DIR})


def check_output(
    output: Path, config_hash: str, cfg: SweepConfig, legacy_hash: str | None = None
) -> dict[str, Any] | None:
    """``output`` is a folder this user can create or write, no running driver owns it, and it
    holds this sweep (its sweep.json, returned), nothing, or a failed start of this sweep.
    A sweep recorded under ``legacy_hash`` (the hash before paths in the checkout were hashed
    relative to it: ``SweepConfig.config_hash``) is this sweep; the resume records the new one.
    Writes nothing."""
    writable_folder(output)
    ownership.check_free(output)  # before its content: a running sweep's folder is in use
    previous = read_sweep_json(output)
    if previous is not None and previous.get("config_hash") not in (config_hash, legacy_hash):
        raise ConfigError(
            f"--output {output} holds sweep {previous.get('name')!r} with config hash "
            f"{previous.get('config_hash')}, not {config_hash}; use another --output"
        )
    damaged = integrity.changed(output, previous) if previous is not None else []
    if damaged:  # the resume writes every one of them again from Tune's results and the scores
        log.warning(
            "--output %s: %s changed since the sweep wrote it (sha256 differs from sweep.json's "
            "record); not read, and written again by this run",
            output,
            ", ".join(damaged),
        )
    if previous is None and output.exists():
        held = {p.name for p in output.iterdir()} - {ownership.OWNER_DIR}
        if held and not (held <= START_FILES and "config.yaml" in held):
            raise ConfigError(
                f"--output {output} is not empty and holds no sweep; use another --output"
            )
        if held and _written_hash(output / "config.yaml") != cfg.config_hash():
            raise ConfigError(
                f"--output {output} holds a failed start of another sweep (config.yaml of a "
                "different config, no sweep.json); use another --output, or delete that folder"
            )
        if held:
            log.info("--output %s holds a failed start of this sweep: taken over", output)
    return previous


def _written_hash(path: Path) -> str | None:
    """The config hash of a start's config.yaml (paths absolute, as the start wrote them)."""
    try:
        return read_written_config(path).config_hash()
    except (OSError, ValueError):  # unreadable or no config at all: not this sweep's
        return None


def writable_folder(output: Path) -> None:
    """``output`` is (or can become) a folder this process may write, judged without writing: its
    nearest existing ancestor is a folder, on a file system mounted read-write, writable by this
    user. What only a write can tell (a file system that refuses this user anyway) is refused
    when the driver takes the folder (``ownership.acquire``), still before anything is written."""
    here = next(p for p in (output, *output.parents) if p.exists())
    if not here.is_dir():
        where = "" if here == output else f" ({here} is a file)"
        raise ConfigError(
            f"--output {output} is a file{where}, not a folder; name a new folder, or one that "
            "holds this sweep"
        )
    if os.statvfs(here).f_flag & os.ST_RDONLY:
        raise ConfigError(
            f"--output {output}: {here} is on a read-only file system; use a writable folder"
        )
    if not os.access(here, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--output {output}: {here} is not writable by this user; use a writable folder"
        )


ADDRESS_TIMEOUT_S = 5.0


def check_address(address: str) -> None:
    """Something answers at ``--address`` (``host:port`` or ``ray://host:port``): Ray itself
    retries a silent address for many minutes before it gives up."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # another form Ray knows (``auto``, ``local``): Ray judges it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=ADDRESS_TIMEOUT_S).close()
    except OSError as e:
        why = e.strerror or e.__class__.__name__
        raise ConfigError(
            f"--address {address}: nothing answers there ({why}); start the cluster "
            "(ray start --head) or give its head's address, or leave --address out to start "
            "Ray on this machine"
        ) from None


def build_sets(cfg: SweepConfig) -> DataSets:
    """The calibration, scoring and evaluation sets, built once, here: the tokenizer present and
    sane, enough windows of text for every set, every image+text record encoded."""
    from orchestrator.model.datasets import build_data

    started = time.monotonic()
    data = build_data(cfg, quiet=True)  # the console shows only the sweep's own lines
    d = cfg.data
    report = data.report
    spans = (
        f", report {report.tokens.shape[0]} ({len(set(report.docs.ravel().tolist()))} documents)"
        if report is not None and report.docs is not None
        else ", no report set"
    )
    log.info(
        "data: calibration %d, scoring %d, selection %d%s batches of %d x %d tokens (%.1fs)",
        *(s.tokens.shape[0] for s in (data.calib, data.score, data.eval)),
        spans,
        d.batch_size,
        d.seq_len,
        time.monotonic() - started,
    )
    return data


MAX_SET_TOKENS = 1 << 27  # 1 GiB of int64 ids per set, built in the driver, copied to each worker


def check_set_sizes(cfg: SweepConfig) -> None:
    """No set larger than :data:`MAX_SET_TOKENS`: each field has its own bound, their product
    none (100000 batches of 1024 x 32768 tokens would exhaust the driver's memory)."""
    d = cfg.data
    for knob in ("calib_batches", "score_batches", "eval_batches", "report_batches"):
        tokens = getattr(d, knob) * d.batch_size * d.seq_len
        if tokens > MAX_SET_TOKENS:
            raise ConfigError(
                f"data.{knob}={getattr(d, knob)} x data.batch_size={d.batch_size} x "
                f"data.seq_len={d.seq_len} = {tokens} tokens in one set; at most "
                f"{MAX_SET_TOKENS} (the sets are built in the driver and copied to every "
                "worker): lower one of them"
            )


def plan_memory(cfg: SweepConfig, address: str | None) -> WorkerNeed:
    """Print the memory plan; a model that fits no worker here is refused (``capacity``)."""
    from orchestrator.model.loading import model_facts
    from orchestrator.search import capacity

    facts = model_facts(cfg.model.source, cfg.model.revision, cfg.model.trust_remote_code)
    return capacity.plan(cfg, facts, address)


def _check_model(cfg: SweepConfig) -> str:
    """The model's profile name, once its config resolves and fits the data settings."""
    from orchestrator.model.families import profile_for
    from orchestrator.model.loading import model_facts

    try:
        facts = model_facts(cfg.model.source, cfg.model.revision, cfg.model.trust_remote_code)
    except ConfigError:
        raise  # a preset's typo, a missing folder: said without the network (check_source)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        why = (
            "not in the local cache (HF_HUB_OFFLINE is set)"
            if offline
            else "not on the hub, or the hub is unreachable (offline? HF_HUB_OFFLINE=1 reads "
            "the local cache without retrying the hub)"
        )
        raise ConfigError(f"model.source={cfg.model.source!r}: {why}: {first[:160]}") from None
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
    """Text files readable, the image+text mix possible; records are read in encoded_images."""
    from orchestrator.model.images import check_mix

    check_mix(cfg.data)
    has_rows = image_source(cfg.data) is not None and eval_image_fraction(cfg.data) > 0
    problem = missing_rows(Objective(cfg.selection.objective), "selection.objective", has_rows)
    if problem:
        raise ConfigError(problem)
    if image_source(cfg.data) != cfg.data.source:
        check_source(cfg.data.source, "data.source", cfg.data.text_field)
    if cfg.data.eval_source:
        check_source(cfg.data.eval_source, "data.eval_source", cfg.data.text_field)

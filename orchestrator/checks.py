"""Every check on a sweep's input, made before any Ray, MLflow or model work (exit 2 on failure).

The config and the catalog (strict pydantic), the names the grid can reach, the data sources, the
model (resolved to a supported family, its context length, a vision tower for image data), every
image+text record through the model's processor, the memory plan against this machine, and the
output folder (free, and holding this sweep or nothing). What passes becomes one
:class:`~orchestrator.core.inputs.Inputs` record that every later stage reads.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from orchestrator.core.config import (
    PROJECT_ROOT,
    ConfigError,
    SweepConfig,
    load_catalog,
    load_config,
)
from orchestrator.core.inputs import Inputs
from orchestrator.core.memory import WorkerNeed
from orchestrator.core.objectives import Objective, missing_rows
from orchestrator.core.points import unreachable_names
from orchestrator.model.data import check_source
from orchestrator.model.datasets import encoded_images
from orchestrator.model.images import eval_image_fraction, image_source
from orchestrator.outputs import ownership
from orchestrator.outputs.files import read_sweep_json


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
        encoded_images(cfg)  # reads and encodes every record: a bad one fails here
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
    from orchestrator.tracking.uri import absolute_uri, default_tracking_uri

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

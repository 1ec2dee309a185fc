"""The one loader: a preset, a local folder or a hub id resolved to its config, its facts read
without torch (for the driver's checks and the memory plan), then the model built or loaded in
its dtype on its device, and spread over a worker's GPUs when it has several."""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where models are built: the driver's input checks skip it
    import torch
    from torch import nn
from orchestrator.core.config import ConfigError
from orchestrator.core.numerics import resolved_dtype
from orchestrator.model.families import (
    FAMILIES,
    ModelProfile,
    family_of,
    loader_class,
    profile_for,
)
from orchestrator.model.presets import PRESET_SEED, PRESETS, SHIPPED_PRESETS

log = logging.getLogger(__name__)


# A hub id is owner/name, each part letters, digits, '-', '_' or '.' (the hub's own rule also
# refuses '--' and '..', and more than 96 characters).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_local_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or Path(source).expanduser().exists()


def is_hub_id(source: str) -> bool:
    """Whether the hub could hold ``source``. Only such a name is looked up there: a preset's
    misspelt name (``wikitext-qwen2.5vl``) would otherwise cost the hub client's five retries,
    about 25 s offline, to end in a message that names neither the presets nor the typo."""
    bad = "--" in source or ".." in source or len(source) > 96
    return not bad and _HUB_ID.fullmatch(source) is not None


def resolve_source(source: str) -> str:
    """The folder behind a shipped preset's name; any other source unchanged."""
    return str(SHIPPED_PRESETS[source]) if source in SHIPPED_PRESETS else source


def check_source(source: str) -> None:
    """Refuse, in one line and without the network, a source that is no preset, no model folder
    and cannot be a hub id: a missing folder says it does not exist, a folder without
    ``config.json`` says so, any other name lists the presets with the nearest first."""
    if source in PRESETS or source in SHIPPED_PRESETS:
        return
    path = Path(source).expanduser()
    if is_local_path(source):
        if not path.exists():
            raise ConfigError(f"model.source={source!r}: folder {path} does not exist")
        if not path.is_dir():
            raise ConfigError(f"model.source={source!r}: {path} is a file; give the model's folder")
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"model.source={source!r}: folder {path} has no config.json (not a saved model)"
            )
        return
    if not is_hub_id(source):
        names = [*SHIPPED_PRESETS, *PRESETS]
        near = difflib.get_close_matches(source, names, n=1, cutoff=0.6)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ConfigError(
            f"model.source={source!r}: not a preset, a folder or a hub id (owner/name); {hint}"
            f"presets: {', '.join(names)}"
        )


def resolve_config(
    source: str, revision: str | None = None, trust_remote_code: bool = False
) -> Any:
    """The HF config behind ``source`` (preset, local folder or hub id), without loading weights;
    only a name that can be a hub id goes to the hub (:func:`check_source`)."""
    if source in PRESETS:
        return PRESETS[source]()
    check_source(source)
    source = resolve_source(source)
    from transformers import AutoConfig

    path = Path(source).expanduser()
    return AutoConfig.from_pretrained(
        str(path) if is_local_path(source) else source,
        revision=revision,
        trust_remote_code=trust_remote_code,
    )


@dataclass(frozen=True)
class ModelFacts:
    """What the driver checks and plans with, read from ``config.json`` alone."""

    model_type: str
    vocab_size: int
    max_position_embeddings: int
    has_vision: bool
    params: int  # every parameter, counted from the dimensions (0 for an unsupported type)
    num_layers: int
    hidden_size: int


def _facts_of(doc: dict[str, Any]) -> ModelFacts:
    from orchestrator.core.memory import param_count, text_of

    text = text_of(doc)
    family = FAMILIES.get(str(doc["model_type"]))
    return ModelFacts(
        str(doc["model_type"]),
        int(text["vocab_size"]),
        int(text["max_position_embeddings"]),
        doc.get("vision_config") is not None,
        param_count(doc, family.qk_norm, family.vision) if family else 0,
        int(text["num_hidden_layers"]) if family else 0,
        int(text["hidden_size"]) if family else 0,
    )


def model_facts(
    source: str, revision: str | None = None, trust_remote_code: bool = False
) -> ModelFacts:
    """The model's type, vocabulary, context length, vision tower, size and depth.

    A local folder's ``config.json`` is read as JSON when it names these fields (top level or
    ``text_config``): the driver then imports neither torch nor transformers, which costs seconds
    before anything starts. Presets, hub ids and configs that leave a field to its default go
    through :func:`resolve_config`.
    """
    import json

    check_source(source)
    folder = Path(resolve_source(source)).expanduser()
    if source not in PRESETS and is_local_path(str(folder)) and (folder / "config.json").is_file():
        try:
            return _facts_of(json.loads((folder / "config.json").read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not plain enough: let transformers read it (and say what is wrong)
    return _facts_of(resolve_config(source, revision, trust_remote_code).to_dict())


def pick_dtype(requested: str) -> torch.dtype:
    """The export's dtype (bfloat16) for ``auto`` on every device, CPU included: a trial measures
    the checkpoint that ships. float32 only when asked for (``core/numerics.py``)."""
    import torch

    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[resolved_dtype(requested)]


def load_model(
    source: str,
    device: str = "cpu",
    dtype: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    gpus: int = 1,
) -> tuple[nn.Module, ModelProfile]:
    """Load any supported family by preset name, local folder or hub id, in eval mode.

    The class comes from :data:`FAMILIES`. With ``gpus`` > 1 (a worker that reserved several GPUs)
    the model is spread over this process's visible GPUs, balanced, whole decoder and vision blocks
    on one GPU each (:func:`spread`); inputs go to the first GPU, where the embeddings are.
    """
    import torch

    torch_dtype = pick_dtype(dtype)
    config = resolve_config(source, revision, trust_remote_code)
    profile = profile_for(config.model_type)
    cls = loader_class(config.model_type)
    if source in PRESETS:
        torch.manual_seed(PRESET_SEED)
        config.architectures = [cls.__name__]
        # random weights are drawn where the model will run: on one GPU in seconds, where a Ray
        # worker's single CPU thread would take hours for the 32B (a spread model starts on CPU)
        with torch.device(device if gpus == 1 else "cpu"):
            model = cls._from_config(config, dtype=torch_dtype)
    else:
        where = resolve_source(source)
        where = str(Path(where).expanduser()) if is_local_path(where) else where
        model = cls.from_pretrained(
            where, dtype=torch_dtype, revision=revision, trust_remote_code=trust_remote_code
        )
    model = spread(model, gpus) if gpus > 1 else model.to(device)
    log.info(
        "loaded %s (%s) on %s as %s",
        source,
        config.model_type,
        f"{gpus} GPUs" if gpus > 1 else device,
        torch_dtype,
    )
    return model.eval(), profile


def spread(model: nn.Module, gpus: int) -> nn.Module:
    """The model across ``gpus`` visible GPUs with accelerate: a balanced ``max_memory`` per GPU,
    no decoder or vision block split between two (the family's ``_no_split_modules``)."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    keep = list(getattr(model, "_no_split_modules", None) or [])
    budget = get_balanced_memory(
        model, max_memory=None, no_split_module_classes=keep, low_zero=False
    )
    budget = {k: v for k, v in budget.items() if k != "cpu" and int(k) < gpus}
    device_map = infer_auto_device_map(model, max_memory=budget, no_split_module_classes=keep)
    off = sorted({str(d) for d in device_map.values() if not isinstance(d, int)})
    if off:
        raise RuntimeError(f"the model does not fit {gpus} GPUs: parts placed on {off}")
    return dispatch_model(model, device_map=device_map)


def text_config(config: Any) -> Any:
    return getattr(config, "text_config", None) or config


def lm_param_count(model: nn.Module) -> int:
    """Parameters of the language model (everything outside the vision tower, tied weights once)."""
    family = family_of(model)
    seen: set[int] = set()
    total = 0
    for name, p in model.named_parameters(remove_duplicate=True):
        if family.in_vision_tower(name) or id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def model_param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

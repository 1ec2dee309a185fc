"""Model families, their profiles (which modules may go to FP8), the one loader, and the presets.

One table, :data:`FAMILIES`, says for every supported ``model_type`` which transformers class loads
it, which modules are never quantized and how its parameters are counted; the loader, the profile
and the driver's input check all read it, so they cannot disagree. Only the decoder's Linear layers
are eligible (q/k/v/o in attention, gate/up/down in the MLP). Never eligible: the vision tower
(``model.visual``: its blocks, its merger, and Qwen3-VL's deepstack mergers, which all live under
it), ``lm_head`` and the embeddings. The tower stays BF16 by product decision; Qwen2.5-VL-3B ties
``lm_head`` to the embeddings. Scoring, trials and export all read these rules from here.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where models are built: the driver's input checks skip it
    import torch
    from torch import nn

log = logging.getLogger(__name__)

_ELIGIBLE = re.compile(
    r"^(?P<prefix>.*?)layers\.(?P<block>\d+)\."
    r"(?:self_attn\.(?P<attn>q_proj|k_proj|v_proj|o_proj)|mlp\.(?P<mlp>gate_proj|up_proj|down_proj))$"
)
_KIND = {
    "q_proj": "qkv",
    "k_proj": "qkv",
    "v_proj": "qkv",
    "o_proj": "o",
    "gate_proj": "gate_up",
    "up_proj": "gate_up",
    "down_proj": "down",
}
TEXT_NEVER = ("*lm_head*", "*embed_tokens*")
VISION_NEVER = ("*visual*", *TEXT_NEVER)  # model.visual holds blocks, merger, deepstack mergers


@dataclass(frozen=True)
class Family:
    """One supported ``model_type``: its loader class, profile and parameter count."""

    model_type: str
    label: str  # what the README and the supported list say
    profile: str  # the profile's name (part of the score cache key)
    loader: str  # the transformers class that builds and loads it
    never_quantize: tuple[str, ...]
    qk_norm: bool  # Qwen3 blocks: q/k RMSNorms, no q/k/v biases (parameter count)
    vision: str | None  # the vision tower's kind (parameter count); None: a text model


FAMILIES = {
    f.model_type: f
    for f in (
        Family(
            "qwen2_vl",
            "Qwen2-VL",
            "qwen2-vl",
            "Qwen2VLForConditionalGeneration",
            VISION_NEVER,
            False,
            "qwen2_vl",
        ),
        Family(
            "qwen2_5_vl",
            "Qwen2.5-VL",
            "qwen2.5-vl",
            "Qwen2_5_VLForConditionalGeneration",
            VISION_NEVER,
            False,
            "qwen2_5_vl",
        ),
        Family(
            "qwen3_vl",
            "Qwen3-VL",
            "qwen3-vl",
            "Qwen3VLForConditionalGeneration",
            VISION_NEVER,
            True,
            "qwen3_vl",
        ),
        Family("qwen2", "Qwen2 / Qwen2.5", "qwen2", "Qwen2ForCausalLM", TEXT_NEVER, False, None),
        Family("qwen3", "Qwen3", "qwen3", "Qwen3ForCausalLM", TEXT_NEVER, True, None),
    )
}
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)


class UnsupportedModel(ValueError):
    """The model's type is not a supported family, or the installed transformers lacks it."""


def supported_list() -> str:
    return ", ".join(f"{t} ({f.label})" for t, f in FAMILIES.items())


def family_for(model_type: str) -> Family:
    """The family of ``model_type``, once the installed transformers is known to have it.

    The check looks for ``transformers/models/<model_type>/`` without importing transformers (the
    driver's input checks import neither torch nor transformers).
    """
    family = FAMILIES.get(model_type)
    if family is None:
        raise UnsupportedModel(
            f"model_type {model_type!r} is not supported; supported: {supported_list()}"
        )
    missing = transformers_lacks(model_type)
    if missing:
        raise UnsupportedModel(f"model_type {model_type!r} ({family.label}): {missing}")
    return family


def transformers_lacks(model_type: str, root: Path | None = None) -> str:
    """Why the installed transformers cannot build ``model_type`` ('' when it can)."""
    if root is None:
        spec = importlib.util.find_spec("transformers")
        if spec is None or spec.origin is None:
            return "transformers is not installed (pip install -e '.[gpu]')"
        root = Path(spec.origin).parent
    if not (root / "models" / model_type).is_dir():
        from importlib.metadata import PackageNotFoundError, version

        try:
            have = version("transformers")
        except PackageNotFoundError:
            have = "?"
        return f"the installed transformers {have} has no {model_type} models; upgrade it (<5.15)"
    return ""


def loader_class(model_type: str) -> Any:
    """The transformers class that builds and loads this family (from the table)."""
    import transformers

    return getattr(transformers, family_for(model_type).loader)


@dataclass(frozen=True)
class EligibleModule:
    name: str
    block: int
    kind: str
    group: str  # modules sharing a group share a format (AutoQuantize fuses q/k/v and gate/up)
    params: int


@dataclass(frozen=True)
class ModelProfile:
    name: str
    never_quantize: tuple[str, ...]

    def is_excluded(self, module_name: str) -> bool:
        return any(fnmatch.fnmatch(module_name, p) for p in self.never_quantize)

    def classify(self, module_name: str) -> tuple[int, str, str] | None:
        """(block, kind, group) for an eligible module name, else None."""
        if self.is_excluded(module_name):
            return None
        m = _ELIGIBLE.match(module_name)
        if not m:
            return None
        kind = _KIND[m["attn"] or m["mlp"]]
        block = int(m["block"])
        return block, kind, f"{m['prefix']}layers.{block}.{kind}"

    def eligible_modules(self, model: nn.Module) -> list[EligibleModule]:
        from torch import nn

        out = []
        for name, mod in model.named_modules():
            if not isinstance(mod, nn.Linear):
                continue
            hit = self.classify(name)
            if hit:
                block, kind, group = hit
                out.append(EligibleModule(name, block, kind, group, mod.weight.numel()))
        return out


def profile_for(model_type: str) -> ModelProfile:
    family = family_for(model_type)
    return ModelProfile(family.profile, family.never_quantize)


# --- presets --------------------------------------------------------------------------------------


def _tiny_config() -> Any:
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=64,
            num_hidden_layers=4,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=512,
            bos_token_id=0,
            eos_token_id=1,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            fullatt_block_indexes=[1],
        ),
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=1,
        image_token_id=2,
        video_token_id=3,
        vision_start_token_id=4,
        vision_end_token_id=5,
    )


# The published Qwen2.5-VL vision tower (3B, 7B, 32B and 72B share it); its output width is the
# language model's.
_VISION_3B = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    fullatt_block_indexes=[7, 15, 23, 31],
    window_size=112,
)


def _qwen2_5_vl_config(
    hidden: int, layers: int, intermediate: int, heads: int, kv_heads: int, vocab: int, tied: bool
) -> Any:
    """A published Qwen2.5-VL size from its dimensions; random weights when built from it."""
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=hidden,
            num_hidden_layers=layers,
            intermediate_size=intermediate,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            vocab_size=vocab,
            max_position_embeddings=128000,
            rope_theta=1000000.0,
            tie_word_embeddings=tied,
            rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
        ),
        vision_config={**_VISION_3B, "out_hidden_size": hidden},
        tie_word_embeddings=tied,
    )


def _qwen2_5_vl_3b_config() -> Any:
    return _qwen2_5_vl_config(2048, 36, 11008, 16, 2, 151936, tied=True)


def _qwen2_5_vl_7b_config() -> Any:
    return _qwen2_5_vl_config(3584, 28, 18944, 28, 4, 152064, tied=False)


def _qwen2_5_vl_32b_config() -> Any:
    return _qwen2_5_vl_config(5120, 64, 27648, 40, 8, 152064, tied=False)


def _qwen2_5_vl_72b_config() -> Any:
    return _qwen2_5_vl_config(8192, 80, 29568, 64, 8, 152064, tied=False)


# Random-weight presets for plumbing, size and speed work (never to judge a ranking).
PRESETS = {
    "tiny-qwen2.5-vl": _tiny_config,
    "qwen2.5-vl-3b-random": _qwen2_5_vl_3b_config,
    "qwen2.5-vl-7b-random": _qwen2_5_vl_7b_config,
    "qwen2.5-vl-32b-random": _qwen2_5_vl_32b_config,
    "qwen2.5-vl-72b-random": _qwen2_5_vl_72b_config,
}
PRESET_SEED = 1234
# Trained models that ship inside the package (weights, tokenizer, reference.json); a name here
# works wherever a local folder does. scripts/train_reference.py makes them.
SHIPPED_PRESETS = {"wikitext-qwen2.5-vl": Path(__file__).parent / "presets" / "wikitext-qwen2.5-vl"}


def is_local_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or Path(source).expanduser().exists()


def resolve_source(source: str) -> str:
    """The folder behind a shipped preset's name; any other source unchanged."""
    return str(SHIPPED_PRESETS[source]) if source in SHIPPED_PRESETS else source


def resolve_config(
    source: str, revision: str | None = None, trust_remote_code: bool = False
) -> Any:
    """The HF config behind ``source`` (preset, local folder or hub id), without loading weights."""
    if source in PRESETS:
        return PRESETS[source]()
    source = resolve_source(source)
    from transformers import AutoConfig

    path = Path(source).expanduser()
    if is_local_path(source) and not (path / "config.json").is_file():
        raise FileNotFoundError(f"model.source={source!r}: no config.json in that folder")
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
    from orchestrator.memory import param_count, text_of

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

    folder = Path(resolve_source(source)).expanduser()
    if source not in PRESETS and is_local_path(str(folder)) and (folder / "config.json").is_file():
        try:
            return _facts_of(json.loads((folder / "config.json").read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not plain enough: let transformers read it (and say what is wrong)
    return _facts_of(resolve_config(source, revision, trust_remote_code).to_dict())


def pick_dtype(requested: str, device: str) -> torch.dtype:
    """bf16 on GPU; fp32 on CPU unless bf16 is asked for (CPU bf16 matmuls are slow and noisy)."""
    import torch

    if requested == "bfloat16":
        return torch.bfloat16
    if requested == "float32":
        return torch.float32
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


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

    torch_dtype = pick_dtype(dtype, device)
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
    seen: set[int] = set()
    total = 0
    for name, p in model.named_parameters(remove_duplicate=True):
        if "visual" in name or id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def model_param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

"""Model profiles (which modules may go to FP8) and the one model loader, presets included.

One rule set serves every Qwen2.5 family member: Qwen2.5-VL 3B/7B/32B/72B and plain Qwen2/Qwen2.5
causal LMs. Only the decoder's Linear layers are eligible (q/k/v/o in attention, gate/up/down in the
MLP). The vision tower (``*visual*``), ``lm_head`` and the embeddings are never eligible: the tower
stays BF16 by product decision, and Qwen2.5-VL-3B ties ``lm_head`` to the embeddings. The patterns
below are the only place these rules live; scoring, trials and export all read them from here.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where models are built: the driver's input checks skip it
    import torch
    from torch import nn

log = logging.getLogger(__name__)

NEVER_QUANTIZE = ("*visual*", "*lm_head*", "*embed_tokens*")
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
SUPPORTED_MODEL_TYPES = ("qwen2_5_vl", "qwen2", "qwen2_vl")


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
    never_quantize: tuple[str, ...] = NEVER_QUANTIZE

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


QWEN2_5 = ModelProfile("qwen2.5")


def profile_for(model_type: str) -> ModelProfile:
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return QWEN2_5


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


def _qwen2_5_vl_3b_config() -> Any:
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=2048,
            num_hidden_layers=36,
            intermediate_size=11008,
            num_attention_heads=16,
            num_key_value_heads=2,
            vocab_size=151936,
            max_position_embeddings=128000,
            rope_theta=1000000.0,
            tie_word_embeddings=True,
            rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
        ),
        vision_config=dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=2048,
            fullatt_block_indexes=[7, 15, 23, 31],
            window_size=112,
        ),
        tie_word_embeddings=True,
    )


PRESETS = {"tiny-qwen2.5-vl": _tiny_config, "qwen2.5-vl-3b-random": _qwen2_5_vl_3b_config}
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


def model_facts(
    source: str, revision: str | None = None, trust_remote_code: bool = False
) -> ModelFacts:
    """The model's type, vocabulary, context length and whether it has a vision tower.

    A local folder's ``config.json`` is read as JSON when it names these fields (top level or
    ``text_config``): the driver then imports neither torch nor transformers, which costs seconds
    before anything starts. Presets, hub ids and configs that leave a field to its default go
    through :func:`resolve_config`.
    """
    import json

    folder = Path(resolve_source(source)).expanduser()
    if source not in PRESETS and is_local_path(str(folder)) and (folder / "config.json").is_file():
        try:
            doc = json.loads((folder / "config.json").read_text())
            text = {**doc, **(doc.get("text_config") or {})}
            return ModelFacts(
                str(doc["model_type"]),
                int(text["vocab_size"]),
                int(text["max_position_embeddings"]),
                doc.get("vision_config") is not None,
            )
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not plain enough: let transformers read it (and say what is wrong)
    hf = resolve_config(source, revision, trust_remote_code)
    text = text_config(hf)
    return ModelFacts(
        hf.model_type,
        int(text.vocab_size),
        int(text.max_position_embeddings),
        getattr(hf, "vision_config", None) is not None,
    )


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
) -> tuple[nn.Module, ModelProfile]:
    """Load a Qwen2.5-VL (or plain Qwen2/2.5 LM) by preset name, local folder or hub id, in eval mode."""
    import torch

    torch_dtype = pick_dtype(dtype, device)
    config = resolve_config(source, revision, trust_remote_code)
    profile = profile_for(config.model_type)
    if source in PRESETS:
        from transformers import Qwen2_5_VLForConditionalGeneration

        torch.manual_seed(PRESET_SEED)
        config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
        model = Qwen2_5_VLForConditionalGeneration(config)
        model = model.to(dtype=torch_dtype)
    else:
        model = _from_pretrained(
            resolve_source(source), config, torch_dtype, revision, trust_remote_code
        )
    model = model.to(device).eval()
    log.info("loaded %s (%s) on %s as %s", source, config.model_type, device, torch_dtype)
    return model, profile


def _from_pretrained(
    source: str, config: Any, torch_dtype: torch.dtype, revision: str | None, trust: bool
) -> nn.Module:
    from transformers import AutoModelForCausalLM, Qwen2_5_VLForConditionalGeneration

    cls = (
        Qwen2_5_VLForConditionalGeneration
        if config.model_type == "qwen2_5_vl"
        else AutoModelForCausalLM
    )
    where = str(Path(source).expanduser()) if is_local_path(source) else source
    return cls.from_pretrained(where, dtype=torch_dtype, revision=revision, trust_remote_code=trust)


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

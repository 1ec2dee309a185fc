"""Model families and their profiles: which class loads each, which modules may go to FP8.

One table, :data:`FAMILIES`, says for every supported ``model_type`` which transformers class loads
it, which modules are never quantized and how its parameters are counted; the loader, the profile
and the driver's input check all read it, so they cannot disagree. Only the decoder's Linear layers
are eligible (q/k/v/o in attention, gate/up/down in the MLP). Never eligible: the vision tower
(``model.visual``: its blocks, its merger, and Qwen3-VL's deepstack mergers, which all live under
it) where the family has one, ``lm_head`` and the embeddings. The tower stays BF16 by product
decision; Qwen2.5-VL-3B ties ``lm_head`` to the embeddings. :attr:`Family.never_quantize` is that
rule, derived from the table's ``vision`` column; scoring, trials, the parameter count, the
decoder lookup and the export's writers and checker all read it from here.

The table also says how each party spells a family's modules, which is what an export's
exclude/ignore lists are written in and checked against:

- the checkpoint (what ``save_pretrained`` and ModelOpt's exporter write): ``model.layers.N`` and
  ``visual.`` for Qwen2-VL and Qwen2.5-VL (their original hub layout), ``model.language_model.``
  and ``model.visual.`` for Qwen3-VL, ``model.layers.N`` for the text families;
- transformers 5's model (:attr:`Family.language_model`): ``model.language_model.layers.N`` and
  ``model.visual.`` for the VL families, ``model.layers.N`` for the text ones;
  :meth:`Family.transformers_name` maps a checkpoint name in either spelling onto it;
- vLLM (:attr:`Family.vllm_mapper`): the prefix rules of the ``hf_to_vllm_mapper`` of the family's
  vLLM class, applied in order to checkpoint names and list entries alike
  (:meth:`Family.vllm_name`). Qwen2VL and Qwen2_5_VL map ``model.language_model.`` and ``model.``
  to ``language_model.model.``; Qwen3VL maps only ``model.language_model.``; Qwen2ForCausalLM and
  Qwen3ForCausalLM have no mapper, so vLLM's names are the checkpoint's.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where models are built: the driver's input checks skip it
    from torch import nn


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


# the parts that stay BF16, as module-name globs (ModelOpt's spelling, matched with fnmatch)
VISION_TOWER = "*visual*"  # model.visual holds blocks, merger, deepstack mergers
LM_HEAD = "*lm_head*"
EMBEDDINGS = "*embed_tokens*"

# vLLM's hf_to_vllm_mapper prefix rules (checkpoint or list-entry prefix -> vLLM's), in its order;
# each rule applies to the name the previous rules left
QWEN2_VL_VLLM = (  # Qwen2VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration
    ("model.language_model.", "language_model.model."),
    ("model.visual.", "visual."),
    ("lm_head.", "language_model.lm_head."),
    ("model.", "language_model.model."),
)
QWEN3_VL_VLLM = (  # Qwen3VLForConditionalGeneration: no rule for a bare ``model.``
    ("model.visual.", "visual."),
    ("lm_head.", "language_model.lm_head."),
    ("model.language_model.", "language_model.model."),
)
VL_LANGUAGE_MODEL = "model.language_model."  # transformers 5's decoder of a VL model
TEXT_LANGUAGE_MODEL = "model."  # ... of a *ForCausalLM
VL_VISION_TOWER = "model.visual."  # transformers 5's vision tower of every VL family here


@dataclass(frozen=True)
class Family:
    """One supported ``model_type``: its loader class, profile and parameter count."""

    model_type: str
    label: str  # what the README and the supported list say
    profile: str  # the profile's name (part of the score cache key)
    loader: str  # the transformers class that builds and loads it
    qk_norm: bool  # Qwen3 blocks: q/k RMSNorms, no q/k/v biases (parameter count)
    vision: str | None  # the vision tower's kind (parameter count); None: a text model
    language_model: str  # transformers 5's prefix of the decoder's modules
    vllm_mapper: tuple[tuple[str, str], ...]  # vLLM's hf_to_vllm_mapper rules; () for none

    @property
    def vision_tower(self) -> str | None:
        """transformers 5's prefix of the vision tower's modules; None for a text family."""
        return VL_VISION_TOWER if self.vision else None

    def transformers_name(self, name: str) -> str:
        """transformers 5's name for a checkpoint name (module or tensor) in either spelling.

        transformers 5 renames an old-layout VL checkpoint on load (``visual.`` ->
        ``model.visual.``, ``model.`` -> ``model.language_model.``) and leaves a text family's
        names as they are; a name already in its spelling is returned unchanged.
        """
        tower = self.vision_tower
        if tower is None:
            return name
        if name.startswith(tower.removeprefix("model.")):
            return "model." + name
        if name.startswith("model.") and not name.startswith((self.language_model, tower)):
            return self.language_model + name[len("model.") :]
        return name

    def vllm_name(self, name: str) -> str:
        """vLLM's name for a checkpoint name or list entry: each mapper rule, in order."""
        for old, new in self.vllm_mapper:
            if name.startswith(old):
                name = new + name[len(old) :]
        return name

    @property
    def never_quantize(self) -> tuple[str, ...]:
        """Globs of the modules that stay BF16: the vision tower where there is one, ``lm_head``
        and the embeddings. A text family lists no tower, so no export names one."""
        return (*((VISION_TOWER,) if self.vision else ()), LM_HEAD, EMBEDDINGS)

    def is_never_fp8(self, name: str) -> bool:
        """Whether a module, weight or checkpoint name in any spelling (``visual.``,
        ``model.visual.``, ``model.language_model.embed_tokens``) lies in a never-FP8 part."""
        return any(fnmatch.fnmatch(name, p) for p in self.never_quantize)

    def in_vision_tower(self, name: str) -> bool:
        """Whether a name lies in the vision tower: what the language model's parameter count and
        decoder lookup leave out."""
        return self.vision is not None and fnmatch.fnmatch(name, VISION_TOWER)


FAMILIES = {
    f.model_type: f
    for f in (
        Family(
            "qwen2_vl",
            "Qwen2-VL",
            "qwen2-vl",
            "Qwen2VLForConditionalGeneration",
            False,
            "qwen2_vl",
            VL_LANGUAGE_MODEL,
            QWEN2_VL_VLLM,
        ),
        Family(
            "qwen2_5_vl",
            "Qwen2.5-VL",
            "qwen2.5-vl",
            "Qwen2_5_VLForConditionalGeneration",
            False,
            "qwen2_5_vl",
            VL_LANGUAGE_MODEL,
            QWEN2_VL_VLLM,
        ),
        Family(
            "qwen3_vl",
            "Qwen3-VL",
            "qwen3-vl",
            "Qwen3VLForConditionalGeneration",
            True,
            "qwen3_vl",
            VL_LANGUAGE_MODEL,
            QWEN3_VL_VLLM,
        ),
        Family(
            "qwen2",
            "Qwen2 / Qwen2.5",
            "qwen2",
            "Qwen2ForCausalLM",
            False,
            None,
            TEXT_LANGUAGE_MODEL,
            (),
        ),
        Family("qwen3", "Qwen3", "qwen3", "Qwen3ForCausalLM", True, None, TEXT_LANGUAGE_MODEL, ()),
    )
}


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


# pyproject.toml's pin, which every family is tested with (tests/unit/test_families.py checks the
# two agree): the advice for a transformers that lacks a family
TRANSFORMERS_PIN = ">=5.15,<5.16"


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
        return (
            f"the installed transformers {have} has no {model_type} models; install the "
            f"project's pin: pip install 'transformers{TRANSFORMERS_PIN}'"
        )
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
    family: Family

    @property
    def name(self) -> str:
        return self.family.profile

    def classify(self, module_name: str) -> tuple[int, str, str] | None:
        """(block, kind, group) for an eligible module name, else None."""
        if self.family.is_never_fp8(module_name):
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
    return ModelProfile(family_for(model_type))


def family_of(model: nn.Module) -> Family:
    """The family of a built model, from its config's ``model_type``."""
    config: Any = model.config
    return family_for(config.model_type)

"""The two checkpoint layouts an export writes, both from the one folder ModelOpt's exporter makes.

- ``modelopt``: ModelOpt's unified HF checkpoint (FP8 codes, float32 scalar ``weight_scale`` and
  ``input_scale``, ``hf_quant_config.json``), read by vLLM (``--quantization modelopt``) and
  TensorRT-LLM. Its exclude list is rewritten to exact module names: ModelOpt writes globs such as
  ``model.layers.1*``, which vLLM also matches as a substring of ``layers.10``…``19``.
- ``compressed-tensors``: llm-compressor's ``float-quantized`` layout, read by vLLM and by plain
  ``transformers`` (with the ``compressed-tensors`` package), which decompresses it on CPU. Same
  FP8 codes; scales reshaped to ``(1,)`` in the checkpoint's dtype; one config group of static
  per-tensor FP8 weights and inputs targeting ``Linear``, and an ``ignore`` list of transformers-5
  module names for every BF16 Linear (vLLM maps those names itself) plus entries that match the
  vision tower and ``lm_head`` under both loaders' spellings.

Which parts stay BF16 is the family table's rule (:attr:`Family.never_quantize`, for the
``model_type`` in ``config.json``), and so is how each loader spells a module
(:meth:`Family.transformers_name`, :meth:`Family.vllm_name`); this module only writes each part
as a format's list entry, so a text family's lists name ``model.layers.N`` and no vision tower.

Tensor names stay in the layout ModelOpt writes (the checkpoint's own: ``model.layers.N`` and
``visual.`` for Qwen2-VL and Qwen2.5-VL, ``model.language_model.`` for Qwen3-VL); both loaders map
that layout to their own names. The ModelOpt list is spelled like the tensors, the
compressed-tensors list like transformers 5's modules.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from orchestrator.export.check import read_tensors
from orchestrator.model.families import FAMILIES, Family
from orchestrator.outputs.files import write_json, write_text

LM_HEAD = "lm_head"  # every family's output layer, in the checkpoint and in transformers 5

_FP8_TENSOR = {
    "num_bits": 8,
    "type": "float",
    "strategy": "tensor",
    "symmetric": True,
    "dynamic": False,
}
MODELOPT_README = """\
# {name}: FP8 checkpoint in ModelOpt's unified HF format

FP8 (e4m3) weights with per-tensor scales for {n_fp8} language-model Linear layers; everything
else, the vision tower and `lm_head` included, is BF16. Written by `python -m orchestrator.export`
(see `scheme.json` for the plan, sweep, MLflow run and library versions).

How to load it:

- vLLM: `vllm serve <this folder> --quantization modelopt` (needs an FP8 GPU, compute
  capability >= 8.9); TensorRT-LLM reads `hf_quant_config.json` as well.
- Python on CPU, for checks: `orchestrator.export.load_exported(<this folder>)`, which restores
  the FP8 layers as ModelOpt fake-quant modules.

Plain `transformers` does **not** load this folder correctly: it has no ModelOpt quantizer, warns
"Unknown quantization type", casts the FP8 codes to BF16 and drops their scales, so the weights
come out thousands of times too large. For transformers, export `--format compressed-tensors`.
"""


def fp8_layers(folder: Path) -> list[str]:
    """Checkpoint names of the modules whose weight the folder holds in FP8."""
    return sorted(
        k[: -len(".weight")]
        for k, t in read_tensors(folder).items()
        if k.endswith(".weight") and t.dtype == "F8_E4M3"
    )


def export_family(config: Mapping[str, Any]) -> Family:
    """The family of the model ModelOpt exported (a supported one: the sweep loaded it)."""
    return FAMILIES[config["model_type"]]


def checkpoint_spelling(family: Family, checkpoint: Iterable[str], module: str) -> str:
    """How the checkpoint spells a transformers-5 module name (or prefix, ending in ``.``): the head
    of the first tensor name that transformers maps onto it; the name itself where no tensor does
    (a tied ``lm_head``). The mapping renames only a prefix, so the tails line up."""
    head = module if module.endswith(".") else module + "."
    for name in checkpoint:
        mapped = family.transformers_name(name)
        if mapped.startswith(head):
            return name[: len(name) - len(mapped) + len(module)]
    return module


def modelopt_never_fp8(family: Family, checkpoint: Iterable[str]) -> list[str]:
    """The family's never-FP8 parts as ModelOpt exclude entries, spelled like the checkpoint (vLLM
    maps them with the tensor names): ``lm_head``, the embeddings and, where the family has one,
    the vision tower as ModelOpt's own glob (``visual*``)."""
    names = list(checkpoint)
    out = [
        checkpoint_spelling(family, names, LM_HEAD),
        checkpoint_spelling(family, names, family.language_model + "embed_tokens"),
    ]
    if family.vision_tower is not None:
        tower = checkpoint_spelling(family, names, family.vision_tower)
        out.append(tower.removesuffix(".") + "*")
    return out


def ct_never_fp8(family: Family) -> list[str]:
    """The family's never-FP8 parts as compressed-tensors ignore entries that both loaders match:
    ``lm_head`` and, where the family has one, the vision tower. Only Linear layers are targeted,
    so the embeddings need no entry."""
    out = [_both_loaders(family, LM_HEAD + ".", whole=True)]
    if family.vision_tower is not None:
        out.append(_both_loaders(family, family.vision_tower, whole=False))
    return out


def _both_loaders(family: Family, prefix: str, whole: bool) -> str:
    """One entry for a module (``whole``) or a prefix under transformers 5's name and vLLM's: the
    name itself where they agree, else a regex over both. vLLM maps a plain entry with its mapper
    but leaves a ``re:`` one as written, and a bare ``lm_head`` escapes the ``lm_head.`` rule."""
    names = list(dict.fromkeys([prefix, family.vllm_name(prefix)]))
    if whole and len(names) == 1:
        return prefix.removesuffix(".")
    alternatives = "|".join(re.escape(n.removesuffix(".") if whole else n) for n in names)
    return f"re:^(?:{alternatives})$" if whole else f"re:^(?:{alternatives})"


def bf16_linears(folder: Path, family: Family) -> list[str]:
    """Checkpoint names of the language model's BF16 Linear layers (never-FP8 parts apart)."""
    fp8 = set(fp8_layers(folder))
    return sorted(
        k[: -len(".weight")]
        for k, t in read_tensors(folder).items()
        if k.endswith(".weight")
        and len(t.shape) == 2
        and not family.is_never_fp8(k[: -len(".weight")])
        and k[: -len(".weight")] not in fp8
    )


def finish_modelopt(folder: Path, name: str) -> None:
    """Exact exclude names in ``config.json`` and ``hf_quant_config.json``; the loading README."""
    config = json.loads((folder / "config.json").read_text())
    family = export_family(config)
    never = modelopt_never_fp8(family, read_tensors(folder))
    exclude = [*never, *bf16_linears(folder, family)]
    config["quantization_config"]["ignore"] = exclude
    write_json(folder / "config.json", config)
    hf = json.loads((folder / "hf_quant_config.json").read_text())
    hf["quantization"]["exclude_modules"] = exclude
    write_json(folder / "hf_quant_config.json", hf)
    readme = MODELOPT_README.format(name=name, n_fp8=len(fp8_layers(folder)))
    write_text(folder / "README.md", readme)


def write_compressed_tensors(modelopt: Path, dest: Path) -> None:
    """Rewrite a ModelOpt FP8 export folder as a compressed-tensors one (same FP8 codes)."""
    import torch
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True)
    for f in sorted(modelopt.glob("*.safetensors")):
        tensors = load_file(f)
        dtype = next(t.dtype for k, t in tensors.items() if t.dtype == torch.bfloat16)
        save_file(
            {k: _ct_tensor(k, t, dtype) for k, t in tensors.items()},
            dest / f.name,
            metadata={"format": "pt"},
        )
    for f in modelopt.glob("*.json"):
        if f.name not in ("config.json", "hf_quant_config.json"):
            shutil.copy2(f, dest / f.name)
    config = json.loads((modelopt / "config.json").read_text())
    family = export_family(config)
    config["quantization_config"] = compressed_tensors_config(
        family, bf16_linears(modelopt, family)
    )
    write_json(dest / "config.json", config)


def _ct_tensor(key: str, t: Any, dtype: Any) -> Any:
    return t.reshape(1).to(dtype) if key.endswith(("weight_scale", "input_scale")) else t


def compressed_tensors_config(family: Family, bf16: Iterable[str]) -> dict[str, Any]:
    """``quantization_config`` for ``bf16``, the checkpoint names of the BF16 Linear layers."""
    return {
        "quant_method": "compressed-tensors",
        "format": "float-quantized",
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": dict(_FP8_TENSOR),
                "input_activations": dict(_FP8_TENSOR),
                "output_activations": None,
                "format": "float-quantized",
            }
        },
        "ignore": [
            *ct_never_fp8(family),
            *sorted(family.transformers_name(m) for m in bf16),
        ],
        "kv_cache_scheme": None,
    }

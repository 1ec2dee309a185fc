"""The two checkpoint layouts an export writes, both from the one folder ModelOpt's exporter makes.

- ``modelopt``: ModelOpt's unified HF checkpoint (FP8 codes, float32 scalar ``weight_scale`` and
  ``input_scale``, ``hf_quant_config.json``), read by vLLM (``--quantization modelopt``) and
  TensorRT-LLM. Its exclude list is rewritten to exact module names: ModelOpt writes globs such as
  ``model.layers.1*``, which vLLM also matches as a substring of ``layers.10``…``19``.
- ``compressed-tensors``: llm-compressor's ``float-quantized`` layout, read by vLLM and by plain
  ``transformers`` (with the ``compressed-tensors`` package), which decompresses it on CPU. Same
  FP8 codes; scales reshaped to ``(1,)`` in the checkpoint's dtype; one config group of static
  per-tensor FP8 weights and inputs targeting ``Linear``, and an ``ignore`` list of transformers-5
  module names for every BF16 Linear (vLLM maps those names itself) plus regexes that match the
  vision tower and ``lm_head`` under both loaders' spellings.

Which parts stay BF16 is the family table's rule (:attr:`Family.never_quantize`, for the
``model_type`` in ``config.json``); this module only spells each part as a format's list entry, so
a text family's lists name no vision tower.

Tensor names stay in the original Qwen2.5-VL checkpoint layout that ModelOpt writes
(``model.layers.N``, ``visual.``); both loaders map that layout to their own names.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from orchestrator.export.check import read_tensors, transformers_name
from orchestrator.model.families import EMBEDDINGS, FAMILIES, LM_HEAD, VISION_TOWER, Family

# each never-FP8 part as a format's list entry, in list order; compressed-tensors targets only
# Linear layers, so the embeddings need no entry there
MODELOPT_EXCLUDE = {LM_HEAD: "lm_head", EMBEDDINGS: "model.embed_tokens", VISION_TOWER: "visual*"}
CT_IGNORE = {LM_HEAD: r"re:^(language_model\.)?lm_head$", VISION_TOWER: r"re:^(model\.)?visual\."}


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


def never_fp8_entries(family: Family, spelling: Mapping[str, str]) -> list[str]:
    """The family's never-FP8 parts as one format's list entries (``MODELOPT_EXCLUDE`` or
    ``CT_IGNORE``)."""
    return [entry for part, entry in spelling.items() if part in family.never_quantize]


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
    exclude = [*never_fp8_entries(family, MODELOPT_EXCLUDE), *bf16_linears(folder, family)]
    config["quantization_config"]["ignore"] = exclude
    _write_json(folder / "config.json", config)
    hf = json.loads((folder / "hf_quant_config.json").read_text())
    hf["quantization"]["exclude_modules"] = exclude
    _write_json(folder / "hf_quant_config.json", hf)
    (folder / "README.md").write_text(
        MODELOPT_README.format(name=name, n_fp8=len(fp8_layers(folder)))
    )


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
    _write_json(dest / "config.json", config)


def _ct_tensor(key: str, t: Any, dtype: Any) -> Any:
    return t.reshape(1).to(dtype) if key.endswith(("weight_scale", "input_scale")) else t


def compressed_tensors_config(family: Family, bf16: Iterable[str]) -> dict[str, Any]:
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
            *never_fp8_entries(family, CT_IGNORE),
            *sorted(transformers_name(m) for m in bf16),
        ],
        "kv_cache_scheme": None,
    }


def _write_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=2) + "\n")

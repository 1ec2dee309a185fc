"""ModelOpt helpers shared by the trials' resident model and by export: the FP8 config of a
plan (with wildcards that select exactly its modules), a plan quantized and calibrated afresh,
and the quantizers of a set of modules."""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from orchestrator.model.batches import calibration_batches
from orchestrator.model.data import TokenSet
from orchestrator.model.device import sync
from orchestrator.model.fused_scales import fused_groups, share_scales

if TYPE_CHECKING:  # types only: ModelOpt and transformers are imported where they are used
    from modelopt.torch.quantization.nn import TensorQuantizer
    from transformers import PreTrainedModel

_QUANTIZER_ATTRS = ("weight_quantizer", "input_quantizer")
FUSED_SCALES = ("vllm", "per_shard")  # model.fused_scales: as vLLM serves fused layers, or not


def module_patterns(modules: Iterable[str], all_names: Collection[str]) -> list[str]:
    """Wildcards that select exactly ``modules`` among ``all_names``: one per layer kind if exact.

    ModelOpt matches every config entry against every quantizer, so 2 x 252 per-module entries cost
    seconds on a 3B model; ``layers.*.mlp.down_proj`` does the same job in one entry. A wildcard is
    kept only when it matches exactly the wanted modules of its kind, else the names are listed.
    """
    groups: dict[str, list[str]] = {}
    for m in sorted(set(modules)):
        groups.setdefault(re.sub(r"\.\d+\.", ".*.", m), []).append(m)
    out: list[str] = []
    for pattern, members in sorted(groups.items()):
        hits = {n for n in all_names if fnmatch.fnmatch(n, pattern)}
        out.extend([pattern] if hits == set(members) else members)
    return out


def fp8_quant_config(
    recipe_name: str, modules: Iterable[str], all_names: Collection[str] | None = None
) -> dict[str, Any]:
    """The recipe's weight/input quantizer settings, scoped to exactly ``modules``; all else off.

    Given the model's module names, equivalent wildcards replace the per-module entries.
    """
    import modelopt.torch.quantization as mtq

    recipe = getattr(mtq, recipe_name)
    by_name = {e["quantizer_name"]: e for e in recipe["quant_cfg"]}
    names = module_patterns(modules, all_names) if all_names is not None else sorted(modules)
    cfg: list[dict[str, Any]] = [{"quantizer_name": "*", "enable": False}]
    for m in names:
        for attr in _QUANTIZER_ATTRS:
            cfg.append({"quantizer_name": f"{m}.{attr}", "cfg": by_name[f"*{attr}"]["cfg"]})
    return {"quant_cfg": cfg, "algorithm": recipe.get("algorithm", "max")}


def lm_parts(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(decoder, output layer) of a HF causal LM or Qwen2.5-VL: logits = head(decoder(ids)[0])."""
    hf = cast("PreTrainedModel", model)  # nn.Module types other attributes Tensor | Module
    body, head = getattr(model, "model", None), hf.get_output_embeddings()
    if body is None or head is None:
        raise TypeError(f"{type(model).__name__} has no .model decoder and output embeddings")
    return body, head


def quantize_plan(
    model: nn.Module,
    recipe: str,
    modules: Sequence[str],
    calib: TokenSet,
    device: str,
    per_forward: int = 1,
    timings: dict[str, float] | None = None,
    fused_scales: str = "per_shard",
) -> nn.Module:
    """Insert FP8 quantizers on ``modules`` only and calibrate them (in place).

    The calibration forwards hold no padding (:func:`calibration_batches`). ``timings`` receives
    ``calibration_seconds``, the forward passes alone. ``fused_scales="vllm"`` then gives each
    fused q/k/v and gate/up group the scales vLLM serves it with (:mod:`.fused_scales`); the
    default keeps ModelOpt's per-shard scales, which is what the export writes.
    """
    import modelopt.torch.quantization as mtq

    if fused_scales not in FUSED_SCALES:
        raise ValueError(f"fused_scales={fused_scales!r}; use one of {FUSED_SCALES}")
    calib_batches = calibration_batches(calib, device, per_forward)

    def forward_loop(m: nn.Module) -> None:  # the decoder alone: lm_head is never quantized
        t0 = time.perf_counter()
        body = lm_parts(m)[0]
        with torch.no_grad():
            for b in calib_batches:
                body(**b.inputs, use_cache=False)
        sync(device)
        if timings is not None:
            timings["calibration_seconds"] = time.perf_counter() - t0

    names = {n for n, _ in model.named_modules()}
    model = mtq.quantize(model, fp8_quant_config(recipe, modules, names), forward_loop=forward_loop)
    if fused_scales == "vllm":
        share_scales(model, fused_groups(model))
    return model


def module_quantizers(model: nn.Module, modules: Iterable[str]) -> dict[str, list[TensorQuantizer]]:
    wanted = set(modules)
    out: dict[str, list[TensorQuantizer]] = {}
    for name, mod in model.named_modules():
        if name in wanted:
            out[name] = [getattr(mod, a) for a in _QUANTIZER_ATTRS if hasattr(mod, a)]
    missing = wanted - set(out)
    if missing:
        raise KeyError(f"modules not in model: {sorted(missing)[:3]}")
    return out

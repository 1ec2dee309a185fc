"""Fused FP8 layers measured the way vLLM serves them: one weight scale and one input scale per
fused layer.

vLLM loads q/k/v as one Linear and gate/up as one Linear. A checkpoint with static per-tensor FP8
scales per shard (what ModelOpt writes, in both of this project's formats) gives such a layer
several weight scales; its FP8 linear method (``process_weights_after_loading``) then

* dequantizes each shard's FP8 weights with the shard's own scale (to FP16) and quantizes them
  again to FP8 with the largest shard's scale, unless all shard scales are already equal
  (``requantize_with_max_scale``);
* takes the largest of the shards' input scales for the layer's activations.

So every shard but the widest-ranged one is rounded to FP8 twice, the second time on a coarser
grid that is not aligned with the first, and a trial that quantizes each shard with its own scale
measures a model nobody serves: on the demo's BF16 schemes the served KL is 4 %, 15 % and 14 %
higher. The second rounding is the effect, not the shared range: one rounding at the group's
scale moves the same schemes' KL by -1.5 % to +2.1 % only, so sharing ``amax`` alone would miss
it.

:func:`share_scales` applies the rule to a calibrated model: the input quantizers of a fused group
get the group's largest ``amax``, and the weight quantizers, where the shards' ranges differ, the
group's largest ``amax``, their own one kept as :data:`SHARD_AMAX`, ModelOpt's own rounding
switched off (``disable_quant``; enabling and disabling the quantizer works as before), and a
forward hook that returns :func:`served_weight`, vLLM's arithmetic, while the quantizer is
enabled. A hook, not a ModelOpt quant backend: a backend is a name in a per-process
registry, and a calibrated model pickled into another process (a Ray actor) would name one that
is not there; a hook is a module-level function, found by import wherever the model lands. The
weights themselves are never changed, so a plan that keeps the group BF16 sees the original
weights, and one calibrated model serves every plan.

Groups are the families' (``layers.N.qkv``, ``layers.N.gate_up``), the same ones AutoQuantize
scores and every plan takes whole; vLLM refuses a fused layer whose shards differ in precision,
so a plan that splits one is refused here too. Per-channel weight scales and dynamic per-token
inputs (``FP8_PER_CHANNEL_PER_TOKEN_CFG``) need nothing: vLLM concatenates channel scales as they
are and has no input scale to share.

What an export needs so that every loader computes one set of numbers: one weight scale and one
input scale for all shards of a group (vLLM then skips its requantization; plain transformers,
which fuses nothing, otherwise decompresses each shard with its own scale). The export writes the
codes the trials measure (:func:`trial_codes`: a shard of a shared group requantized by
:func:`requantized_codes`) with the group's scales; each shard rounded once from BF16 at the
group's scale would be better for the served model, and trials would then share the range
without the second rounding.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from orchestrator.model.families import ModelProfile, family_of

if TYPE_CHECKING:  # types only: ModelOpt is imported where quantizers exist
    from modelopt.torch.quantization.nn import TensorQuantizer

SHARD_AMAX = "_fused_shard_amax"  # a shared weight quantizer's own range, for its first rounding
FP8_MAX = 448.0  # largest e4m3 magnitude: scale = amax / 448
_TINY_AMAX = 1.0 / (1 << 24)  # below this a range is empty; its scale is 1, as ModelOpt does


def _scale(amax: torch.Tensor) -> torch.Tensor:
    """A per-tensor FP8 scale (float32) from a calibrated range, as ModelOpt's export writes it."""
    a = amax.detach().to(torch.float32).reshape(())
    return torch.where(a <= _TINY_AMAX, torch.ones_like(a), a) / FP8_MAX


def _e4m3(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def requantized_codes(
    weight: torch.Tensor, shard_amax: torch.Tensor, group_amax: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(FP8 codes, float32 scale) of one shard as vLLM serves it in a fused layer.

    The shard's own codes (weight / its scale, in float32, as ModelOpt's fake quantization of every
    other trial layer rounds), dequantized to FP16 with that scale (vLLM's per-tensor dequantize),
    quantized again with the group's scale (vLLM's kernel multiplies by the reciprocal, formed
    once, and clamps to +-448). ModelOpt's export divides in the weight's dtype instead (BF16:
    2.7 % of the reference preset's codes one step off, in every FP8 layer, fused or not); that
    difference between trials and artifact is the export's to remove, by dividing in float32.
    """
    own, group = _scale(shard_amax), _scale(group_amax)
    codes = _e4m3(weight.to(torch.float32) / own)
    dequantized = codes.to(torch.float16) * own  # an FP16 tensor times a 0-d float32: FP16
    return _e4m3(dequantized.to(torch.float32) * (1.0 / group)), group


def served_weight(
    weight: torch.Tensor, shard_amax: torch.Tensor, group_amax: torch.Tensor
) -> torch.Tensor:
    """The weight a vLLM GEMM uses for this shard (codes x the group's scale), in ``weight``'s
    dtype: what a trial's fake-quantized weight is in a fused group."""
    codes, scale = requantized_codes(weight, shard_amax, group_amax)
    return (codes.to(torch.float32) * scale).to(weight.dtype)


def trial_codes(
    weight: torch.Tensor, quantizer: TensorQuantizer
) -> tuple[torch.Tensor, torch.Tensor]:
    """(FP8 codes, float32 scale) of a calibrated static per-tensor weight quantizer's module, as
    the trials compute them: a shard of a shared group requantized to the group's scale
    (:func:`requantized_codes`), any other weight rounded once as ModelOpt's fake quantization
    does (times 448 / amax, in float32). What an export writes, so that the checkpoint holds the
    weights the trials measured."""
    if hasattr(quantizer, SHARD_AMAX):
        return requantized_codes(weight, getattr(quantizer, SHARD_AMAX), _amax(quantizer))
    amax = _amax(quantizer).to(torch.float32)
    safe = torch.where(amax <= _TINY_AMAX, torch.ones_like(amax), amax)
    return _e4m3(weight.to(torch.float32) * (FP8_MAX / safe)), _scale(amax)


def serve_hook(
    quantizer: TensorQuantizer, args: tuple[torch.Tensor, ...], output: torch.Tensor
) -> torch.Tensor:
    """Forward hook of a shared weight quantizer: while it is enabled, the served weight from the
    raw one (``args[0]``, which ModelOpt passed through); disabled, the weight as it is."""
    if not quantizer.is_enabled:
        return output
    return served_weight(args[0], getattr(quantizer, SHARD_AMAX), _amax(quantizer))


def fused_groups(model: nn.Module) -> list[list[str]]:
    """The family's groups of more than one module (q/k/v, gate/up of each block), by name."""
    by_group: dict[str, list[str]] = {}
    for m in ModelProfile(family_of(model)).eligible_modules(model):
        by_group.setdefault(m.group, []).append(m.name)
    return [sorted(names) for names in by_group.values() if len(names) > 1]


def _calibrated(q: TensorQuantizer | None) -> TensorQuantizer | None:
    """``q`` when it is an enabled, calibrated, static per-tensor quantizer, else None."""
    ok = (
        q is not None
        and q.is_enabled
        and not getattr(q, "_dynamic", False)
        and q.amax is not None
        and q.amax.numel() == 1
    )
    return q if ok else None


def _amax(q: TensorQuantizer) -> torch.Tensor:
    a = q.amax
    assert a is not None
    return a.detach().reshape(())


def share_scales(model: nn.Module, groups: Iterable[Sequence[str]]) -> int:
    """Apply vLLM's fused-layer rule to the calibrated quantizers of ``groups`` (in place).

    A group whose modules all hold enabled, calibrated static per-tensor weight quantizers is
    shared; one none of whose modules does (BF16 in a fresh plan, or a per-channel recipe) is left
    alone; one in between is a plan vLLM cannot load, and raises. Returns how many were shared.
    """
    shared = 0
    for names in groups:
        mods = [model.get_submodule(n) for n in names]
        weights = [_calibrated(getattr(m, "weight_quantizer", None)) for m in mods]
        ready = [q for q in weights if q is not None]
        if not ready:
            continue
        if len(ready) < len(mods):
            raise ValueError(
                f"fused group {list(names)} is only partly FP8; vLLM serves q/k/v and gate/up "
                "as one layer, so a plan must take the whole group"
            )
        _share_weights(ready)
        inputs = [_calibrated(getattr(m, "input_quantizer", None)) for m in mods]
        static = [q for q in inputs if q is not None]
        if len(static) == len(mods):
            _share_ranges(static)
        shared += 1
    return shared


def _share_ranges(quantizers: Sequence[TensorQuantizer]) -> None:
    top = torch.stack([_amax(q) for q in quantizers]).max()
    for q in quantizers:
        q.amax = top.reshape(q.amax.shape)


def _share_weights(quantizers: Sequence[TensorQuantizer]) -> None:
    """Each shard keeps its own range (for its first rounding) and quantizes to the group's,
    unless all ranges are equal: vLLM then uses the checkpoint's codes as they are."""
    own = [_amax(q).clone() for q in quantizers]
    if all(torch.equal(a, own[0]) for a in own) or hasattr(quantizers[0], SHARD_AMAX):
        return  # one scale already (as calibrated, or shared before)
    _share_ranges(quantizers)
    for q, a in zip(quantizers, own, strict=True):
        setattr(q, SHARD_AMAX, a)
        q.disable_quant()  # ModelOpt's one rounding would be thrown away: the hook rounds
        q.register_forward_hook(serve_hook)

"""The numerics a sweep's numbers assume, named in one place.

A trial's KL is only the deployed model's KL when the trial computes what the deployment computes.
Two choices decide that, and both are config knobs (``model.dtype``, ``model.fused_scales``):

* the dtype of the reference and of every trial: ``auto`` is BF16 on every device, the dtype every
  export is written in. On CPU, float32 used to be the default; KL(float32 model || BF16 model)
  alone is 7.5e-5 on the reference preset, more than the whole FP8 cost of a 25 % plan, so a
  float32 sweep measures another model than the one it exports;
* how fused FP8 layers are scaled: vLLM serves q/k/v and gate/up as one layer with one weight scale
  (each shard's FP8 weights requantized to the largest shard's scale) and the largest input scale
  (``orchestrator.model.fused_scales``); ModelOpt calibrates each shard on its own.

The label says which numerics a number assumes; trials.parquet, the MLflow child runs and
schemes.yaml carry it. Pure module.
"""

from __future__ import annotations

from collections.abc import Iterable

EXPORT_DTYPE = "bfloat16"  # the dtype every export writes its BF16 parts in
RUNTIME = "vLLM FP8 linear (static per-tensor scales)"  # whose fused-layer rule "vllm" emulates


def resolved_dtype(requested: str) -> str:
    """The dtype a model runs in: ``auto`` is the export's dtype on every device."""
    return EXPORT_DTYPE if requested == "auto" else requested


def numerics_label(dtype: str, fused_scales: str) -> str:
    """One line: the dtype that ran and the fused-layer scales, each saying when it is not what
    the exported checkpoint computes as vLLM serves it."""
    kind = dtype if dtype == EXPORT_DTYPE else f"{dtype} (not the exported checkpoint's numerics)"
    scales = (
        "vLLM fused scales"
        if fused_scales == "vllm"
        else "per-shard scales (not how vLLM serves fused q/k/v and gate/up)"
    )
    return f"{kind}, {scales}"


UNRECORDED = "unrecorded (trials measured before the numerics label)"


def sweep_numerics(labels: Iterable[str]) -> str:
    """The label of a sweep from its trials' labels: the one they share, else each one."""
    seen = sorted({label for label in labels if label})
    if not seen:
        return UNRECORDED
    return seen[0] if len(seen) == 1 else "mixed: " + "; ".join(seen)

"""The memory plan: parameter bytes from the config alone, what a worker needs, where it goes.

Pure arithmetic (no torch, transformers or Ray), so that the driver can refuse a model that fits no
node before anything starts, and so that the placement is tested on made-up node lists.

**Parameters** are counted from the config's dimensions (:func:`param_count`): the Qwen decoder
(embeddings, per block attention with or without q/k biases and q/k norms, the SwiGLU MLP, norms,
an untied ``lm_head``) plus the family's vision tower. ``tests/unit/test_memory.py`` checks the
count against the real module tree on the meta device for every family and preset.

**What a worker needs** uses the only measurements there are, on the Qwen2.5-VL-3B architecture
(6.99 GiB in BF16, 36 blocks, width 2048) on an H100 (``docs/benchmarks.md``, run 3):

* scoring (AutoQuantize ``gradient``, 4 x 1024 tokens per batch): peak 23.9 GiB, i.e. the weights
  plus 16.9 GiB of activations and gradients. Those grow with the tokens per batch and with what
  backward keeps per block, blocks x width, so the plan scales the 16.9 GiB by both (and by the
  dtype's size against BF16). This is an estimate for other sizes, not a measurement: it also
  scales the logits' share, which does not grow with depth, so it errs on the large side;
* the resident calibrated model of the trials: peak 9.83 GiB allocated = 1.41 x the weights;
* the allocator: 11.22 GiB reserved for those 9.83 allocated, so a GPU offers 9.83 / 11.22 = 0.876
  of its memory to a worker.

A worker goes through both phases, so it needs the larger. A worker of ``k`` GPUs spreads the model
over them (balanced), so ``k`` GPUs hold ``k x 0.876 x`` their memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

GIB = 1 << 30


# docs/benchmarks.md, run 3, one H100, qwen2.5-vl-3b-random (see the module docstring)
MEASURED_WEIGHTS_GIB = 6.99
MEASURED_SCORING_PEAK_GIB = 23.9
MEASURED_SCORING_TOKENS = 4 * 1024
MEASURED_BLOCKS_X_WIDTH = 36 * 2048
TRIAL_FACTOR = 9.83 / 6.99
USABLE_FRACTION = 9.83 / 11.22


def text_of(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The language model's fields: a VL config's ``text_config`` over its top level."""
    return {**doc, **(doc.get("text_config") or {})}


def _decoder_params(t: Mapping[str, Any], qk_norm: bool, tied: bool) -> int:
    """Qwen2 blocks have q/k/v biases; Qwen3 blocks have q/k RMSNorms and optional biases."""
    h, inter, vocab = int(t["hidden_size"]), int(t["intermediate_size"]), int(t["vocab_size"])
    heads, kv = int(t["num_attention_heads"]), int(t["num_key_value_heads"])
    hd = int(t["head_dim"]) if qk_norm else int(t.get("head_dim") or h // heads)
    q, k = heads * hd, kv * hd
    if qk_norm:
        bias = (q + 2 * k + h) if t.get("attention_bias", False) else 0
        attn = h * q + 2 * h * k + q * h + bias + 2 * hd
    else:
        attn = h * q + 2 * h * k + q * h + q + 2 * k
    block = attn + 3 * h * inter + 2 * h
    return vocab * h * (1 if tied else 2) + int(t["num_hidden_layers"]) * block + h


def _vision_params(kind: str, v: Mapping[str, Any]) -> int:
    patch_in = int(v["in_channels"]) * int(v["temporal_patch_size"]) * int(v["patch_size"]) ** 2
    merge = int(v["spatial_merge_size"]) ** 2
    if kind == "qwen2_vl":  # LayerNorms, fc1/fc2 MLP of width mlp_ratio x embed_dim
        e, out = int(v["embed_dim"]), int(v["hidden_size"])
        m = int(e * v["mlp_ratio"])
        block = 4 * e + (3 * e * e + 3 * e) + (e * e + e) + (e * m + m) + (m * e + e)
        hs = e * merge
        return patch_in * e + int(v["depth"]) * block + 2 * e + hs * hs + hs + hs * out + out
    h, inter, out = int(v["hidden_size"]), int(v["intermediate_size"]), int(v["out_hidden_size"])
    hs = h * merge
    merger = hs * hs + hs + hs * out + out
    if kind == "qwen2_5_vl":  # RMSNorms, gated MLP with biases
        block = 2 * h + (3 * h * h + 3 * h) + (h * h + h) + 2 * (h * inter + inter) + inter * h + h
        return patch_in * h + int(v["depth"]) * block + h + merger
    if kind == "qwen3_vl":  # LayerNorms, fc1/fc2 MLP, learned positions, deepstack mergers
        block = 4 * h + (3 * h * h + 3 * h) + (h * h + h) + (h * inter + inter) + (inter * h + h)
        deepstack = len(v["deepstack_visual_indexes"]) * (2 * hs + merger)
        return (
            patch_in * h
            + h
            + int(v["num_position_embeddings"]) * h
            + int(v["depth"]) * block
            + 2 * h
            + merger
            + deepstack
        )
    raise KeyError(f"no parameter count for vision tower {kind!r}")


def param_count(doc: Mapping[str, Any], qk_norm: bool, vision: str | None) -> int:
    """Every parameter of the model (tied weights once), from its config dict alone.

    Raises ``KeyError`` when the dict leaves a field to its default: the caller then asks
    transformers for the full config.
    """
    t = text_of(doc)
    tied = doc["tie_word_embeddings"] if "tie_word_embeddings" in doc else t["tie_word_embeddings"]
    n = _decoder_params(t, qk_norm, bool(tied))
    if vision is not None:
        n += _vision_params(vision, doc["vision_config"])
    return n


@dataclass(frozen=True)
class WorkerNeed:
    params: int
    dtype: str
    weights_gib: float
    scoring_gib: float
    trial_gib: float
    tokens_per_batch: int

    @property
    def worker_gib(self) -> float:
        return max(self.scoring_gib, self.trial_gib)

    def describe(self) -> str:
        return (
            f"model {self.params / 1e9:.2f} B parameters, {self.weights_gib:.1f} GiB in "
            f"{self.dtype}; a worker needs ~{self.worker_gib:.1f} GiB (scoring "
            f"{self.scoring_gib:.1f} at {self.tokens_per_batch} tokens per batch, trials "
            f"{self.trial_gib:.1f}; factors measured on the 3B, docs/benchmarks.md)"
        )


def worker_need(
    params: int, dtype_bytes: int, dtype: str, blocks: int, width: int, tokens_per_batch: int
) -> WorkerNeed:
    weights = params * dtype_bytes / GIB
    activations = (
        (MEASURED_SCORING_PEAK_GIB - MEASURED_WEIGHTS_GIB)
        * tokens_per_batch
        / MEASURED_SCORING_TOKENS
        * blocks
        * width
        / MEASURED_BLOCKS_X_WIDTH
        * dtype_bytes
        / 2
    )
    return WorkerNeed(
        params, dtype, weights, weights + activations, TRIAL_FACTOR * weights, tokens_per_batch
    )


@dataclass(frozen=True)
class Node:
    """A node as the plan sees it: its GPUs and each one's memory (GiB); 0 GPUs: a CPU node."""

    name: str
    gpus: int
    gpu_gib: float


@dataclass(frozen=True)
class Slot:
    """One worker: the node it runs on and the GPUs it reserves there."""

    node: str
    gpus: int


@dataclass(frozen=True)
class Placement:
    workers: tuple[Slot, ...]
    lines: tuple[str, ...]  # per node: what it gets and why


def gpus_for(need_gib: float, gpu_gib: float) -> int:
    """The fewest GPUs of ``gpu_gib`` each that hold ``need_gib`` spread evenly over them."""
    return max(1, math.ceil(need_gib / (gpu_gib * USABLE_FRACTION) - 1e-9))


def place(
    need_gib: float,
    nodes: Sequence[Node],
    gpus_per_worker: int | str = "auto",
    max_workers: int | None = None,
) -> Placement:
    """Workers per GPU node: ``gpus // k`` of ``k`` GPUs each, where ``k`` GPUs hold a worker.

    ``k`` is ``gpus_per_worker``, or with ``auto`` the fewest of that node's GPUs that hold
    ``need_gib``. A node whose ``k`` GPUs cannot hold a worker, or that has fewer than ``k``,
    gets none, and its line says why. Workers fill nodes in order, at most ``max_workers``.
    """
    workers: list[Slot] = []
    lines = []
    for n in nodes:
        if n.gpus == 0:
            continue
        k = gpus_for(need_gib, n.gpu_gib) if gpus_per_worker == "auto" else int(gpus_per_worker)
        holds = k * n.gpu_gib * USABLE_FRACTION
        head = f"node {n.name} has {n.gpus} x {n.gpu_gib:.1f} GiB"
        if holds < need_gib:
            lines.append(
                f"{head}: no worker ({k} GPU(s) offer {holds:.1f} GiB, a worker needs "
                f"{need_gib:.1f}; search.gpus_per_worker={gpus_per_worker})"
            )
            continue
        if k > n.gpus:
            lines.append(f"{head}: no worker (a worker needs {k} GPUs of this size)")
            continue
        count = n.gpus // k
        if max_workers is not None:
            count = min(count, max(0, max_workers - len(workers)))
        workers += [Slot(n.name, k)] * count
        lines.append(f"{head}: {count} worker(s) of {k} GPU(s)")
    return Placement(tuple(workers), tuple(lines))


def cpu_workers(need_gib: float, host_gib: float, wanted: int) -> tuple[int, str]:
    """CPU workers that fit this host's memory (each holds its own model), and why."""
    fits = int(host_gib * USABLE_FRACTION // need_gib) if need_gib > 0 else wanted
    count = min(wanted, fits)
    line = f"no GPUs: {count} CPU worker(s) in this host's {host_gib:.1f} GiB"
    if count < wanted:
        line += f" ({wanted} asked for; each needs {need_gib:.1f} GiB)"
    return count, line

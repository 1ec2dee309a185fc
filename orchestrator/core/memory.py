"""The memory plan: parameter bytes from the config alone, what a worker needs, where it goes.

Pure arithmetic (no torch, transformers or Ray; the measurements are a JSON file), so that the
driver can refuse a model that fits no node before anything starts, and so that the placement is
tested on made-up node lists.

**Parameters** are counted from the config's dimensions (:func:`param_count`): the Qwen decoder
(embeddings, per block attention with or without q/k biases and q/k norms, the SwiGLU MLP, norms,
an untied ``lm_head``) plus the family's vision tower. ``tests/unit/test_memory.py`` checks the
count against the real module tree on the meta device for every family and preset.

**What a worker needs**, per phase of its life (``orchestrator/model/worker.py``, which records
each phase's peaks into ``workers.json``): ``load``; scoring, per method (``gradient``,
``kl_div``); ``calibration`` of the resident model; ``trials`` (the reference cache built, then
every plan measured). A phase needs what it holds through it (:class:`PhaseShape`: the weights,
twice when scoring runs on a copy, and the reference cache of the selection + report rows) plus
two terms that scale:

* activations, bytes per token x block x width where backward keeps every block's (scoring), per
  token x width where a forward without gradients keeps one block's at a time (calibration,
  trials);
* logits, bytes per token x vocabulary entry of the rows formed at once.

Those two factors per phase come from measurements, never from code: ``memory_factors.json``
beside this module holds the measured rows (preset, card, date, source, the shape, and the peaks
as allocated, as reserved and as ``nvidia-smi`` saw them), and :func:`fit_factors` derives the
smallest factors under which every row's plan covers its largest peak, plus the file's margin. A
phase without rows takes the factors of one that needs at least as much (``kl_div``: no backward,
so ``gradient``'s; ``calibration``: no logits, so ``trials``'). ``load`` rows give the fixed part
every phase adds (the CUDA context and the allocator's slack over the weights; 0 without any).
``scripts/bench_memory.py --record`` adds rows; ``tests/unit/test_memory.py`` checks every row
against the plan's arithmetic.

A worker needs the most of the phases its sweep runs (``scoring.methods``). Scoring runs on a copy
of the loaded model where the worker finds room for one (``COPY_HEADROOM``), which
:meth:`WorkerNeed.gib_on` adds for a GPU of a given size. A worker of ``k`` GPUs spreads the model
over them (balanced) and never copies, so ``k`` GPUs hold ``k x USABLE_FRACTION x`` their memory
(9.83 GiB allocated per 11.22 reserved, docs/benchmarks.md run 3: headroom kept on top of the plan).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import combinations
from pathlib import Path
from typing import Any

GIB = 1 << 30

USABLE_FRACTION = 9.83 / 11.22
# Free device memory, in model sizes, the worker wants before it scores on a copy of the loaded
# model (worker.Worker._copy_fits); the plan adds the copy where a GPU offers that much.
COPY_HEADROOM = 4
# Tokens stacked into one forward pass of calibration and trials (worker.FORWARD_TOKENS), and the
# logits rows a trial forms at once (the worker's metric steps).
FORWARD_TOKENS = 32768
METRIC_ROWS = 1024

FACTORS_FILE = Path(__file__).with_name("memory_factors.json")
PHASES = ("load", "gradient", "kl_div", "calibration", "trials")
SCORING = ("gradient", "kl_div")
# backward keeps every block's activations; a forward without gradients one block's at a time
DEPTH_SCALED = {
    "load": False,
    "gradient": True,
    "kl_div": True,
    "calibration": False,
    "trials": False,
}
# an unmeasured phase takes the factors of one that needs at least as much
STANDS_IN = {"kl_div": "gradient", "calibration": "trials"}


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
class PhaseShape:
    """What a phase's memory depends on (the plan's inputs; a measured row records the same)."""

    held_gib: float  # on the device through the phase: weights (x2 on a copy), reference cache
    tokens: int  # tokens in one forward pass
    blocks: int
    width: int
    vocab: int
    logit_rows: int  # logits rows formed at once

    def units(self, phase: str) -> tuple[float, float]:
        """GiB per byte of each factor: activation elements, logits elements (each / 2**30)."""
        depth = self.blocks if DEPTH_SCALED[phase] else 1
        return self.tokens * depth * self.width / GIB, self.logit_rows * self.vocab / GIB


@dataclass(frozen=True)
class Factors:
    """A phase's bytes per activation element and per logits element, and where they came from."""

    activation: float
    logits: float
    source: str
    fixed_gib: float = 0.0  # what every phase adds: the CUDA context and allocator, seen at load

    def gib(self, shape: PhaseShape, phase: str) -> float:
        x, y = shape.units(phase)
        return shape.held_gib + self.fixed_gib + self.activation * x + self.logits * y


def row_shape(row: Mapping[str, Any]) -> PhaseShape:
    return PhaseShape(
        float(row["held_gib"]),
        int(row["tokens"]),
        int(row["blocks"]),
        int(row["width"]),
        int(row["vocab"]),
        int(row["logit_rows"]),
    )


def row_peak(row: Mapping[str, Any]) -> float:
    """The largest peak a row recorded: allocated, reserved or as ``nvidia-smi`` saw it."""
    peaks = [row.get(k) for k in ("allocated_gib", "reserved_gib", "device_used_gib")]
    return max(float(p) for p in peaks if p is not None)


def _fit(rows: Sequence[Mapping[str, Any]], phase: str, fixed: float) -> tuple[float, float]:
    """The factors (a, c >= 0) under which every row's plan is at or above its peak: of the
    candidates (two rows met exactly, or one row with the other factor at zero) the one whose
    largest ratio plan / peak is the smallest."""
    pts = [(*row_shape(r).units(phase), float(r["held_gib"]) + fixed, row_peak(r)) for r in rows]
    candidates = [(0.0, 0.0)]
    for x, y, held, peak in pts:
        if x > 0:
            candidates.append((max(0.0, peak - held) / x, 0.0))
        if y > 0:
            candidates.append((0.0, max(0.0, peak - held) / y))
    for (x1, y1, h1, p1), (x2, y2, h2, p2) in combinations(pts, 2):
        det = x1 * y2 - x2 * y1
        n1, n2 = p1 - h1, p2 - h2
        if abs(det) > 1e-12:
            a, c = (n1 * y2 - n2 * y1) / det, (x1 * n2 - x2 * n1) / det
            if a >= 0 and c >= 0:
                candidates.append((a, c))

    def plans(a: float, c: float) -> list[tuple[float, float]]:
        return [(held + a * x + c * y, peak) for x, y, held, peak in pts]

    feasible = [ac for ac in candidates if all(p >= peak - 1e-9 for p, peak in plans(*ac))]
    if not feasible:  # only where a row has no activation or logits term to scale
        raise ValueError(f"no factors cover the {phase} rows: {[r['preset'] for r in rows]}")
    return min(feasible, key=lambda ac: max(p / peak for p, peak in plans(*ac)))


def fit_factors(doc: Mapping[str, Any]) -> dict[str, Factors]:
    """Each phase's factors from the measurements file's rows (:data:`FACTORS_FILE`), the
    activation and logits terms raised by its ``margin``; see the module docstring."""
    margin = float(doc["margin"])
    rows = doc["rows"]
    loads = [r for r in rows if r["phase"] == "load"]
    # the load holds the weights and nothing that scales: the rest is the fixed part
    fixed = max([row_peak(r) - float(r["held_gib"]) for r in loads] + [0.0])
    out: dict[str, Factors] = {}
    for phase in PHASES:
        mine = [r for r in rows if r["phase"] == phase]
        if mine and phase != "load":
            a, c = _fit(mine, phase, fixed)
            out[phase] = Factors(a * (1 + margin), c * (1 + margin), f"{len(mine)} row(s)", fixed)
    for phase in PHASES:
        if phase in out:
            continue
        other = STANDS_IN.get(phase)
        if other in out:
            f = out[other]
            out[phase] = Factors(f.activation, f.logits, f"as {other}, unmeasured", fixed)
        else:
            seen = f"{len(loads)} row(s)" if phase == "load" and loads else "unmeasured"
            out[phase] = Factors(0.0, 0.0, f"weights only, {seen}", fixed)
    return out


@cache
def measurements(path: Path = FACTORS_FILE) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def factors(path: Path = FACTORS_FILE) -> dict[str, Factors]:
    return fit_factors(measurements(path))


@dataclass(frozen=True)
class Workload:
    """What a worker runs, from the sweep's config and the model's config alone."""

    params: int
    dtype_bytes: int
    dtype: str
    blocks: int
    width: int
    vocab: int
    batch_size: int
    seq_len: int
    calib_batches: int
    eval_batches: int
    report_batches: int
    methods: tuple[str, ...]
    reference_cache_gib: float

    @property
    def weights_gib(self) -> float:
        return self.params * self.dtype_bytes / GIB

    def forward_tokens(self, batches: int) -> int:
        """Tokens in one stacked forward pass over a set of ``batches`` (worker.stack_size)."""
        per = self.batch_size * self.seq_len
        return per * min(batches, max(1, FORWARD_TOKENS // per))

    def reference_cache_gib_used(self) -> float:
        """The BF16 hidden states of the selection + report rows, kept when they fit the budget
        (worker.Evaluator: tokens x width x the dtype's bytes)."""
        tokens = (self.eval_batches + self.report_batches) * self.batch_size * self.seq_len
        size = tokens * self.width * self.dtype_bytes / GIB
        return size if size <= self.reference_cache_gib else 0.0

    def shapes(self) -> dict[str, PhaseShape]:
        """Each phase's shape; scoring without the copy (:meth:`WorkerNeed.gib_on` adds it)."""
        w, batch = self.weights_gib, self.batch_size * self.seq_len
        dims = (self.blocks, self.width, self.vocab)
        rows = min(METRIC_ROWS, self.seq_len)
        evaluated = max(self.eval_batches, self.report_batches)
        out = {
            "load": PhaseShape(w, 0, *dims, 0),
            "calibration": PhaseShape(w, self.forward_tokens(self.calib_batches), *dims, 0),
            "trials": PhaseShape(
                w + self.reference_cache_gib_used(), self.forward_tokens(evaluated), *dims, rows
            ),
        }
        for m in self.methods:
            out[m] = PhaseShape(w, batch, *dims, batch)
        return out


@dataclass(frozen=True)
class WorkerNeed:
    params: int
    dtype: str
    weights_gib: float
    tokens_per_batch: int
    phases: tuple[tuple[str, float], ...]  # (phase, GiB) of each phase the sweep runs, no copy

    @property
    def phase_gib(self) -> dict[str, float]:
        return dict(self.phases)

    @property
    def worker_gib(self) -> float:
        """The most of its phases, scoring on the loaded model itself (no copy)."""
        return max(g for _, g in self.phases)

    @property
    def dominant(self) -> str:
        return max(self.phases, key=lambda p: p[1])[0]

    @property
    def scoring_gib(self) -> float:
        return max(g for p, g in self.phases if p in SCORING)

    @property
    def trial_gib(self) -> float:
        return self.phase_gib["trials"]

    def copies_on(self, gpu_gib: float) -> bool:
        """Whether a one-GPU worker scores on a copy there (``COPY_HEADROOM`` model sizes free
        once the model is loaded; the GPU's whole size counts as free, so the plan errs on the
        side of the copy)."""
        return gpu_gib - self.weights_gib >= COPY_HEADROOM * self.weights_gib

    def with_copy_gib(self) -> float:
        return max(self.worker_gib, self.scoring_gib + self.weights_gib)

    def gib_on(self, gpu_gib: float) -> float:
        """What a one-GPU worker needs on a GPU of ``gpu_gib``: scoring's copy counted there."""
        return self.with_copy_gib() if self.copies_on(gpu_gib) else self.worker_gib

    def describe(self) -> str:
        """One console line (with ``memory plan: `` and the time, within 120 columns up to the
        72B): the size, the need and the phase that sets it."""
        return (
            f"model {self.params / 1e9:.2f} B parameters, {self.weights_gib:.1f} GiB in "
            f"{self.dtype}; a worker needs ~{self.worker_gib:.1f} GiB ({self.dominant})"
        )

    def as_dict(self) -> dict[str, Any]:
        """What ``workers.json`` records as the plan: each phase's GiB, the worker's, the copy's."""
        return {
            "phases": {p: round(g, 3) for p, g in self.phases},
            "worker_gib": round(self.worker_gib, 3),
            "with_copy_gib": round(self.with_copy_gib(), 3),
            "dominant": self.dominant,
        }


def worker_need(load: Workload, fitted: Mapping[str, Factors] | None = None) -> WorkerNeed:
    """Each phase's GiB for this workload with the fitted factors (the measurements file's when
    not given)."""
    f = factors() if fitted is None else fitted
    phases = tuple((p, f[p].gib(s, p)) for p, s in load.shapes().items())
    order = {p: i for i, p in enumerate(PHASES)}
    phases = tuple(sorted(phases, key=lambda pg: order[pg[0]]))
    return WorkerNeed(
        load.params, load.dtype, load.weights_gib, load.batch_size * load.seq_len, phases
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


def need_on(
    need: float | WorkerNeed, gpu_gib: float, gpus_per_worker: int | str
) -> tuple[float, int]:
    """A worker's need on GPUs of ``gpu_gib`` and the fewest GPUs it may take: on one GPU with
    scoring's copy where the worker copies there; spread over two or more, it never copies."""
    if not isinstance(need, WorkerNeed):
        return float(need), 1
    one = need.gib_on(gpu_gib)
    if gpus_per_worker == 1 or (gpus_per_worker == "auto" and one <= gpu_gib * USABLE_FRACTION):
        return one, 1
    return need.worker_gib, 2


def place(
    need: float | WorkerNeed,
    nodes: Sequence[Node],
    gpus_per_worker: int | str = "auto",
    max_workers: int | None = None,
) -> Placement:
    """Workers per GPU node: ``gpus // k`` of ``k`` GPUs each, where ``k`` GPUs hold a worker.

    ``k`` is ``gpus_per_worker``, or with ``auto`` the fewest of that node's GPUs that hold
    ``need`` (GiB, or a :class:`WorkerNeed`, counted per node by :func:`need_on`). A node whose
    ``k`` GPUs cannot hold a worker, or that has fewer than ``k``, gets none, and its line says
    why. Workers fill nodes in order, at most ``max_workers``.
    """
    workers: list[Slot] = []
    lines = []
    for n in nodes:
        if n.gpus == 0:
            continue
        need_gib, fewest = need_on(need, n.gpu_gib, gpus_per_worker)
        k = (
            max(fewest, gpus_for(need_gib, n.gpu_gib))
            if gpus_per_worker == "auto"
            else int(gpus_per_worker)
        )
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
        each = ""
        if isinstance(need, WorkerNeed):
            copy = k == 1 and need_gib > need.worker_gib
            each = f", {need_gib:.1f} GiB each" + (" (scoring on a copy)" if copy else "")
        lines.append(f"{head}: {count} worker(s) of {k} GPU(s){each}")
    return Placement(tuple(workers), tuple(lines))


def cpu_workers(need_gib: float, host_gib: float, wanted: int) -> tuple[int, str]:
    """CPU workers that fit this host's memory (each holds its own model), and why."""
    fits = int(host_gib * USABLE_FRACTION // need_gib) if need_gib > 0 else wanted
    count = min(wanted, fits)
    line = f"no GPUs: {count} CPU worker(s) in this host's {host_gib:.1f} GiB"
    if count < wanted:
        line += f" ({wanted} asked for; each needs {need_gib:.1f} GiB)"
    return count, line

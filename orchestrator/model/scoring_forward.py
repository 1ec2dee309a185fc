"""The ``forward_step`` that AutoQuantize calls while scoring: progress lines and prefix reuse.

``kl_div`` scoring runs, per score batch, one unquantized forward and then one forward per group
with only that group's quantizers enabled. Every decoder block before the first enabled quantizer
computes exactly what the unquantized pass computed, so :class:`PrefixReuse` records each block's
inputs during the unquantized pass (forward pre-hooks with kwargs: hidden states, position
embeddings, masks, positions) and starts each quantized forward at the first block that holds an
enabled quantizer, running only the rest of the decoder, the final norm and ``lm_head``. The same
blocks see the same inputs and run the same kernels, so the logits, and the scores, are the same
bits (``tests/integration/test_prefix_reuse.py``). ModelOpt's searcher, search state and solver are
untouched: only how a forward is run changes.

The reuse trusts nothing it has not seen. In each unquantized pass it checks the model's own data
flow: block ``i + 1`` (and then the norm) received exactly the tensor block ``i`` returned,
``lm_head`` received the norm's output and the model returned ``lm_head``'s output. A forward that
changes the hidden states between blocks (Qwen3-VL adds deepstack image features after its first
blocks) is replayed only from after the last such change; a forward with a KV cache, an enabled
quantizer outside the decoder blocks, a calibration pass, or a batch whose recorded inputs would
exceed :data:`PREFIX_BUDGET_BYTES` runs in full. Pixel inputs need no special case: the vision tower
runs inside the recorded unquantized pass and its result reaches the blocks as hidden states.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from orchestrator.model.families import family_of

log = logging.getLogger(__name__)


# Device bytes the recorded block inputs of one batch may take (batch tokens x hidden x dtype bytes
# per block: 0.6 GB for the 3B at 4 x 1024 tokens); on CUDA also at most half the free memory.
PREFIX_BUDGET_BYTES = 4 << 30
PROGRESS_STEP = 0.1  # a progress line per 10% of a setup's forwards ...
PROGRESS_MAX_GAP_S = 60.0  # ... or after a minute without one,
PROGRESS_MIN_GAP_S = 10.0  # but at most one line per 10 s (and always a last one)

ForwardStep = Callable[[nn.Module, Any], torch.Tensor]


def full_forward(model: nn.Module, batch: Any) -> torch.Tensor:
    """Logits of one batch: token ids (what scoring feeds today) or a mapping of model inputs
    (``input_ids``, ``pixel_values``, ``image_grid_thw``, ...), which runs the same way."""
    if isinstance(batch, Mapping):
        return model(**batch, use_cache=False).logits
    return model(input_ids=batch, use_cache=False).logits


@dataclass(frozen=True)
class Decoder:
    """The language model's decoder blocks, final norm and ``lm_head``; ``prefix`` names blocks."""

    layers: nn.ModuleList
    norm: nn.Module
    lm_head: nn.Module
    prefix: str


def find_decoder(model: nn.Module) -> Decoder | None:
    """The one ``layers`` list outside the vision tower (Qwen2/3 text and Qwen2/2.5/3-VL names)."""
    family = family_of(model)
    hits = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList)
        and name.split(".")[-1] == "layers"
        and not family.in_vision_tower(name)
    ]
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    if len(hits) != 1 or head is None:
        return None
    name, layers = hits[0]
    parent = model.get_submodule(name.rpartition(".")[0])
    norm = getattr(parent, "norm", None)
    if not isinstance(norm, nn.Module):
        return None
    return Decoder(layers, norm, head, name + ".")


def _quantizers(module: nn.Module) -> Iterator[nn.Module]:
    from modelopt.torch.quantization.nn import TensorQuantizer

    return (m for m in module.modules() if isinstance(m, TensorQuantizer))


@dataclass(frozen=True)
class QuantizerState:
    """Where the enabled quantizers sit for one forward: ``start`` is the first block holding one
    (None: none enabled); ``outside``: one is enabled outside the blocks; ``calibrating``: any
    quantizer collects statistics (a calibration pass)."""

    start: int | None
    outside: bool
    calibrating: bool


class QuantizerMap:
    """The modules that own quantizers, found once; their quantizer children are read per call.

    AutoQuantize toggles a group by swapping the quantizer objects on the modules that own them,
    so the owners are stable and the children must be looked at again for every forward.
    """

    def __init__(self, model: nn.Module, prefix: str) -> None:
        from modelopt.torch.quantization.nn import SequentialQuantizer, TensorQuantizer

        kinds = (TensorQuantizer, SequentialQuantizer)
        self.owners: list[tuple[nn.Module, int | None]] = []
        for name, mod in model.named_modules():
            if any(isinstance(c, kinds) for c in mod.children()) and not isinstance(mod, kinds):
                block = name[len(prefix) :].split(".")[0] if name.startswith(prefix) else ""
                self.owners.append((mod, int(block) if block.isdigit() else None))

    def state(self) -> QuantizerState:
        start, outside, calibrating = None, False, False
        for mod, block in self.owners:
            for q in _quantizers(mod):
                calibrating |= bool(getattr(q, "_if_calib", False))
                if not q.is_enabled:
                    continue
                if block is None:
                    outside = True
                elif start is None or block < start:
                    start = block
        return QuantizerState(start, outside, calibrating)


def _same(a: Any, b: Any) -> bool:
    """The same values by construction: one tensor, or a view of it with the same layout."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return False
    return a is b or (
        a.data_ptr() == b.data_ptr()
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.dtype == b.dtype
    )


def _hidden(out: Any) -> Any:
    return out[0] if isinstance(out, tuple) else out


@dataclass
class _Recording:
    """One batch's unquantized pass: each block's (args, kwargs) and where replay may start."""

    batch: Any
    calls: list[tuple[tuple, dict]] = field(default_factory=list)
    plain: list[bool] = field(default_factory=list)  # plain[i]: block i got block i-1's output
    bytes: int = 0
    ok: bool = True
    last_out: Any = None
    norm_out: Any = None
    head_out: Any = None
    head_ok: bool = False

    def earliest_start(self, num_layers: int) -> int | None:
        """The first block a replay may start at (every later hand-over plain), or None."""
        complete = len(self.calls) == num_layers and len(self.plain) == num_layers + 1
        if not (self.ok and self.head_ok and complete):
            return None
        start = num_layers
        while start > 0 and self.plain[start]:
            start -= 1
        return start if start < num_layers else None


def _budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return min(PREFIX_BUDGET_BYTES, free // 2)
    return PREFIX_BUDGET_BYTES


class PrefixReuse:
    """A kl_div ``forward_step``: records in unquantized passes, replays the suffix in the others.

    Counts its forwards by kind in ``counts`` (``recorded``, ``replayed``, ``full``), and the
    blocks a replay skipped in ``skipped_blocks``, so a benchmark can say what was reused.
    """

    def __init__(self, model: nn.Module, decoder: Decoder) -> None:
        self.decoder = decoder
        self.model = model
        self.map: QuantizerMap | None = None
        self.rec: _Recording | None = None
        self.recording = False
        self.warned = False
        self.counts = {"recorded": 0, "replayed": 0, "full": 0}
        self.skipped_blocks = 0
        self.handles: list[Any] = []

    def attach(self) -> None:
        d = self.decoder
        for i, layer in enumerate(d.layers):
            pre = layer.register_forward_pre_hook(self._pre_hook(i), with_kwargs=True)
            self.handles += [pre, layer.register_forward_hook(self._post_hook)]
        self.handles.append(d.norm.register_forward_pre_hook(self._norm_pre))
        self.handles.append(d.norm.register_forward_hook(self._norm_post))
        self.handles.append(d.lm_head.register_forward_pre_hook(self._head_pre))
        self.handles.append(d.lm_head.register_forward_hook(self._head_post))

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self.rec = [], None

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        if self.map is None:
            self.map = QuantizerMap(model, self.decoder.prefix)
        state = self.map.state()
        if state.calibrating or state.outside:
            return self._full(model, batch)
        if state.start is None:
            return self._record(model, batch)
        rec = self.rec
        first = rec.earliest_start(len(self.decoder.layers)) if rec and rec.batch is batch else None
        if first is None or state.start < first:
            return self._full(model, batch)
        return self._replay(state.start)

    def _full(self, model: nn.Module, batch: Any) -> torch.Tensor:
        self.counts["full"] += 1
        return full_forward(model, batch)

    def _record(self, model: nn.Module, batch: Any) -> torch.Tensor:
        self.rec = _Recording(batch)
        self.recording = True
        try:
            logits = full_forward(model, batch)
        finally:
            self.recording = False
        rec = self.rec
        rec.head_ok = rec.head_ok and _same(logits, rec.head_out)
        rec.last_out = rec.norm_out = rec.head_out = None
        if not rec.ok:
            rec.calls = []
        self.counts["recorded"] += 1
        return logits

    def _replay(self, start: int) -> torch.Tensor:
        assert self.rec is not None
        d = self.decoder
        h = None
        for i in range(start, len(d.layers)):
            args, kwargs = self.rec.calls[i]
            if h is not None:
                args, kwargs = _with_hidden(args, kwargs, h)
            h = _hidden(d.layers[i](*args, **kwargs))
        logits = d.lm_head(d.norm(h))
        self.counts["replayed"] += 1
        self.skipped_blocks += start
        return logits

    # --- hooks (active only while recording) --------------------------------------------------

    def _pre_hook(self, i: int) -> Callable[..., None]:
        def hook(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
            rec = self.rec
            if not self.recording or rec is None or not rec.ok:
                return
            hidden = args[0] if args else kwargs.get("hidden_states")
            cache = kwargs.get("past_key_values", kwargs.get("past_key_value"))
            if not isinstance(hidden, torch.Tensor) or cache is not None:
                rec.ok = False
                return
            if i == 0:
                rec.bytes = hidden.nbytes * len(self.decoder.layers)
                budget = _budget(hidden.device)
                if rec.bytes > budget:
                    rec.ok = False
                    self._warn_budget(rec.bytes, budget)
                    return
            rec.plain.append(i > 0 and _same(hidden, rec.last_out))
            rec.calls.append((tuple(args), dict(kwargs)))

        return hook

    def _warn_budget(self, need: int, budget: int) -> None:
        if not self.warned:
            log.warning(
                "prefix reuse off for batches needing %.2f GiB of block inputs (budget %.2f GiB):"
                " full forwards",
                need / 2**30,
                budget / 2**30,
            )
            self.warned = True

    def _post_hook(self, _mod: nn.Module, _args: tuple, out: Any) -> None:
        if self.recording and self.rec is not None:
            self.rec.last_out = _hidden(out)

    def _norm_pre(self, _mod: nn.Module, args: tuple) -> None:
        if self.recording and self.rec is not None:
            self.rec.plain.append(bool(args) and _same(args[0], self.rec.last_out))

    def _norm_post(self, _mod: nn.Module, _args: tuple, out: Any) -> None:
        if self.recording and self.rec is not None:
            self.rec.norm_out = out

    def _head_pre(self, _mod: nn.Module, args: tuple) -> None:
        if self.recording and self.rec is not None:
            self.rec.head_ok = bool(args) and _same(args[0], self.rec.norm_out)

    def _head_post(self, _mod: nn.Module, _args: tuple, out: Any) -> None:
        if self.recording and self.rec is not None:
            self.rec.head_out = out


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


class ScoringProgress:
    """Wraps a ``forward_step``: a throttled log line of a setup's scoring forwards, with an ETA.

    Calibration forwards (a quantizer collecting statistics) are not counted. A ``kl_div`` batch is
    one unquantized forward plus one per (group, format) choice, a ``gradient`` batch one forward
    (and its backward), so the total is known once the groups exist, at the first scoring forward.
    """

    def __init__(self, step: ForwardStep, label: str, method: str, batches: int) -> None:
        self.step, self.label, self.method, self.batches = step, label, method, batches
        self.map: QuantizerMap | None = None
        self.per_batch = 0
        self.done = 0
        self.t0 = self.last_t = 0.0
        self.last_share = 0.0

    @property
    def total(self) -> int:
        return self.per_batch * self.batches

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        if self.map is None:
            self.map = QuantizerMap(model, "")
        if self.map.state().calibrating:
            return self.step(model, batch)
        if self.per_batch == 0:
            self.per_batch = 1 + choices_scored(model) if self.method == "kl_div" else 1
            self.t0 = self.last_t = time.perf_counter()
        out = self.step(model, batch)
        self.done += 1
        self._maybe_log()
        return out

    def _maybe_log(self) -> None:
        now = time.perf_counter()
        share = self.done / max(1, self.total)
        gap = now - self.last_t
        due = share - self.last_share >= PROGRESS_STEP or gap >= PROGRESS_MAX_GAP_S
        if self.done < self.total and not (due and gap >= PROGRESS_MIN_GAP_S):
            return
        self.last_t, self.last_share = now, share
        log.info("%s", self.line(now - self.t0))

    def line(self, elapsed: float) -> str:
        """E.g. ``scoring kl_div/FP8_DEFAULT_CFG batches 0-1: 59% (batch 2 of 2, group 5/16),
        12s, ETA 8s``: short enough for a worker's line to fit 120 columns (a kl_div batch
        starts with its unquantized forward, counted in the share done)."""
        batches, within = divmod(self.done, self.per_batch)
        groups = self.per_batch - 1
        where = f"{batches} of {self.batches} batches"
        if within and groups:
            where = f"batch {batches + 1} of {self.batches}, group {within - 1}/{groups}"
        eta = elapsed * (self.total - self.done) / max(1, self.done)
        left = f", ETA {eta:.0f}s" if self.done < self.total else ""
        return (
            f"scoring {self.label}: {100 * self.done / max(1, self.total):.0f}% ({where}),"
            f" {elapsed:.0f}s{left}"
        )


def choices_scored(model: nn.Module) -> int:
    """The quantized forwards per kl_div batch: one per configurable group and non-NONE format,
    counted as ``AutoQuantizeKLDivSearcher.estimate_sensitivity_scores`` loops over them."""
    from modelopt.torch.opt.utils import named_hparams
    from modelopt.torch.quantization.algorithms import QuantRecipe, QuantRecipeHparam

    none = QuantRecipe(quant_cfg=None)
    return sum(
        sum(1 for r in h.choices if r != none)
        for _, h in named_hparams(model, configurable=True)
        if isinstance(h, QuantRecipeHparam)
    )


@contextmanager
def scoring_step(
    model: nn.Module, method: str, reuse_prefix: bool, label: str, batches: int
) -> Iterator[ScoringProgress]:
    """The forward_step for one AutoQuantize scoring run; prefix reuse for kl_div when asked.

    The hooks live only inside the ``with`` block, and the reuse counts are logged when it ends.
    """
    reuse = None
    if method == "kl_div" and reuse_prefix:
        decoder = find_decoder(model)
        if decoder is None:
            log.warning("prefix reuse off: no single decoder 'layers' list, norm and lm_head found")
        else:
            reuse = PrefixReuse(model, decoder)
            reuse.attach()
    step = ScoringProgress(reuse or full_forward, label, method, batches)
    try:
        yield step
    finally:
        if reuse is not None:
            reuse.detach()
            blocks = len(reuse.decoder.layers) * max(1, reuse.counts["replayed"])
            log.info(
                "prefix reuse %s: %d/%d forwards replayed, %.0f%% of blocks skipped",
                label,
                reuse.counts["replayed"],
                sum(reuse.counts.values()),
                100 * reuse.skipped_blocks / blocks,
            )
            # the counts by kind, for the logs and scripts/bench_kl_prefix.py (not the console)
            log.debug("prefix reuse %s: forwards %s", label, dict(reuse.counts))

"""What one worker process does with its model: load it once, score shards, measure plans.

A sweep keeps one :class:`Worker` per slot of one or more GPUs (``search.pool`` wraps it in a Ray
actor, which reserves them; a model on several is spread over them, ``loading.spread``) for its
life:

1. start-up (when the actor is created, while the driver still prepares data and tracking):
   import ModelOpt, load the BF16 model;
2. the scoring shards given to it, each on a copy of that model (AutoQuantize changes the model it
   scores);
3. :meth:`Worker.prepare`: the resident :class:`Evaluator` (quantizers on every eligible module,
   calibrated once, the BF16 reference), built from the loaded model itself;
4. :meth:`Worker.evaluate` for every trial sent to it: toggle the plan's quantizers, measure.

So a process imports ModelOpt, loads the model and warms up CUDA once per GPU, and none of that is
paid inside a trial. All model work runs on the process's one model thread
(:func:`~orchestrator.model.device.on_model_thread`). No Ray here: plain torch + ModelOpt.

The :class:`Evaluator`: FP8 quantizers go onto *every* eligible module and are calibrated once
with ModelOpt's ``max`` algorithm, and each plan then only enables its own modules' quantizers and
disables the rest. With ``max`` calibration the ranges come from unquantized activations, so this
gives the same ranges (and the same KL) as quantizing and calibrating each plan afresh;
``tests/integration/test_trial.py`` guards that claim, and
:func:`~orchestrator.model.quantize.quantize_plan` is the fresh path it compares against (export
uses it too). Fused q/k/v and gate/up groups then get the scales vLLM serves them with, once, right
after calibration (:mod:`~orchestrator.model.fused_scales`): the groups are fixed and every plan
takes them whole, so the shared ranges hold for every plan and the resident model never changes
between trials. The worker adds ``numerics`` to every trial's metrics: the dtype the model ran in
and the fused-scale rule (``orchestrator/core/numerics.py``).

Metrics, per next-token position of the evaluation set: mean KL(BF16 || quantized), top-1 agreement,
NLL of both models and its delta. ``lm_head`` is never quantized, so the BF16 reference is fully
described by the decoder's last hidden states: those are computed once per worker and kept on the
device (32k tokens of a 3B model: 0.13 GB, where its logits would be 9 GB) when they fit the cache
budget, else recomputed per batch with all quantizers off. Logits of both models are formed from
hidden states a slice of rows at a time, so no full-vocabulary batch is ever materialised.

Speed on an H100 (docs/benchmarks.md): a fake-quant forward of one 4 x 1024 batch is bound by the
host launching ~500 quantizer calls, so batches are stacked to ~32k tokens per forward pass; the
calibration and reference passes run the decoder only.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from orchestrator.core.config import ModelConfig
from orchestrator.core.memory import COPY_HEADROOM, FORWARD_TOKENS, METRIC_ROWS
from orchestrator.core.numerics import numerics_label
from orchestrator.core.objectives import REPORT
from orchestrator.core.records import stable_hash
from orchestrator.model.batches import Batch, batches
from orchestrator.model.data import DataSets, TokenSet
from orchestrator.model.device import (
    PhasePeaks,
    default_device,
    on_model_thread,
    peak_memory,
    sync,
)
from orchestrator.model.families import ModelProfile
from orchestrator.model.fused_scales import fused_groups
from orchestrator.model.loading import load_model
from orchestrator.model.quantize import lm_parts, module_quantizers, quantize_plan
from orchestrator.runtime.hooks import fault_hooks
from orchestrator.runtime.logs import setup_logging

if TYPE_CHECKING:  # types only: transformers is imported where models are loaded
    from transformers import PreTrainedConfig

log = logging.getLogger(__name__)


# Free device memory, in model sizes, needed to score on a copy: the copy plus AutoQuantize's
# activations and gradients (23.9 GiB peak for the 7 GiB 3B model at 4 x 1024 tokens per batch);
# the memory plan counts the copy where a GPU offers this much (orchestrator/core/memory.py).


class Worker:
    """Scores shards and measures plans on one device, keeping one calibrated model resident."""

    def __init__(self, model: ModelConfig, threads: int = 0, gpus: int = 1) -> None:
        if not logging.getLogger().handlers:  # a bare Ray worker process: Ray forwards its stdout
            setup_logging()  # to the driver, so scoring's progress lines reach the sweep's log
        self.model_cfg = model
        self.device = default_device()
        self.gpus = gpus if self.device.startswith("cuda") else 1  # > 1: the model is spread
        if threads > 0 and self.device == "cpu":
            torch.set_num_threads(threads)
        self._pristine: nn.Module | None = None
        self._profile: ModelProfile | None = None
        self._evaluator: Evaluator | None = None
        self._key = ""
        self.peaks = PhasePeaks(self.device)  # each phase's peak memory, for workers.json
        self.scored_on_copy: bool | None = None  # the last scoring shard's model: a copy or not
        self.startup: dict[str, float] = on_model_thread(self._start)

    def _start(self) -> dict[str, float]:
        t0 = time.perf_counter()
        import modelopt.torch.quantization  # noqa: F401  (seconds, once per process)

        import_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        with self.peaks.phase("load"):
            self._pristine, self._profile = self._load()
        return {"import_seconds": import_seconds, "load_seconds": time.perf_counter() - t0}

    def _load(self) -> tuple[nn.Module, ModelProfile]:
        m = self.model_cfg
        net, profile = load_model(
            m.source, self.device, m.dtype, m.revision, m.trust_remote_code, self.gpus
        )
        sync(self.device)
        return net, profile

    def _fresh_model(self) -> tuple[nn.Module, ModelProfile]:
        """A BF16 model nobody has quantized, for AutoQuantize to change.

        A copy of the loaded model when the device has room for it next to scoring; otherwise the
        loaded model itself (the resident evaluator then loads a clean one from disk), or a fresh
        load once the loaded model has gone to the evaluator.
        """
        self.scored_on_copy = False
        if self._pristine is None or self._profile is None:
            return self._load()
        if self._copy_fits():
            self.scored_on_copy = True
            return copy.deepcopy(self._pristine), self._profile
        net, self._pristine = self._pristine, None
        return net, self._profile

    def _copy_fits(self) -> bool:
        """Room for a second copy and AutoQuantize's working memory: 4x the model's bytes free.

        A model spread over several GPUs is never copied: its worker was sized to hold one.
        """
        if self.gpus > 1:
            return False
        if not self.device.startswith("cuda") or self._pristine is None:
            return True
        size = sum(p.numel() * p.element_size() for p in self._pristine.parameters())
        free, _ = torch.cuda.mem_get_info(self.device)
        return free >= COPY_HEADROOM * size

    def score(self, data: DataSets, setup: Any, indices: Sequence[int]) -> dict[str, Any]:
        """One scoring shard (all of a setup's score batches when unsharded): table and state."""
        from orchestrator.model.scoring import score_shard

        def run() -> dict[str, Any]:
            with self.peaks.phase(setup.method):
                net, profile = self._fresh_model()
                try:
                    table, state = score_shard(
                        net, profile, data.score, setup, indices, self.device
                    )
                finally:
                    del net
                    self._release()
            return {"table": table.to_dict(), "state": state}

        return on_model_thread(run)

    def prepare(
        self, data: DataSets, fp8_recipe: str, reference_cache_bytes: int
    ) -> dict[str, float]:
        """Build the resident evaluator for (data, recipe) unless it is already there.

        Returns what was paid: quantizer insertion, calibration and reference seconds, and a model
        reload when the loaded one was already quantized (zeros, with ``resident_hit`` 1, when the
        evaluator was already resident).
        """
        return on_model_thread(self._prepare, data, fp8_recipe, reference_cache_bytes)

    def _prepare(
        self, data: DataSets, fp8_recipe: str, reference_cache_bytes: int
    ) -> dict[str, float]:
        key = stable_hash([data.hashes(), fp8_recipe, reference_cache_bytes])
        if self._evaluator is not None and key == self._key:
            return {
                "setup_seconds": 0.0,
                "calibration_seconds": 0.0,
                "reference_seconds": 0.0,
                "reload_seconds": 0.0,
                "resident_hit": 1.0,
            }
        self._evaluator = None
        self._release()
        t0 = time.perf_counter()
        if self._pristine is not None:  # the loaded model becomes the resident one
            net, profile = self._pristine, self._profile
            self._pristine = None
        else:  # another recipe or data set: the resident model is quantized, load a clean one
            net, profile = self._load()
        reload_seconds = time.perf_counter() - t0
        assert profile is not None
        peak_memory(self.device)  # the trials' peak starts here, not at scoring
        ev = Evaluator(
            net,
            profile,
            data.calib,
            data.eval,
            fp8_recipe,
            self.device,
            reference_cache_bytes,
            self.model_cfg.fused_scales,
            data.report,
            self.peaks,
        )
        self._evaluator, self._key = ev, key
        return {
            "setup_seconds": ev.setup_seconds,
            "calibration_seconds": ev.calibration_seconds,
            "reference_seconds": ev.reference_seconds,
            "reload_seconds": reload_seconds,
            "resident_hit": 0.0,
        }

    def evaluate(
        self,
        data: DataSets,
        fp8_recipe: str,
        reference_cache_bytes: int,
        fp8_modules: Sequence[str],
    ) -> dict[str, Any]:
        """Measure a plan on the resident model (prepared first if needed), on the model thread.

        The metrics carry what :meth:`prepare` paid for this call (zeros when it was resident)
        and ``numerics``, the label of the dtype and fused scales the model ran in.
        """
        hooks = fault_hooks()
        if hooks is not None:  # the reliability tests' worker fault may end this process here
            hooks.worker_evaluates(fp8_modules)

        def run() -> dict[str, Any]:
            paid = self._prepare(data, fp8_recipe, reference_cache_bytes)
            ev = self._evaluator
            assert ev is not None
            with self.peaks.phase("trials"):
                measured = ev.evaluate(fp8_modules)
            return {**measured, **paid, "numerics": ev.numerics}

        return on_model_thread(run)

    def memory(self) -> dict[str, Any]:
        """Each phase's peak memory so far (``device.PhasePeaks``; nulls on CPU), and whether
        scoring ran on a copy of the loaded model (the plan counts a copy where it expects one)."""
        return {"phases": self.peaks.as_dict(), "scored_on_copy": self.scored_on_copy}

    def _release(self) -> None:
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()


# Tokens stacked into one forward pass (FORWARD_TOKENS, in the memory plan's module): a fake-quant
# forward of 4 x 1024 tokens is bound by the host launching ~500 quantizer calls; 32k tokens keep
# the GPU busy. Metrics and max-calibration ranges do not depend on how batches are stacked.
# Logits rows per metric step (METRIC_ROWS) bound the float32 temporaries (~0.6 GB each).
def stack_size(tokens: TokenSet) -> int:
    """How many of the set's batches go into one forward pass (about FORWARD_TOKENS tokens)."""
    _, batch_size, seq_len = tokens.tokens.shape
    return max(1, FORWARD_TOKENS // (batch_size * seq_len))


class Evaluator:
    """A resident, calibrated model that measures any plan by toggling quantizers."""

    def __init__(
        self,
        model: nn.Module,
        profile: ModelProfile,
        calib: TokenSet,
        eval_set: TokenSet,
        fp8_recipe: str,
        device: str,
        reference_cache_bytes: int = 8 << 30,
        fused_scales: str = "vllm",
        report_set: TokenSet | None = None,
        peaks: PhasePeaks | None = None,
    ) -> None:
        def phase(name: str) -> contextlib.AbstractContextManager[None]:
            return contextlib.nullcontext() if peaks is None else peaks.phase(name)

        self.device = device
        self.fp8_recipe = fp8_recipe
        self.fused_scales = fused_scales
        self.eligible = [m.name for m in profile.eligible_modules(model)]
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        with phase("calibration"):
            self.model = quantize_plan(
                model,
                fp8_recipe,
                self.eligible,
                calib,
                device,
                stack_size(calib),
                timings,
                fused_scales,
            )
        self.calibration_seconds = timings.get("calibration_seconds", 0.0)
        self.setup_seconds = time.perf_counter() - t0 - self.calibration_seconds
        self.quantizers = module_quantizers(self.model, self.eligible)
        # shared scales hold for whole groups only: a plan may not split one
        self._fused = fused_groups(self.model) if fused_scales == "vllm" else []
        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        self.numerics = numerics_label(dtype, fused_scales)
        self.body, self.head = lm_parts(self.model)
        # the selection set's batches, then the report set's: one pass measures both
        self.eval_batches = batches(eval_set, device, stack_size(eval_set))
        self._report_docs: list[int] = []
        if report_set is not None:
            self.eval_batches += batches(report_set, device, stack_size(report_set))
            assert report_set.docs is not None
            self._report_docs = [int(d) for d in report_set.docs.reshape(-1)]
        self._set_enabled(())
        config = cast("PreTrainedConfig", self.model.config)  # nn.Module types it Tensor | Module
        width = int(config.get_text_config().hidden_size)
        itemsize = torch.finfo(next(self.model.parameters()).dtype).bits // 8
        self._reference: list[torch.Tensor] | None = None
        t0 = time.perf_counter()
        measured = eval_set.num_tokens + (report_set.num_tokens if report_set is not None else 0)
        with phase("trials"):  # the reference cache: what every trial then keeps beside the model
            if measured * width * itemsize <= reference_cache_bytes:
                self._reference = [self._hidden(b) for b in self.eval_batches]
            sync(device)
        self.reference_seconds = time.perf_counter() - t0

    def _set_enabled(self, modules: Iterable[str]) -> None:
        on = set(modules)
        unknown = on - set(self.quantizers)
        if unknown:
            raise KeyError(f"plan names modules that are not eligible: {sorted(unknown)[:3]}")
        split = [g for g in self._fused if 0 < len(on.intersection(g)) < len(g)]
        if split:
            raise ValueError(
                f"plan takes part of fused group {split[0]}; with fused_scales=vllm a plan "
                "takes q/k/v and gate/up whole, as vLLM serves them"
            )
        for name, qs in self.quantizers.items():
            for q in qs:
                q.enable() if name in on else q.disable()

    @torch.no_grad()
    def _hidden(self, batch: Batch) -> torch.Tensor:
        return self.body(**batch.inputs, use_cache=False)[0]

    def _reference_hidden(self, i: int, fp8_modules: Sequence[str]) -> torch.Tensor:
        if self._reference is not None:
            return self._reference[i]
        self._set_enabled(())
        ref = self._hidden(self.eval_batches[i])
        self._set_enabled(fp8_modules)
        return ref

    def evaluate(self, fp8_modules: Sequence[str]) -> dict[str, Any]:
        """KL, top-1 agreement and NLL of the plan against the unquantized model (:func:`measure`):
        on the selection set, and under ``report_`` on the report set, summed per document.

        Sums stay on the device until the end: one synchronisation per plan.
        """
        self._set_enabled(fp8_modules)
        try:
            return measure(
                self.eval_batches,
                lambda i: self._reference_hidden(i, fp8_modules),
                lambda i: self._hidden(self.eval_batches[i]),
                self.head,
                self.device,
                report_docs=self._report_docs,
            )
        finally:
            self._set_enabled(())


@torch.no_grad()
def compare_models(
    reference: nn.Module, model: nn.Module, tokens: TokenSet, device: str
) -> dict[str, Any]:
    """:func:`measure` of ``model`` against ``reference``, two separate models (an exported
    checkpoint as its loader builds it against the BF16 base): the trials' batches and metrics,
    each model's logits from its own output layer."""
    ref_body, ref_head = lm_parts(reference)
    body, head = lm_parts(model)
    eval_batches = batches(tokens, device, stack_size(tokens))
    # the report set is measured per document, as the trials measure it
    docs = (
        tokens.docs.reshape(-1).tolist()
        if tokens.name == "report" and tokens.docs is not None
        else []
    )

    def hidden(net: nn.Module, i: int) -> torch.Tensor:
        return net(**eval_batches[i].inputs, use_cache=False)[0]

    return measure(
        eval_batches,
        lambda i: hidden(ref_body, i),
        lambda i: hidden(body, i),
        ref_head,
        device,
        head,
        report_docs=docs,
    )


@torch.no_grad()
def measure(
    eval_batches: Sequence[Batch],
    reference: Callable[[int], torch.Tensor],
    quantized: Callable[[int], torch.Tensor],
    head: nn.Module,
    device: str,
    q_head: nn.Module | None = None,
    report_docs: Sequence[int] = (),
) -> dict[str, Any]:
    """KL, top-1 agreement and NLL of the quantized model against the reference on the target
    tokens of ``eval_batches`` (the hidden states of batch ``i`` from each callable): overall; per
    modality (``text_*``, ``image_*``) when the set has image+text rows; and per evaluation
    sequence (``per_sequence``: summed KL, agreements and target tokens of each, in the evaluation
    set's order, and the same per modality under ``text_`` and ``image_``: what error bars and
    paired comparisons are computed from). The last ``len(report_docs)`` rows are the report set's,
    each of the document named: their metrics and sums, per document, carry the prefix
    ``report_`` (none when every row is the report's). The trials and the export's measurement of
    its checkpoint both come here.
    """
    t0 = time.perf_counter()
    rows = sum(len(b.positions) for b in eval_batches)
    sums = torch.zeros(rows, 4, dtype=torch.float64, device=device)
    offset = 0
    for i, batch in enumerate(eval_batches):
        q = quantized(i)
        ref = reference(i)
        n = len(batch.positions)
        accumulate_metrics(sums[offset : offset + n], ref, q, batch, head, q_head)
        offset += n
    per_seq = sums.cpu()
    tokens = [float(p.stop - p.start) for b in eval_batches for p in b.positions]
    image = [img for b in eval_batches for img in b.image_rows]
    chosen = rows - len(report_docs)  # the selection set's rows come first
    metrics: dict[str, Any] = {}
    per_sequence: dict[str, list[float]] = {}
    if chosen:
        metrics, per_sequence = measured_part(per_seq[:chosen], tokens[:chosen], image[:chosen])
        metrics["eval_sequences"] = float(chosen)
    if report_docs:
        # the report set, summed per document: its intervals resample documents
        order = sorted(set(report_docs))
        at = {d: i for i, d in enumerate(order)}
        index = torch.tensor([at[d] for d in report_docs])
        by_doc = torch.zeros(len(order), 4, dtype=torch.float64)
        by_doc.index_add_(0, index, per_seq[chosen:])
        doc_tokens = [0.0] * len(order)
        doc_image = [False] * len(order)
        for d, t, img in zip(report_docs, tokens[chosen:], image[chosen:], strict=True):
            doc_tokens[at[d]] += t
            doc_image[at[d]] = doc_image[at[d]] or img
        report, report_seq = measured_part(by_doc, doc_tokens, doc_image)
        prefix = REPORT if chosen else ""
        metrics.update({f"{prefix}{k}": v for k, v in report.items()})
        metrics[f"{prefix}documents"] = float(len(order))
        metrics[f"{prefix}sequences"] = float(len(report_docs))
        if not chosen:
            metrics["eval_sequences"] = float(len(report_docs))
        per_sequence.update({f"{prefix}{k}": v for k, v in report_seq.items()})
    metrics["eval_seconds"] = time.perf_counter() - t0
    metrics.update(peak_memory(device))
    metrics["per_sequence"] = per_sequence
    return metrics


def measured_part(
    per_seq: torch.Tensor, tokens: Sequence[float], image: Sequence[bool]
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Metrics and per-sequence sums of some rows (each row: summed KL, agreements, NLL of the
    plan, NLL of BF16): overall, and per modality (``text_*``, ``image_*``) when image+text rows
    are among them."""
    metrics: dict[str, Any] = summarize(per_seq.sum(dim=0).tolist(), sum(tokens))
    metrics["ppl"] = math.exp(min(metrics["nll"], 700.0))
    metrics["ppl_ref"] = math.exp(min(metrics["nll_ref"], 700.0))
    per_sequence = {
        "kl": per_seq[:, 0].tolist(),
        "agree": per_seq[:, 1].tolist(),
        "tokens": list(tokens),
    }
    if any(image):
        for name, keep in (("text", [not x for x in image]), ("image", list(image))):
            if not any(keep):
                continue
            part = per_seq[torch.tensor(keep)]
            part_tokens = [t for t, k in zip(tokens, keep, strict=True) if k]
            sums = summarize(part.sum(dim=0).tolist(), sum(part_tokens))
            metrics.update({f"{name}_{k}": v for k, v in sums.items()})
            metrics[f"{name}_eval_sequences"] = float(len(part_tokens))
            per_sequence[f"{name}_kl"] = part[:, 0].tolist()
            per_sequence[f"{name}_agree"] = part[:, 1].tolist()
            per_sequence[f"{name}_tokens"] = part_tokens
    return metrics, per_sequence


def summarize(sums: Sequence[float], count: float) -> dict[str, float]:
    """Means per target token of (KL, agreements, NLL of the plan, NLL of BF16) sums."""
    kl, agree, nll_q, nll_ref = sums
    return {
        "kl_mean": kl / count,
        "top1_agreement": agree / count,
        "nll": nll_q / count,
        "nll_ref": nll_ref / count,
        "nll_delta": (nll_q - nll_ref) / count,
        "eval_tokens": float(count),
    }


def accumulate_metrics(
    sums: torch.Tensor,
    ref_hidden: torch.Tensor,
    q_hidden: torch.Tensor,
    batch: Batch,
    head: nn.Module,
    q_head: nn.Module | None = None,
) -> None:
    """Add KL(ref || q), top-1 agreements, NLL(q) and NLL(ref) of each sequence's target tokens to
    its row of ``sums`` (one row of 4 per sequence of ``batch``).

    Hidden states are (batch, seq, width); ``head`` turns ``METRIC_ROWS`` of them at a time into
    logits (``q_head``, where given, those of the quantized model: a separately loaded one), so
    the float32 temporaries stay small next to the model. Only the positions that
    predict a target count: never padding, never a prompt, never a row's last position.
    """
    ids = batch.input_ids
    for b, pos in enumerate(batch.positions):
        targets = ids[b, 1:][pos].unsqueeze(-1)
        ref_b, q_b = ref_hidden[b, :-1][pos], q_hidden[b, :-1][pos]
        for s in range(0, targets.shape[0], METRIC_ROWS):
            e = min(s + METRIC_ROWS, targets.shape[0])
            lr = torch.log_softmax(head(ref_b[s:e]).float(), dim=-1)
            lq = torch.log_softmax((head if q_head is None else q_head)(q_b[s:e]).float(), dim=-1)
            agree = (lr.argmax(-1) == lq.argmax(-1)).sum()
            nll_q = -lq.gather(-1, targets[s:e]).sum()
            nll_ref = -lr.gather(-1, targets[s:e]).sum()
            diff = torch.sub(lr, lq, out=lq)  # log p_ref - log p_q, in place of lq
            kl = diff.mul_(lr.exp_()).sum()  # lr becomes p_ref in place
            sums[b] += torch.stack([kl, agree, nll_q, nll_ref]).to(sums.dtype)

"""Apply a plan with ModelOpt, calibrate, and measure it against the BF16 model on held-out tokens.

A worker keeps one :class:`Evaluator` resident: the model is loaded once, FP8 quantizers go onto
*every* eligible module and are calibrated once with ModelOpt's ``max`` algorithm, and each plan
then only enables its own modules' quantizers and disables the rest. With ``max`` calibration the
ranges come from unquantized activations, so this gives the same ranges (and the same KL) as
quantizing and calibrating each plan afresh; ``tests/integration/test_trial.py`` guards that claim,
and :func:`quantize_plan` is the fresh path it compares against (export uses it too).

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

import fnmatch
import logging
import math
import re
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch
from torch import nn

from orchestrator.batches import Batch, batches, calibration_batches
from orchestrator.data import TokenSet
from orchestrator.profiles import ModelProfile

log = logging.getLogger(__name__)

_QUANTIZER_ATTRS = ("weight_quantizer", "input_quantizer")
# Tokens stacked into one forward pass: a fake-quant forward of 4 x 1024 tokens is bound by the host
# launching ~500 quantizer calls; 32k tokens keep the GPU busy. Metrics and max-calibration ranges
# do not depend on how batches are stacked.
FORWARD_TOKENS = 32768
_METRIC_ROWS = 1024  # logits rows per metric step: bounds the float32 temporaries (~0.6 GB each)


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


def stack_size(tokens: TokenSet) -> int:
    """How many of the set's batches go into one forward pass (about FORWARD_TOKENS tokens)."""
    _, batch_size, seq_len = tokens.tokens.shape
    return max(1, FORWARD_TOKENS // (batch_size * seq_len))


def lm_parts(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(decoder, output layer) of a HF causal LM or Qwen2.5-VL: logits = head(decoder(ids)[0])."""
    body, head = getattr(model, "model", None), model.get_output_embeddings()
    if body is None or head is None:
        raise TypeError(f"{type(model).__name__} has no .model decoder and output embeddings")
    return body, head


def sync(device: str) -> None:
    """Wait for the device's queued work (a no-op on CPU): timings end here."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def quantize_plan(
    model: nn.Module,
    recipe: str,
    modules: Sequence[str],
    calib: TokenSet,
    device: str,
    per_forward: int = 1,
    timings: dict[str, float] | None = None,
) -> nn.Module:
    """Insert FP8 quantizers on ``modules`` only and calibrate them (in place).

    The calibration forwards hold no padding (:func:`calibration_batches`). ``timings`` receives
    ``calibration_seconds``, the forward passes alone.
    """
    import modelopt.torch.quantization as mtq

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
    return mtq.quantize(model, fp8_quant_config(recipe, modules, names), forward_loop=forward_loop)


def module_quantizers(model: nn.Module, modules: Iterable[str]) -> dict[str, list[nn.Module]]:
    wanted = set(modules)
    out: dict[str, list[nn.Module]] = {}
    for name, mod in model.named_modules():
        if name in wanted:
            out[name] = [getattr(mod, a) for a in _QUANTIZER_ATTRS if hasattr(mod, a)]
    missing = wanted - set(out)
    if missing:
        raise KeyError(f"modules not in model: {sorted(missing)[:3]}")
    return out


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
    ) -> None:
        self.device = device
        self.fp8_recipe = fp8_recipe
        self.eligible = [m.name for m in profile.eligible_modules(model)]
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        self.model = quantize_plan(
            model, fp8_recipe, self.eligible, calib, device, stack_size(calib), timings
        )
        self.calibration_seconds = timings.get("calibration_seconds", 0.0)
        self.setup_seconds = time.perf_counter() - t0 - self.calibration_seconds
        self.quantizers = module_quantizers(self.model, self.eligible)
        self.body, self.head = lm_parts(self.model)
        self.eval_batches = batches(eval_set, device, stack_size(eval_set))
        self._set_enabled(())
        width = int(self.model.config.get_text_config().hidden_size)
        itemsize = torch.finfo(next(self.model.parameters()).dtype).bits // 8
        self._reference: list[torch.Tensor] | None = None
        t0 = time.perf_counter()
        if eval_set.num_tokens * width * itemsize <= reference_cache_bytes:
            self._reference = [self._hidden(b) for b in self.eval_batches]
        sync(device)
        self.reference_seconds = time.perf_counter() - t0

    def _set_enabled(self, modules: Iterable[str]) -> None:
        on = set(modules)
        unknown = on - set(self.quantizers)
        if unknown:
            raise KeyError(f"plan names modules that are not eligible: {sorted(unknown)[:3]}")
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

    @torch.no_grad()
    def evaluate(self, fp8_modules: Sequence[str]) -> dict[str, Any]:
        """KL, top-1 agreement and NLL of the plan against the unquantized model on the target
        tokens: overall; per modality (``text_*``, ``image_*``) when the set has image+text rows;
        and per evaluation sequence (``per_sequence``: summed KL, agreements and target tokens of
        each, in the evaluation set's order, and the same per modality under ``text_`` and
        ``image_``: what error bars and paired comparisons are computed from).

        Sums stay on the device until the end: one synchronisation per plan.
        """
        t0 = time.perf_counter()
        rows = sum(len(b.positions) for b in self.eval_batches)
        sums = torch.zeros(rows, 4, dtype=torch.float64, device=self.device)
        self._set_enabled(fp8_modules)
        try:
            offset = 0
            for i, batch in enumerate(self.eval_batches):
                q = self._hidden(batch)
                ref = self._reference_hidden(i, fp8_modules)
                n = len(batch.positions)
                accumulate_metrics(sums[offset : offset + n], ref, q, batch, self.head)
                offset += n
        finally:
            self._set_enabled(())
        per_seq = sums.cpu()
        tokens = [float(p.stop - p.start) for b in self.eval_batches for p in b.positions]
        image = [img for b in self.eval_batches for img in b.image_rows]
        metrics: dict[str, Any] = summarize(per_seq.sum(dim=0).tolist(), sum(tokens))
        metrics["eval_sequences"] = float(rows)
        metrics["ppl"] = math.exp(min(metrics["nll"], 700.0))
        metrics["ppl_ref"] = math.exp(min(metrics["nll_ref"], 700.0))
        per_sequence = {
            "kl": per_seq[:, 0].tolist(),
            "agree": per_seq[:, 1].tolist(),
            "tokens": tokens,
        }
        if any(image):
            for name, keep in (("text", [not x for x in image]), ("image", image)):
                if not any(keep):
                    continue
                part, n = (
                    per_seq[torch.tensor(keep)],
                    [t for t, k in zip(tokens, keep, strict=True) if k],
                )
                metrics.update(
                    {
                        f"{name}_{k}": v
                        for k, v in summarize(part.sum(dim=0).tolist(), sum(n)).items()
                    }
                )
                metrics[f"{name}_eval_sequences"] = float(len(n))
                per_sequence.update(
                    {f"{name}_kl": part[:, 0].tolist(), f"{name}_agree": part[:, 1].tolist()}
                )
                per_sequence[f"{name}_tokens"] = n
        metrics["eval_seconds"] = time.perf_counter() - t0
        metrics.update(peak_memory(self.device))
        metrics["per_sequence"] = per_sequence
        return metrics


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
) -> None:
    """Add KL(ref || q), top-1 agreements, NLL(q) and NLL(ref) of each sequence's target tokens to
    its row of ``sums`` (one row of 4 per sequence of ``batch``).

    Hidden states are (batch, seq, width); ``head`` turns ``_METRIC_ROWS`` of them at a time into
    logits, so the float32 temporaries stay small next to the model. Only the positions that
    predict a target count: never padding, never a prompt, never a row's last position.
    """
    ids = batch.input_ids
    for b, pos in enumerate(batch.positions):
        targets = ids[b, 1:][pos].unsqueeze(-1)
        ref_b, q_b = ref_hidden[b, :-1][pos], q_hidden[b, :-1][pos]
        for s in range(0, targets.shape[0], _METRIC_ROWS):
            e = min(s + _METRIC_ROWS, targets.shape[0])
            lr = torch.log_softmax(head(ref_b[s:e]).float(), dim=-1)
            lq = torch.log_softmax(head(q_b[s:e]).float(), dim=-1)
            agree = (lr.argmax(-1) == lq.argmax(-1)).sum()
            nll_q = -lq.gather(-1, targets[s:e]).sum()
            nll_ref = -lr.gather(-1, targets[s:e]).sum()
            diff = torch.sub(lr, lq, out=lq)  # log p_ref - log p_q, in place of lq
            kl = diff.mul_(lr.exp_()).sum()  # lr becomes p_ref in place
            sums[b] += torch.stack([kl, agree, nll_q, nll_ref]).to(sums.dtype)


def peak_memory(device: str) -> dict[str, float]:
    """Peak GPU memory (allocated and reserved, GiB) since the last call, which resets it: of the
    fullest of this process's visible GPUs, which are the worker's own (a model spread over
    several fills each to its share; the memory plan is per GPU), and their sum."""
    if not device.startswith("cuda"):
        return {}
    gpus = range(torch.cuda.device_count())
    allocated = [torch.cuda.max_memory_allocated(g) / 2**30 for g in gpus]
    reserved = [torch.cuda.max_memory_reserved(g) / 2**30 for g in gpus]
    for g in gpus:
        torch.cuda.reset_peak_memory_stats(g)
    out = {"peak_gpu_gib": max(allocated), "peak_gpu_reserved_gib": max(reserved)}
    if len(allocated) > 1:
        out["peak_gpu_gib_all"] = sum(allocated)
    return out


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


_THREAD: ThreadPoolExecutor | None = None
T = TypeVar("T")


def on_model_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on this process's one model thread and return its result (or raise its error).

    Ray Tune runs each trial's function on a thread of its own, also in a reused actor. On an H100
    the first fake-quant evaluation a thread makes costs about twice the CPU time of later ones
    (docs/benchmarks.md), so a trial on a new thread paid that every time; building the resident
    model and every evaluation on one long-lived thread pays it once per worker.
    """
    global _THREAD
    if _THREAD is None:
        _THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fp8-model")
    return _THREAD.submit(fn, *args, **kwargs).result()

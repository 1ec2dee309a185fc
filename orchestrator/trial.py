"""Apply a plan with ModelOpt, calibrate, and measure it against the BF16 model on held-out tokens.

A worker keeps one :class:`Evaluator` resident: the model is loaded once, FP8 quantizers go onto
*every* eligible module and are calibrated once with ModelOpt's ``max`` algorithm, and each plan then
only enables its own modules' quantizers and disables the rest. With ``max`` calibration the ranges
come from unquantized activations, so this gives the same ranges (and the same KL) as quantizing and
calibrating each plan afresh; ``tests/integration/test_trial.py`` guards that claim, and
:func:`quantize_plan` is the fresh path it compares against (export uses it too).

Metrics, per next-token position of the evaluation set: mean KL(BF16 || quantized), top-1 agreement,
NLL of both models and its delta. Reference logits are computed once per worker and kept on the host
in the model's own output dtype (bit-identical to recomputing them) when they fit the cache budget;
otherwise each batch recomputes them with all quantizers off. Only one batch of full-vocabulary
logits is ever on the device at a time.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from orchestrator.config import ModelConfig
from orchestrator.data import DataSets, TokenSet
from orchestrator.profiles import ModelProfile, load_model
from orchestrator.records import stable_hash

log = logging.getLogger(__name__)

_QUANTIZER_ATTRS = ("weight_quantizer", "input_quantizer")


def fp8_quant_config(recipe_name: str, modules: Iterable[str]) -> dict[str, Any]:
    """The recipe's weight/input quantizer settings, scoped to exactly ``modules``; all else off."""
    import modelopt.torch.quantization as mtq

    recipe = getattr(mtq, recipe_name)
    by_name = {e["quantizer_name"]: e for e in recipe["quant_cfg"]}
    cfg: list[dict[str, Any]] = [{"quantizer_name": "*", "enable": False}]
    for m in sorted(modules):
        for attr in _QUANTIZER_ATTRS:
            cfg.append({"quantizer_name": f"{m}.{attr}", "cfg": by_name[f"*{attr}"]["cfg"]})
    return {"quant_cfg": cfg, "algorithm": recipe.get("algorithm", "max")}


def _batches(tokens: TokenSet, device: str) -> list[torch.Tensor]:
    return [torch.as_tensor(b, dtype=torch.long, device=device) for b in tokens.tokens]


def quantize_plan(
    model: nn.Module, recipe: str, modules: Sequence[str], calib: TokenSet, device: str
) -> nn.Module:
    """Insert FP8 quantizers on ``modules`` only and calibrate them (in place)."""
    import modelopt.torch.quantization as mtq

    batches = _batches(calib, device)

    def forward_loop(m: nn.Module) -> None:
        with torch.no_grad():
            for b in batches:
                m(input_ids=b, use_cache=False)

    return mtq.quantize(model, fp8_quant_config(recipe, modules), forward_loop=forward_loop)


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
        t0 = time.perf_counter()
        self.model = quantize_plan(model, fp8_recipe, self.eligible, calib, device)
        self.calibration_seconds = time.perf_counter() - t0
        self.quantizers = module_quantizers(self.model, self.eligible)
        self.eval_batches = _batches(eval_set, device)
        self._set_enabled(())
        vocab = int(self.model.config.get_text_config().vocab_size)
        itemsize = torch.finfo(next(self.model.parameters()).dtype).bits // 8
        ref_bytes = eval_set.num_tokens * vocab * itemsize
        self._reference: list[torch.Tensor] | None = None
        t0 = time.perf_counter()
        if ref_bytes <= reference_cache_bytes:
            self._reference = [self._logits(b).to("cpu") for b in self.eval_batches]
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
    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=batch, use_cache=False).logits[:, :-1]

    def _reference_logits(self, i: int) -> torch.Tensor:
        if self._reference is not None:
            return self._reference[i].to(self.device, non_blocking=True)
        self._set_enabled(())
        return self._logits(self.eval_batches[i])

    @torch.no_grad()
    def evaluate(self, fp8_modules: Sequence[str]) -> dict[str, float]:
        """KL, top-1 agreement and NLL of the plan against the unquantized model."""
        t0 = time.perf_counter()
        kl = agree = nll_q = nll_ref = 0.0
        count = 0
        for i, batch in enumerate(self.eval_batches):
            ref = torch.log_softmax(self._reference_logits(i).float(), dim=-1)
            self._set_enabled(fp8_modules)
            q = torch.log_softmax(self._logits(batch).float(), dim=-1)
            target = batch[:, 1:].unsqueeze(-1)
            kl += (ref.exp() * (ref - q)).sum(-1).sum().item()
            agree += (ref.argmax(-1) == q.argmax(-1)).sum().item()
            nll_q -= q.gather(-1, target).sum().item()
            nll_ref -= ref.gather(-1, target).sum().item()
            count += target.numel()
            del ref, q
        self._set_enabled(())
        metrics = {
            "kl_mean": kl / count,
            "top1_agreement": agree / count,
            "nll": nll_q / count,
            "nll_ref": nll_ref / count,
            "nll_delta": (nll_q - nll_ref) / count,
            "eval_tokens": float(count),
            "eval_seconds": time.perf_counter() - t0,
        }
        metrics["ppl"] = math.exp(min(metrics["nll"], 700.0))
        metrics["ppl_ref"] = math.exp(min(metrics["nll_ref"], 700.0))
        return metrics


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


_RESIDENT: dict[str, Evaluator] = {}


def resident_evaluator(
    model: ModelConfig, data: DataSets, fp8_recipe: str, reference_cache_bytes: int
) -> tuple[Evaluator, dict[str, float]]:
    """This worker's calibrated model for (model, data, recipe), built on first use and then kept.

    Ray Tune reuses the trial actor (``reuse_actors=True``), so every later trial on this worker
    skips loading, quantizer insertion, calibration and the reference pass. The returned timings are
    zero on a hit, which the benchmark uses to show what was paid once.
    """
    key = stable_hash([model.model_dump(), data.hashes(), fp8_recipe, reference_cache_bytes])
    if key in _RESIDENT:
        zero = {"setup_seconds": 0.0, "calibration_seconds": 0.0, "reference_seconds": 0.0}
        return _RESIDENT[key], {**zero, "resident_hit": 1.0}
    _RESIDENT.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    device = default_device()
    t0 = time.perf_counter()
    net, profile = load_model(
        model.source, device, model.dtype, model.revision, model.trust_remote_code
    )
    load_seconds = time.perf_counter() - t0
    ev = Evaluator(net, profile, data.calib, data.eval, fp8_recipe, device, reference_cache_bytes)
    _RESIDENT[key] = ev
    return ev, {
        "setup_seconds": load_seconds,
        "calibration_seconds": ev.calibration_seconds,
        "reference_seconds": ev.reference_seconds,
        "resident_hit": 0.0,
    }

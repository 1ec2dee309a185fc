"""The exported checkpoint measured as its loader builds it: is the label the artifact's number?

A scheme's KL and top-1 agreement in ``schemes.yaml`` are a trial's: a fake-quantized model in
memory. What ships is a folder of FP8 codes and scales, read by another loader. After the static
check passes, the export loads what it wrote through the loader available here (plain
transformers' ``from_pretrained`` of the family's class for compressed-tensors; the project's
:func:`~orchestrator.export.checkpoint.load_exported` for the ModelOpt format), measures it against
the BF16 base model with the trials' own code (:func:`orchestrator.model.worker.compare_models`)
on the set the label was judged on (:func:`judging_set`), and writes the result into
``scheme.json`` as ``artifact`` beside the trial's ``metrics``. When the artifact's KL lies outside
the trial's 95 % interval the export fails like a failed check: one line, exit 1, nothing
published. ``python -m orchestrator.export --measure DIR`` measures a published folder again.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.core.config import SweepConfig, read_written_config
from orchestrator.core.stats import ratio_ci
from orchestrator.model.data import DataSets, TokenSet
from orchestrator.outputs.console import log_wrapped

log = logging.getLogger("orchestrator.export")

# how the folder was read back: its codes and scales in the trials' arithmetic (what vLLM serves),
# or plain transformers' compressed-tensors layers
SERVED = "load_exported"
TRANSFORMERS = "transformers"


def judging_set(data: DataSets) -> TokenSet:
    """The sequences a label's numbers are judged on, so the artifact is measured on the same
    ones: the report set (the selection set for a sweep without one)."""
    return data.report if data.report is not None else data.eval


def set_name(tokens: TokenSet) -> str:
    return "report" if tokens.name == "report" else "selection"


def load_transformers(folder: Path, device: str) -> Any:
    """A compressed-tensors folder as plain transformers builds it (its own FP8 layers)."""
    import torch

    from orchestrator.model.families import loader_class

    config = json.loads((folder / "config.json").read_text())
    cls = loader_class(config["model_type"])
    model = cls.from_pretrained(folder, dtype=torch.bfloat16).to(device).eval()
    with torch.no_grad():  # compressed-tensors decompresses on the whole model's first forward,
        model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device))  # not the decoder's
    return model


def measure_artifact(
    folder: Path, scheme: Mapping[str, Any], cfg: SweepConfig, data: DataSets, device: str
) -> dict[str, Any]:
    """``scheme.json``'s ``artifact`` block for the folder; raises ``ExportCheckError`` with one
    line when its KL is outside the trial's interval (``scheme["metrics"]``).

    The folder is read back with :func:`~orchestrator.export.checkpoint.load_exported`: its BF16
    weights, FP8 codes and scales, in the arithmetic the trials use (the label's runtime, vLLM):
    that is the number that must match. A compressed-tensors folder is also measured as plain
    transformers builds it (``transformers``); that runtime (compressed-tensors' forward) divides
    the activations by their scale in BF16 on any device, where vLLM divides in float32, so its
    number is recorded, and a disagreement is a warning, not a failure."""
    from orchestrator.export.checkpoint import ExportCheckError, load_exported
    from orchestrator.model.loading import load_model

    fmt = scheme["export"]["format"]
    tokens = judging_set(data)
    m = cfg.model  # the BF16 base, loaded once for every loader's measurement
    base, _ = load_model(m.source, device, "bfloat16", m.revision, m.trust_remote_code)
    block = _measured(base, load_exported(folder, device), SERVED, cfg, tokens, device)
    line, inside = verdict(scheme, block)
    block["within_trial_ci"] = inside
    if inside is False:
        raise ExportCheckError([line])
    log_wrapped(log, line, level=logging.INFO if inside else logging.WARNING)
    if fmt == "compressed-tensors":
        other = _measured(
            base, load_transformers(folder, device), TRANSFORMERS, cfg, tokens, device
        )
        line, other["within_trial_ci"] = verdict(scheme, other)
        if other["within_trial_ci"] is False:
            line += "; plain transformers divides activations by their scale in BF16 (vLLM: FP32)"
        log_wrapped(log, line, level=logging.INFO if other["within_trial_ci"] else logging.WARNING)
        block["transformers"] = other
    return block


def _measured(
    base: Any, artifact: Any, loader: str, cfg: SweepConfig, tokens: TokenSet, device: str
) -> dict[str, Any]:
    """One loader's measurement of the artifact against the BF16 ``base``, as scheme.json keeps
    it; the artifact is released afterwards (the caller holds no other reference)."""
    from orchestrator.model.worker import compare_models

    metrics = compare_models(base, artifact, tokens, device)
    del artifact
    gc.collect()
    seqs = metrics["per_sequence"]
    kl = ratio_ci(seqs["kl"], seqs["tokens"], cfg.seed)
    top1 = ratio_ci(seqs["agree"], seqs["tokens"], cfg.seed)
    return {
        "loader": loader,
        "set": set_name(tokens),
        "kl_mean": metrics["kl_mean"],
        "kl_ci": [kl.low, kl.high],
        "top1_agreement": metrics["top1_agreement"],
        "top1_ci": [top1.low, top1.high],
        "nll_delta": metrics["nll_delta"],
        "eval_tokens": metrics["eval_tokens"],
        "eval_sequences": metrics["eval_sequences"],
    }


def verdict(scheme: Mapping[str, Any], block: Mapping[str, Any]) -> tuple[str, bool | None]:
    """(one line: the artifact's KL against the label's, whether it lies in the trial's 95 %
    interval; None when the label has no interval to compare with)."""
    label = scheme.get("metrics") or {}
    name, fmt, kl = scheme.get("name"), scheme["export"]["format"], block["kl_mean"]
    head = f"{name}: {fmt} checkpoint read by {block['loader']}: KL {kl:.4g}"
    if "kl_ci_low" not in label or "kl_ci_high" not in label:
        return f"{head}; the label has no KL interval to compare it with", None
    low, high, mean = label["kl_ci_low"], label["kl_ci_high"], label.get("kl_mean", float("nan"))
    inside = bool(low <= kl <= high)
    where = "inside" if inside else "outside"
    return (
        f"{head} vs label KL {mean:.4g}: {where} the trial's 95% interval "
        f"[{low:.4g}, {high:.4g}] ({block['set']} set)",
        inside,
    )


def remeasure(folder: Path, device: str | None = None) -> list[str]:
    """``--measure DIR``: the published folder measured again against its label; the one-line
    disagreement, or nothing when the artifact's KL lies in the trial's interval. Writes nothing."""
    from orchestrator.export.checkpoint import ExportCheckError
    from orchestrator.model.datasets import build_data
    from orchestrator.model.device import default_device

    scheme = json.loads((folder / "scheme.json").read_text())
    cfg = read_written_config(Path(scheme["export"]["sweep_output"]) / "config.yaml")
    try:
        measure_artifact(folder, scheme, cfg, build_data(cfg), device or default_device())
    except ExportCheckError as e:
        return e.problems
    return []

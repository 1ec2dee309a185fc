"""A published scheme as a checkpoint that loads where it is used.

The scheme's module list (``plans/<hash>.json``) is applied to a fresh BF16 model with ModelOpt,
calibrated on the sweep's own calibration tokens and exported with ModelOpt's unified HF exporter;
:mod:`orchestrator.export.formats` finishes that folder as ``--format modelopt`` (vLLM,
TensorRT-LLM) or rewrites it as ``compressed-tensors`` (vLLM and plain transformers).
``scheme.json`` records the plan, the sweep, the MLflow run and the library versions; the
scheme's MLflow run is tagged ``export.<format>`` with the folder, in the store of the folder the
scheme was read from (its own ``mlflow.db`` unless the sweep was given a tracking URI: a copy
tags the copy's runs). ``schemes.yaml``, ``config.yaml`` and the plans are checked against the
hashes the sweep recorded before anything is built (a changed one: exit 2).
The FP8 weights the exporter wrote are replaced by the codes and scales the trials computed
(:func:`trial_weights`: vLLM's shared scales for fused groups when the sweep had them).
:mod:`orchestrator.export.check` then checks the files as each loader will read them, and
:mod:`orchestrator.export.artifact` measures the folder as its loader builds it against the
label; only a folder that passes both is renamed into place, so a failed export leaves nothing
behind.
Nothing is written into ``--output``, so exporting from a folder whose sweep is still running is
allowed; it uses the ``schemes.yaml`` there at that moment, and the log says so.

``transformers`` has no loader for the ModelOpt format (it silently drops the scales);
:func:`load_exported` loads that folder and puts the FP8 weights and their scales back through
ModelOpt's fake quantization, which is how the tests compare it with the in-memory model.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from orchestrator.core.config import ConfigError, SweepConfig, read_written_config
from orchestrator.export.check import check_export
from orchestrator.export.formats import (
    checkpoint_spelling,
    finish_modelopt,
    write_compressed_tensors,
)
from orchestrator.outputs import integrity, storage
from orchestrator.outputs.files import read_sweep_json, write_json
from orchestrator.runtime.host import library_versions
from orchestrator.tracking.uri import OWN_STORE, default_tracking_uri, folder_uri

log = logging.getLogger(__name__)
FP8_MAX = 448.0
FORMATS = ("modelopt", "compressed-tensors")
EXPORT_LIBRARIES = ("torch", "transformers", "nvidia-modelopt", "compressed-tensors", "safetensors")


def _schemes_doc(output: Path) -> dict[str, Any]:
    """schemes.yaml, once it, the sweep's config and every plan it names are what the sweep
    wrote (``outputs/integrity.py``): an export never builds from a damaged file."""
    path = output / "schemes.yaml"
    if not path.exists():
        raise ConfigError(f"--output {output}: no schemes.yaml (run the sweep or select first)")
    sweep = read_sweep_json(output) or {}
    integrity.refuse_changed(output, sweep, ["schemes.yaml"])
    doc = dict(yaml.safe_load(path.read_text()))
    # the knee is exportable too; its plan is often a scheme's, and a changed one is named once
    plans = integrity.plan_files(doc["schemes"], doc.get("knee"))
    for plan in plans:
        integrity.inside(output, plan, "schemes.yaml names the plan")
    integrity.refuse_changed(output, sweep, ["config.yaml", *plans])
    return doc


def scheme_names(output: Path) -> list[str]:
    return [s["name"] for s in _schemes_doc(output)["schemes"]]


def find_scheme(output: Path, name: str) -> dict[str, Any]:
    """A published scheme by name, or the knee of the front as ``knee`` when the sweep wrote its
    plan (the console's summary offers it beside the schemes)."""
    doc = _schemes_doc(output)
    path = output / "schemes.yaml"
    knee = doc.get("knee") or {}
    if name == "knee" and knee.get("modules"):
        return dict(knee)
    names = [s["name"] for s in doc["schemes"]] + (["knee"] if knee.get("modules") else [])
    if name not in names:
        raise ConfigError(f"--scheme {name!r}: not in {path}; choose one of {', '.join(names)}")
    return next(s for s in doc["schemes"] if s["name"] == name)


def export_scheme(
    output: Path, name: str, dest: Path, fmt: str = "modelopt", device: str | None = None
) -> Path:
    """Quantize and calibrate the scheme's plan afresh (with the sweep's fused-layer scales),
    write it as ``fmt``, check, measure it as its loader builds it (:mod:`.artifact`), publish."""
    from orchestrator.export.artifact import measure_artifact
    from orchestrator.model.datasets import build_data
    from orchestrator.model.device import default_device

    scheme = find_scheme(output, name)
    cfg = read_written_config(output / "config.yaml")
    plan = json.loads((output / scheme["modules"]).read_text())
    dest = check_dest(dest)
    device = device or default_device()
    data = build_data(cfg)
    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model = _calibrated_model(cfg, plan, data.calib, device)
        write_format(model, fmt, tmp, name, plan["fp8_modules"])
        del model  # the measurement loads the base model and the checkpoint beside each other
        doc = provenance(output, scheme, plan, fmt, cfg.model.fused_scales)
        write_json(tmp / "scheme.json", doc)
        problems = check_export(tmp)
        if problems:
            raise ExportCheckError(problems)
        doc["artifact"] = measure_artifact(tmp, doc, cfg, data, device)  # exit 1 if it disagrees
        write_json(tmp / "scheme.json", doc)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        full = storage.find(e, dest) if isinstance(e, Exception) else None
        if full is not None and full is not e:  # --dest's disk is full: one line, exit 5
            raise full from e
        raise
    if dest.exists():
        dest.rmdir()
    tmp.rename(dest)
    log.info("exported %s as %s (%d FP8 modules) to %s", name, fmt, len(plan["fp8_modules"]), dest)
    tag_run(output, scheme, dest, fmt)
    return dest


def check_dest(dest: Path) -> Path:
    dest = dest.resolve()
    if dest.exists() and any(dest.iterdir()):
        raise ConfigError(f"--dest {dest}: folder exists and is not empty")
    return dest


class ExportCheckError(RuntimeError):
    """The written folder would not load as planned; nothing was published."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def _calibrated_model(cfg: SweepConfig, plan: dict[str, Any], calib: Any, device: str) -> Any:
    """The plan on a fresh BF16 model, calibrated, with the fused-layer scales the trials had
    (``model.fused_scales``: vLLM's shared ones, or ModelOpt's per shard)."""
    from orchestrator.model.loading import load_model
    from orchestrator.model.quantize import quantize_plan

    model, _ = load_model(
        cfg.model.source, device, "bfloat16", cfg.model.revision, cfg.model.trust_remote_code
    )
    return quantize_plan(
        model,
        plan["fp8_recipe"],
        plan["fp8_modules"],
        calib,
        device,
        fused_scales=cfg.model.fused_scales,
    )


def write_format(
    model: Any, fmt: str, folder: Path, name: str, fp8_modules: Sequence[str] = ()
) -> None:
    """ModelOpt's unified HF export, its FP8 weights replaced by the trials' codes and scales
    (:func:`trial_weights`), finished as ``modelopt`` or rewritten as compressed-tensors."""
    import torch
    from modelopt.torch.export import export_hf_checkpoint

    modelopt = folder if fmt == "modelopt" else folder.with_name(f"{folder.name}.modelopt")
    shutil.rmtree(modelopt, ignore_errors=True)
    measured = trial_weights(model, fp8_modules)  # before the exporter turns weights into codes
    export_hf_checkpoint(model, dtype=torch.bfloat16, export_dir=modelopt)
    replace_weights(modelopt, measured)
    if fmt == "modelopt":
        finish_modelopt(modelopt, name)
        return
    try:
        write_compressed_tensors(modelopt, folder)
    finally:
        shutil.rmtree(modelopt, ignore_errors=True)


def trial_weights(model: Any, fp8_modules: Sequence[str]) -> dict[str, tuple[Any, Any]]:
    """Module name -> (FP8 codes, float32 scale) of each FP8 module as the trials computed them
    (:func:`~orchestrator.model.fused_scales.trial_codes`): a fused group's shards requantized to
    the group's one scale when the sweep had vLLM's fused scales, and every weight rounded from
    float32, where ModelOpt's exporter divides in BF16 (2.7 % of the reference preset's codes one
    step off). Per-channel weights (no single range) keep the exporter's codes."""
    import torch

    from orchestrator.model.fused_scales import trial_codes
    from orchestrator.model.quantize import module_quantizers

    out = {}
    named = dict(model.named_modules())
    with torch.no_grad():
        for name, (wq, _) in module_quantizers(model, fp8_modules).items():
            if wq.amax is not None and wq.amax.numel() == 1:  # per-channel: the exporter's own
                out[name] = trial_codes(named[name].weight, wq)
    return out


def replace_weights(folder: Path, measured: Mapping[str, tuple[Any, Any]]) -> None:
    """Write ``measured`` codes and scales over the ModelOpt folder's (same names, shapes and
    dtypes: FP8 codes, float32 scalar scales)."""
    from safetensors.torch import load_file, save_file

    from orchestrator.export.formats import export_family

    if not measured:
        return
    family = export_family(json.loads((folder / "config.json").read_text()))
    for f in sorted(folder.glob("*.safetensors")):
        tensors = load_file(f)
        changed = False
        for name, (codes, scale) in measured.items():
            key = checkpoint_spelling(family, tensors, name)
            if f"{key}.weight" not in tensors:
                continue
            old, old_scale = tensors[f"{key}.weight"], tensors[f"{key}.weight_scale"]
            if old.shape != codes.shape or old.dtype != codes.dtype:
                raise ValueError(f"{key}.weight: exporter wrote {old.dtype} {list(old.shape)}")
            tensors[f"{key}.weight"] = codes.contiguous().cpu()
            tensors[f"{key}.weight_scale"] = scale.reshape(old_scale.shape).to(old_scale.dtype)
            changed = True
        if changed:
            save_file(tensors, f, metadata={"format": "pt"})


def provenance(
    output: Path,
    scheme: Mapping[str, Any],
    plan: Mapping[str, Any],
    fmt: str,
    fused_scales: str = "vllm",
) -> dict[str, Any]:
    """``scheme.json``: the catalog entry, its modules, and where and with what it was made;
    ``export.fused_scales`` says whether fused groups share one weight and one input scale
    (``vllm``), which the check then verifies."""
    header = {k: v for k, v in _schemes_doc(output).items() if k != "schemes"}
    return {
        **scheme,
        "fp8_modules": plan["fp8_modules"],
        "export": {
            "format": fmt,
            "scheme": scheme["name"],
            "plan_hash": scheme["plan_hash"],
            "fused_scales": fused_scales,
            "sweep": header.get("sweep"),
            "config_hash": header.get("config_hash"),
            "parent_run_id": header.get("parent_run_id"),
            "mlflow_run_id": scheme.get("mlflow_run_id"),
            "sweep_output": str(output),
            "library_versions": library_versions(EXPORT_LIBRARIES),
        },
    }


def tag_run(output: Path, scheme: Mapping[str, Any], dest: Path, fmt: str) -> None:
    """Tag the scheme's MLflow run ``export.<format>`` = the folder; warn, never fail, if not."""
    sweep = read_sweep_json(output) or {}
    run_id, uri = scheme.get("mlflow_run_id"), folder_uri(sweep, output)
    if not run_id or (uri == default_tracking_uri(output) and not (output / OWN_STORE).exists()):
        log.warning("%s: no MLflow run or store recorded; run not tagged", scheme["name"])
        return
    from orchestrator.tracking import client

    try:
        client.tag_run(uri, run_id, {f"export.{fmt}": str(dest)})
    except Exception as e:  # the checkpoint is published either way; say what is missing
        log.warning("could not tag MLflow run %s with the export: %s", run_id, e)


def load_exported(path: Path, device: str = "cpu") -> Any:
    """Load an export with transformers and restore its FP8 layers as fake-quant modules: the
    folder's own BF16 weights, FP8 codes and scales, computed the way the trials compute (a
    compressed-tensors folder too, read without transformers' compressed-tensors layers: what
    vLLM serves from it, not what plain transformers computes on CPU)."""
    import modelopt.torch.quantization as mtq
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig

    from orchestrator.model.families import family_for, loader_class
    from orchestrator.model.quantize import fp8_quant_config, module_quantizers

    scheme = json.loads((path / "scheme.json").read_text())
    config = AutoConfig.from_pretrained(path)
    family = family_for(config.model_type)
    cls = loader_class(config.model_type)
    quant = getattr(config, "quantization_config", None)
    if isinstance(quant, dict) and quant.get("quant_method") == "compressed-tensors":
        del config.quantization_config  # the FP8 layers are restored below, as in the trials
    model = cls.from_pretrained(path, config=config, dtype=torch.bfloat16).to(device).eval()
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(f, "pt") as fh:
            tensors.update({k: fh.get_tensor(k) for k in fh.keys()})
    modules = scheme["fp8_modules"]
    model = mtq.quantize(model, fp8_quant_config(scheme["fp8_recipe"], modules), forward_loop=None)
    named = dict(model.named_modules())
    for name, (wq, iq) in module_quantizers(model, modules).items():
        key = checkpoint_spelling(family, tensors, name)
        # a per-tensor scale: a scalar in the ModelOpt format, shape (1,) in compressed-tensors
        scale = _per_tensor(tensors[f"{key}.weight_scale"].float())
        w = tensors[f"{key}.weight"].float() * scale
        with torch.no_grad():
            named[name].weight.copy_(w.to(named[name].weight.dtype))
        wq.amax = (scale * FP8_MAX).to(device)
        iq.amax = (_per_tensor(tensors[f"{key}.input_scale"].float()) * FP8_MAX).to(device)
    return model


def _per_tensor(scale: Any) -> Any:
    return scale.reshape(()) if scale.numel() == 1 else scale

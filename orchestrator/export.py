"""``python -m orchestrator.export``: write a published scheme as a deployable Hugging Face checkpoint.

    python -m orchestrator.export --output runs/demo-tiny --scheme fp8_autoquant_top50 --dest ckpt/

The scheme's module list (``plans/<hash>.json``) is applied to a fresh BF16 model with ModelOpt,
calibrated on the sweep's own calibration tokens, and exported with ModelOpt's unified HF exporter:
FP8 (e4m3) weights with per-tensor scales for the planned modules, BF16 elsewhere, and
``hf_quant_config.json`` listing the excluded modules, which vLLM and TensorRT-LLM read. The folder
is written next to ``--dest`` and renamed into place, so a failed export leaves nothing behind.

``transformers`` itself has no CPU loader for ModelOpt FP8 checkpoints; :func:`load_exported`
loads the folder with ``transformers`` and puts the FP8 weights and their scales back through
ModelOpt's fake quantization, which is how the tests compare the checkpoint with the in-memory model.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from orchestrator.config import ConfigError, SweepConfig, read_yaml

log = logging.getLogger(__name__)
FP8_MAX = 448.0


def find_scheme(output: Path, name: str) -> dict[str, Any]:
    path = output / "schemes.yaml"
    if not path.exists():
        raise ConfigError(f"--output {output}: no schemes.yaml (run the sweep or select first)")
    doc = yaml.safe_load(path.read_text())
    names = [s["name"] for s in doc["schemes"]]
    if name not in names:
        raise ConfigError(f"--scheme {name!r}: not in {path}; choose one of {', '.join(names)}")
    return next(s for s in doc["schemes"] if s["name"] == name)


def export_scheme(output: Path, name: str, dest: Path, device: str | None = None) -> Path:
    import torch
    from modelopt.torch.export import export_hf_checkpoint

    from orchestrator.profiles import load_model
    from orchestrator.sweep import build_data
    from orchestrator.trial import default_device, quantize_plan

    scheme = find_scheme(output, name)
    cfg = SweepConfig.model_validate(read_yaml(output / "config.yaml"))
    plan = json.loads((output / scheme["modules"]).read_text())
    device = device or default_device()
    model, _ = load_model(
        cfg.model.source, device, "bfloat16", cfg.model.revision, cfg.model.trust_remote_code
    )
    data = build_data(cfg)
    model = quantize_plan(model, plan["fp8_recipe"], plan["fp8_modules"], data.calib, device)
    dest = dest.resolve()
    if dest.exists() and any(dest.iterdir()):
        raise ConfigError(f"--dest {dest}: folder exists and is not empty")
    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    export_hf_checkpoint(model, dtype=torch.bfloat16, export_dir=tmp)
    (tmp / "scheme.json").write_text(
        json.dumps({**scheme, "fp8_modules": plan["fp8_modules"]}, indent=2)
    )
    if dest.exists():
        dest.rmdir()
    tmp.rename(dest)
    log.info("exported %s (%d FP8 modules) to %s", name, len(plan["fp8_modules"]), dest)
    return dest


def load_exported(path: Path, device: str = "cpu") -> Any:
    """Load an exported folder with transformers and restore its FP8 layers as fake-quant modules."""
    import modelopt.torch.quantization as mtq
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM, Qwen2_5_VLForConditionalGeneration

    from orchestrator.trial import fp8_quant_config, module_quantizers

    scheme = json.loads((path / "scheme.json").read_text())
    config = AutoConfig.from_pretrained(path)
    cls = (
        Qwen2_5_VLForConditionalGeneration
        if config.model_type == "qwen2_5_vl"
        else AutoModelForCausalLM
    )
    model = cls.from_pretrained(path, dtype=torch.bfloat16).to(device).eval()
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(f, "pt") as fh:
            tensors.update({k: fh.get_tensor(k) for k in fh.keys()})
    modules = scheme["fp8_modules"]
    model = mtq.quantize(model, fp8_quant_config(scheme["fp8_recipe"], modules), forward_loop=None)
    named = dict(model.named_modules())
    for name, (wq, iq) in module_quantizers(model, modules).items():
        key = _checkpoint_key(name, tensors)
        w = tensors[f"{key}.weight"].float() * tensors[f"{key}.weight_scale"].float()
        with torch.no_grad():
            named[name].weight.copy_(w.to(named[name].weight.dtype))
        wq.amax = (tensors[f"{key}.weight_scale"].float() * FP8_MAX).to(device)
        iq.amax = (tensors[f"{key}.input_scale"].float() * FP8_MAX).to(device)
    return model


def _checkpoint_key(module_name: str, tensors: dict[str, Any]) -> str:
    """The exporter writes the original checkpoint layout (``model.layers.N``) for Qwen2.5-VL."""
    candidates = [module_name, module_name.replace("model.language_model.", "model.")]
    for c in candidates:
        if f"{c}.weight_scale" in tensors:
            return c
    raise KeyError(f"no FP8 weight for {module_name} in the checkpoint")


def main(argv: Sequence[str] | None = None) -> int:
    from orchestrator.runtime import setup_logging

    p = argparse.ArgumentParser(
        prog="python -m orchestrator.export", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--output", type=Path, required=True, help="a finished sweep's output folder")
    p.add_argument("--scheme", required=True, help="a name from its schemes.yaml")
    p.add_argument("--dest", type=Path, required=True, help="folder for the checkpoint")
    args = p.parse_args(argv)
    setup_logging()
    try:
        find_scheme(args.output.resolve(), args.scheme)
        export_scheme(args.output.resolve(), args.scheme, args.dest)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

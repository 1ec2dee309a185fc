"""The family that used to fail (Qwen2-VL: its checks passed, then every worker died loading it)
swept end to end by ``python -m orchestrator.sweep`` on CPU, then exported; a text family exported
as compressed-tensors by ``python -m orchestrator.export`` (it used to exit 1); and the refusals of
the model checks: an unsupported family, and a model that fits no worker here, each exit 2 before
Ray or MLflow start, with the numbers, and write nothing."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tests.e2e.test_sweep import run_module, sweep
from tests.integration.families import save_tiny
from tests.integration.test_families import DECODER_LINEAR, enabled_quantizers

pytestmark = pytest.mark.e2e

# the smallest sweep that still publishes three schemes: one method, one coverage, 4 budgets
SMALLEST = [
    *("--set", "data.source=synthetic", "--set", "data.seq_len=32", "--set", "data.batch_size=2"),
    *("--set", "data.calib_batches=1", "--set", "data.score_batches=1"),
    *("--set", "scoring.methods=[gradient]", "--set", "scoring.num_calib_steps=1"),
    *("--set", "scoring.num_score_steps=1", "--set", "search.coverage=[1.0]"),
    *("--set", "search.effective_bits=[8,11,12,14]", "--set", "controls.enabled=false"),
    *("--set", "search.strategies=[solve]"),
    *("--set", "search.max_concurrent=1", "--set", "data.report_batches=2"),
]


def test_qwen2_vl_sweeps_and_exports_end_to_end(tmp_path):
    from orchestrator.export.checkpoint import load_exported

    src = save_tiny("qwen2_vl", tmp_path / "qwen2-vl")
    out = tmp_path / "out"
    proc = sweep(out, "--set", f"model.source={src}", *SMALLEST)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "memory plan: model" in proc.stdout
    doc = yaml.safe_load((out / "schemes.yaml").read_text())
    assert len({s["name"] for s in doc["schemes"]}) == 3
    for s in doc["schemes"]:
        modules = json.loads((out / s["modules"]).read_text())["fp8_modules"]
        assert modules and all(DECODER_LINEAR.match(m) for m in modules), modules

    dest = tmp_path / "ckpt"
    proc = run_module(
        "orchestrator.export",
        "--output",
        str(out),
        "--scheme",
        "fp8_autoquant_full",
        "--dest",
        str(dest),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reloaded = load_exported(dest)
    on = enabled_quantizers(reloaded)
    assert on and all(DECODER_LINEAR.match(m) for m in on)
    assert not any("visual" in m or "lm_head" in m for m in on)
    batch = torch.randint(0, 512, (1, 16))
    with torch.no_grad():
        assert torch.isfinite(reloaded(input_ids=batch).logits).all()


def test_a_text_family_exports_compressed_tensors_through_the_command(tmp_path):
    """Issue 23: ``export --format compressed-tensors`` of a Qwen3 model exited 1. The hand-made
    sweep output of the export tests stands in for a sweep (no Ray); ~8 s on the 2-core box. Every
    family x format is in ``tests/integration/test_export.py``."""
    from orchestrator.export.check import check_export
    from tests.integration.test_export import sweep_output

    out, dest = tmp_path / "out", tmp_path / "ct"
    _, fp8 = sweep_output(out, str(save_tiny("qwen3", tmp_path / "qwen3")))
    args = ["--output", str(out), "--scheme", "fp8_test", "--format", "compressed-tensors"]
    proc = run_module("orchestrator.export", *args, "--dest", str(dest))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert check_export(dest) == []
    assert json.loads((dest / "scheme.json").read_text())["fp8_modules"] == fp8
    ignore = json.loads((dest / "config.json").read_text())["quantization_config"]["ignore"]
    assert ignore[0] == "lm_head" and all(e.startswith("model.layers.") for e in ignore[1:])


def _refused(proc, out, *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists()
    assert "Ray" not in proc.stdout and "mlflow" not in proc.stdout.lower()


def test_an_unsupported_family_is_refused_with_the_supported_list(tmp_path):
    doc = {
        "model_type": "llama",
        "vocab_size": 512,
        "max_position_embeddings": 2048,
        "hidden_size": 64,
        "num_hidden_layers": 2,
    }
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    proc = sweep(out, "--set", f"model.source={tmp_path / 'm'}")
    _refused(
        proc,
        out,
        "model_type 'llama' is not supported; supported: qwen2_vl (Qwen2-VL), qwen2_5_vl",
        "qwen3_vl (Qwen3-VL)",
        "qwen3 (Qwen3)",
    )


def test_the_72b_plan_is_printed_and_refused_on_a_cpu_machine(tmp_path):
    """From config.json alone (no weights): 73.4 B parameters in BF16, the dtype a CPU worker runs
    in too; no CPU worker fits this host."""
    from orchestrator.model.loading import resolve_config

    resolve_config("qwen2.5-vl-72b-random").save_pretrained(tmp_path / "72b")
    out = tmp_path / "out"
    proc = sweep(out, "--set", f"model.source={tmp_path / '72b'}", "--set", "data.source=synthetic")
    _refused(proc, out, "model 73.41 B parameters, 136.7 GiB in bfloat16", "0 CPU worker(s)")
    assert "memory plan: model 73.41 B parameters" in proc.stdout


def test_the_72b_preset_with_gpus_required_is_refused_with_its_bf16_numbers(tmp_path):
    out = tmp_path / "out"
    proc = sweep(
        out,
        "--set",
        "model.source=qwen2.5-vl-72b-random",
        "--set",
        "data.source=synthetic",
        "--set",
        "search.gpus=required",
    )
    _refused(
        proc,
        out,
        "search.gpus='required' but this machine has none",
        "model 73.41 B parameters, 136.7 GiB in bfloat16",
    )

"""Both export formats through ModelOpt's real exporter, on the tiny and the reference preset.

A hand-made sweep output folder (config, one plan, one scheme) stands in for a finished sweep, so
no scoring runs. The plan mixes whole blocks, an MLP-only block and a lone ``o_proj``, so the
exclude/ignore lists must name single layers. Each folder must pass the checker; the ModelOpt one
must reload through ``load_exported`` and the compressed-tensors one through plain
``transformers`` with the logits of the fake-quant model that the sweep evaluates. The scheme's
label carries a trial's KL and interval, measured here by the trials' own ``Evaluator`` (vLLM's
fused scales, BF16), so the export's measurement of what it wrote is judged against a real one.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from orchestrator.core.config import SweepConfig
from orchestrator.core.stats import ratio_ci
from orchestrator.export.__main__ import main
from orchestrator.export.check import check_export, read_tensors
from orchestrator.export.checkpoint import export_scheme, load_exported
from orchestrator.model.datasets import build_data
from orchestrator.model.families import FAMILIES
from orchestrator.model.loading import load_model, model_param_count
from orchestrator.model.quantize import quantize_plan
from orchestrator.model.worker import Evaluator
from tests.integration.families import save_tiny

pytestmark = pytest.mark.integration
PRESETS = ["tiny-qwen2.5-vl", "wikitext-qwen2.5-vl"]
RECIPE = "FP8_DEFAULT_CFG"


def sweep_output(root, source):
    """config.yaml, plans/p.json and schemes.yaml as a sweep writes them, for one scheme."""
    cfg = SweepConfig.model_validate(
        {"model": {"source": source}, "search": {"effective_bits": [8], "coverage": [1.0]}}
    )
    model, profile = load_model(source, "cpu", "bfloat16")
    eligible = profile.eligible_modules(model)
    fp8 = [
        e.name
        for e in eligible
        if e.block == 0
        or (e.block == 1 and e.kind in ("gate_up", "down"))
        or (e.block == 2 and e.kind == "o")
    ]
    fp8_params = sum(e.params for e in eligible if e.name in fp8)
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    (root / "plans").mkdir()
    (root / "plans" / "p.json").write_text(json.dumps({"fp8_recipe": RECIPE, "fp8_modules": fp8}))
    scheme = {
        "name": "fp8_test",
        "plan_hash": "p",
        "fp8_recipe": RECIPE,
        "modules": "plans/p.json",
        "model_bytes": 2 * model_param_count(model) - fp8_params,
        "mlflow_run_id": "",
    }
    doc = {"sweep": "export-test", "config_hash": "c0", "parent_run_id": None, "schemes": [scheme]}
    (root / "schemes.yaml").write_text(yaml.safe_dump(doc))
    return cfg, fp8


def label_with_trial(root, cfg, fp8):
    """The scheme's ``metrics`` as a sweep publishes them: the plan measured by the trials'
    Evaluator (the sweep's dtype and fused scales), KL and top-1 with their 95 % intervals."""
    model, profile = load_model(cfg.model.source, "cpu", cfg.model.dtype)
    data = build_data(cfg)
    ev = Evaluator(
        model,
        profile,
        data.calib,
        data.eval,
        RECIPE,
        "cpu",
        fused_scales=cfg.model.fused_scales,
        report_set=data.report,
    )
    m = ev.evaluate(fp8)
    seqs = m["per_sequence"]  # the label's numbers: the report set's, per document
    kl = ratio_ci(seqs["report_kl"], seqs["report_tokens"], cfg.seed)
    top1 = ratio_ci(seqs["report_agree"], seqs["report_tokens"], cfg.seed)
    metrics = {
        "kl_mean": m["report_kl_mean"],
        "kl_ci_low": kl.low,
        "kl_ci_high": kl.high,
        "top1_agreement": m["report_top1_agreement"],
        "top1_ci_low": top1.low,
        "top1_ci_high": top1.high,
    }
    doc = yaml.safe_load((root / "schemes.yaml").read_text())
    doc["schemes"][0]["metrics"] = metrics
    doc["schemes"][0]["metrics_set"] = "report"
    doc["schemes"][0]["numerics"] = ev.numerics
    (root / "schemes.yaml").write_text(yaml.safe_dump(doc))
    return metrics


@pytest.fixture(scope="module", params=PRESETS)
def exported(request, tmp_path_factory):
    """Both formats of one preset, and the fake-quant model and eval batch to compare them with."""
    root = tmp_path_factory.mktemp("export")
    cfg, fp8 = sweep_output(root / "out", request.param)
    label_with_trial(root / "out", cfg, fp8)
    dests = {
        fmt: export_scheme(root / "out", "fp8_test", root / fmt, fmt, device="cpu")
        for fmt in ("modelopt", "compressed-tensors")
    }
    data = build_data(cfg)
    model, _ = load_model(request.param, "cpu", "bfloat16")
    model = quantize_plan(
        model, RECIPE, fp8, data.calib, "cpu", fused_scales=cfg.model.fused_scales
    )
    batch = torch.as_tensor(data.eval.tokens[0])
    with torch.no_grad():
        ref = model(input_ids=batch).logits.float()
    return dests, fp8, batch, ref


# Tolerance against the fake-quant model: mean |logit difference| below 5 % of the reference
# logits' standard deviation, and the same argmax at >= 90 % of positions. The export writes the
# trials' codes and scales, so the ModelOpt folder through ``load_exported`` gives the same logits
# (0.0 on the demo); compressed-tensors stores its scales in BF16 and plain transformers quantizes
# activations in BF16, so it sits a little apart. Measured before the export wrote the trials' codes
# on the 2-core CPU box: mean difference 0.020 (tiny) and 0.020 (reference) of the spread, argmax
# agreement 1.0 and 0.95-0.97; the tiny model quantized vs unquantized differs by 0.029. A misload
# (scales dropped, or an ignore list that matches nothing) gives NaN or logits far outside this.
MAX_MEAN_DIFF, MIN_SAME_ARGMAX = 0.05, 0.9


def agree(a, b):
    """(mean |difference| / spread of the reference, share of positions with the same argmax)."""
    diff = float((a - b).abs().mean() / a.std())
    return diff, float((a.argmax(-1) == b.argmax(-1)).float().mean())


def test_both_formats_pass_the_check_and_record_where_they_came_from(exported):
    dests, fp8, _, _ = exported
    for fmt, dest in dests.items():
        assert check_export(dest) == [], fmt
        assert main(["--check", str(dest)]) == 0
        scheme = json.loads((dest / "scheme.json").read_text())
        assert scheme["fp8_modules"] == fp8
        info = scheme["export"]
        assert (info["format"], info["scheme"], info["plan_hash"], info["sweep"]) == (
            fmt,
            "fp8_test",
            "p",
            "export-test",
        )
        assert info["fused_scales"] == "vllm"  # what the check verifies in the files
        assert {"torch", "transformers", "nvidia-modelopt", "compressed-tensors"} <= set(
            info["library_versions"]
        )
        fp8_weights = [k for k, t in read_tensors(dest).items() if t.dtype == "F8_E4M3"]
        assert len(fp8_weights) == len(fp8)


def test_modelopt_folder_reloads_and_says_how_to_load_it(exported):
    dests, _, batch, ref = exported
    dest = dests["modelopt"]
    readme = (dest / "README.md").read_text()
    assert "--quantization modelopt" in readme and "load_exported" in readme
    assert "does **not** load" in readme
    exclude = json.loads((dest / "hf_quant_config.json").read_text())["quantization"]
    assert not any(
        e.startswith("model.layers.") and e.endswith("*") for e in exclude["exclude_modules"]
    )
    with torch.no_grad():
        got = load_exported(dest)(input_ids=batch).logits.float()
    assert torch.equal(ref, got), agree(ref, got)  # the trials' codes and scales, exactly


def test_compressed_tensors_folder_loads_in_plain_transformers(exported):
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    dests, fp8, batch, ref = exported
    dest = dests["compressed-tensors"]
    model = AutoModelForImageTextToText.from_pretrained(dest, dtype=torch.bfloat16)
    named = dict(model.named_modules())
    tensors = load_file(dest / "model.safetensors")
    for m in fp8:  # the scales were read under their own names, not dropped or renamed
        key = m.replace("model.language_model.", "model.")
        for scale in ("weight_scale", "input_scale"):
            got = getattr(named[m], scale).float().flatten()
            assert torch.equal(got, tensors[f"{key}.{scale}"].float().flatten()), (m, scale)
    with torch.no_grad():
        got = model(input_ids=batch).logits.float()
    mean_diff, same_argmax = agree(ref, got)
    assert mean_diff < MAX_MEAN_DIFF and same_argmax >= MIN_SAME_ARGMAX, (mean_diff, same_argmax)


# Every family x both formats (issue 23): a tiny checkpoint of each, the plan above, and
# `python -m orchestrator.export`'s main in process (no sweep). Measured on the 2-core CPU box:
# 15 s for the five alone (the first pays the imports), about 9 s after the tests above.
FAMILY_TYPES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen2", "qwen3"]


def tiny_source(model_type, folder):
    """A tiny checkpoint of the family; Qwen2.5-VL's is the shipped preset."""
    if model_type == "qwen2_5_vl":
        return "tiny-qwen2.5-vl"
    return str(save_tiny(model_type, folder))


@pytest.fixture(scope="module", params=FAMILY_TYPES)
def family_exports(request, tmp_path_factory):
    """(model_type, planned modules, {format: folder}) for one family."""
    root = tmp_path_factory.mktemp(request.param)
    _, fp8 = sweep_output(root / "out", tiny_source(request.param, root / "model"))
    dests = {}
    for fmt in ("modelopt", "compressed-tensors"):
        dests[fmt] = root / fmt
        args = ["--output", str(root / "out"), "--scheme", "fp8_test", "--format", fmt]
        assert main([*args, "--dest", str(dests[fmt])]) == 0, fmt
    return request.param, fp8, dests


def test_every_family_exports_both_formats_with_its_own_names(family_exports):
    """Each folder passes the checker; every list entry is in the family's spelling, so a text
    family's lists name ``model.layers.N`` and no vision tower, and a VL family's name it."""
    model_type, _, dests = family_exports
    family = FAMILIES[model_type]
    for fmt, dest in dests.items():
        assert check_export(dest) == [], fmt
    exclude = json.loads((dests["modelopt"] / "hf_quant_config.json").read_text())
    ignore = json.loads((dests["compressed-tensors"] / "config.json").read_text())
    entries = {
        "modelopt": exclude["quantization"]["exclude_modules"],
        "compressed-tensors": ignore["quantization_config"]["ignore"],
    }
    for fmt, listed in entries.items():
        decoder = [e for e in listed if ".layers." in e]
        assert decoder, fmt
        if family.vision is None:
            assert all(e.startswith("model.layers.") for e in decoder), (fmt, decoder)
            assert not any("visual" in e or "language_model" in e for e in listed), (fmt, listed)
        else:
            assert any("visual" in e for e in listed), (fmt, listed)
    transformers_names = [e for e in entries["compressed-tensors"] if not e.startswith("re:")]
    assert all(e == "lm_head" or e.startswith(family.language_model) for e in transformers_names)


def test_every_family_loads_exactly_the_planned_fp8_modules(family_exports):
    """Plain transformers (the Auto class a user would pick, with compressed-tensors installed)
    builds exactly the planned Linear layers as compressed-tensors FP8 modules, the rest BF16,
    and names every tensor as the family table says it does; the ModelOpt folder restores exactly
    those quantizers through ``load_exported``."""
    from torch import nn
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from tests.integration.test_families import enabled_quantizers

    model_type, fp8, dests = family_exports
    family = FAMILIES[model_type]
    auto = AutoModelForCausalLM if family.vision is None else AutoModelForImageTextToText
    model = auto.from_pretrained(dests["compressed-tensors"], dtype=torch.bfloat16)
    assert type(model).__name__ == family.loader
    named = {family.transformers_name(k) for k in read_tensors(dests["compressed-tensors"])}
    assert named <= set(model.state_dict()) <= named | {"lm_head.weight"}  # lm_head may be tied
    linear = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    quantized = {n for n, m in linear.items() if getattr(m, "quantization_scheme", None)}
    stored = {n for n, m in linear.items() if m.weight.dtype == torch.float8_e4m3fn}
    assert quantized == stored == set(fp8), (sorted(quantized ^ set(fp8)), sorted(stored))
    assert all(linear[n].weight.dtype == torch.bfloat16 for n in set(linear) - set(fp8))
    assert all(hasattr(linear[n], "weight_scale") for n in fp8)
    batch = torch.randint(0, 512, (1, 16))
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=batch).logits).all()

    assert enabled_quantizers(load_exported(dests["modelopt"])) == set(fp8)


# The artifact measured (issue 26, item 2). Measured on the 2-core CPU box: this file takes 79 s
# against 61 s before (the trial behind the label, the measurement in every export, the tests
# below), run back to back.
def test_each_export_measures_what_it_wrote_within_the_trials_interval(exported):
    """scheme.json's ``artifact``: the folder's codes and scales read back (``load_exported``, the
    trials' arithmetic), measured against the BF16 base on the report set, inside the interval of
    the trial that the label reports; a compressed-tensors folder also as plain transformers
    builds it (recorded, with its own verdict)."""
    dests, *_ = exported
    for fmt, dest in dests.items():
        scheme = json.loads((dest / "scheme.json").read_text())
        label, artifact = scheme["metrics"], scheme["artifact"]
        assert "load_exported" in artifact["loader"], fmt
        assert artifact["set"] == "report"
        low, high = label["kl_ci_low"], label["kl_ci_high"]
        assert low <= artifact["kl_mean"] <= high, (fmt, artifact["kl_mean"], low, high)
        assert artifact["within_trial_ci"] is True
        assert artifact["kl_ci"][0] <= artifact["kl_mean"] <= artifact["kl_ci"][1]
        assert 0.0 <= artifact["top1_agreement"] <= 1.0
        assert artifact["eval_tokens"] > 0
        if fmt == "compressed-tensors":
            other = artifact["transformers"]
            assert "transformers" in other["loader"] and other["set"] == "report"
            # on the test presets plain transformers lands inside the interval too (on the demo,
            # full FP8, it reads +5 %: README)
            assert other["within_trial_ci"] is True and other["eval_tokens"] > 0
        else:
            assert "transformers" not in artifact


def vllm_requantized_codes(weights):
    """FP8 codes of a fused layer's shards as vLLM requantizes them, from the BF16 weights and
    the shards' max-calibrated ranges (amax = the largest magnitude): each shard to FP8 with its
    own scale (amax / 448, in float32), dequantized to FP16, to FP8 again with the largest scale
    (times its reciprocal, clamped to +-448). Written from vLLM's rule, not from the export."""
    scales = [w.float().abs().max() / 448.0 for w in weights]
    top = torch.stack(scales).max()
    codes = []
    for w, s in zip(weights, scales, strict=True):
        own = (w.float() / s).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
        dequantized = own.to(torch.float16) * s
        codes.append((dequantized.float() * (1.0 / top)).clamp(-448.0, 448.0))
    return [c.to(torch.float8_e4m3fn) for c in codes], top


def test_fused_groups_share_one_scale_and_hold_vllms_requantized_codes(exported):
    """Every fused group (q/k/v, gate/up) of both formats holds one weight scale and one input
    scale, and each shard's codes are vLLM's requantization to the group's scale."""
    from safetensors.torch import load_file

    dests, fp8, _, _ = exported
    source = json.loads((dests["modelopt"] / "scheme.json").read_text())["export"]
    cfg = SweepConfig.model_validate(yaml.safe_load(open(f"{source['sweep_output']}/config.yaml")))
    base, _ = load_model(cfg.model.source, "cpu", "bfloat16")
    groups = {}
    for m in fp8:
        head, _, proj = m.rpartition(".")
        kind = {
            "q_proj": "qkv",
            "k_proj": "qkv",
            "v_proj": "qkv",
            "gate_proj": "gu",
            "up_proj": "gu",
        }
        if proj in kind:
            groups.setdefault((head, kind[proj]), []).append(m)
    assert len(groups) == 3  # block 0's q/k/v and gate/up, block 1's gate/up
    requantized = 0
    for fmt, dest in dests.items():
        tensors = load_file(dest / "model.safetensors")
        for members in groups.values():
            keys = [m.replace("model.language_model.", "model.") for m in sorted(members)]
            for scale in ("weight_scale", "input_scale"):
                values = {tensors[f"{k}.{scale}"].float().item() for k in keys}
                assert len(values) == 1, (fmt, keys, scale, values)
            weights = [base.get_submodule(m).weight for m in sorted(members)]
            want, top = vllm_requantized_codes(weights)
            got_scale = tensors[f"{keys[0]}.weight_scale"].float().reshape(())
            stored = top if fmt == "modelopt" else top.to(torch.bfloat16).float()  # CT: BF16
            assert torch.equal(got_scale, stored), (fmt, keys)
            for k, w, codes in zip(keys, weights, want, strict=True):
                assert torch.equal(
                    tensors[f"{k}.weight"].view(torch.uint8), codes.view(torch.uint8)
                ), (fmt, k)
                once = (w.float() / top).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
                requantized += not torch.equal(once.view(torch.uint8), codes.view(torch.uint8))
    assert requantized > 0  # the second rounding changed some shard's codes: it was applied


def tiny_only(request):
    if request.node.callspec.params["exported"] != PRESETS[0]:
        pytest.skip("one preset's export shows it; the tiny one is cheapest")


def failures(stderr):
    """The export's own failure lines (transformers' progress bars share stderr)."""
    return [line for line in stderr.splitlines() if line.startswith("check failed: ")]


def test_a_tampered_artifact_fails_the_measurement_and_the_check(
    exported, tmp_path, capsys, request
):
    """One shard's weight scale doubled in a copy of the compressed-tensors folder: the static
    check finds the group's scales unequal, and ``--measure`` (the measurement every export runs)
    exits 1 with one line giving the artifact's KL, the label's and the interval."""
    import shutil

    from safetensors.torch import load_file, save_file

    tiny_only(request)
    dests, *_ = exported
    copy = tmp_path / "tampered"
    shutil.copytree(dests["compressed-tensors"], copy)
    tensors = load_file(copy / "model.safetensors")
    key = "model.layers.0.mlp.gate_proj.weight_scale"
    tensors[key] = tensors[key] * 2
    save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
    assert any("hold different weight_scales" in p for p in check_export(copy))
    capsys.readouterr()
    assert main(["--measure", str(copy)]) == 1
    lines = failures(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert "outside the trial's 95% interval" in lines[0] and "vs label KL" in lines[0], lines
    assert main(["--measure", str(dests["compressed-tensors"])]) == 0


def test_an_export_whose_label_disagrees_exits_1_and_publishes_nothing(
    exported, tmp_path, capsys, request
):
    """The fixture's sweep with a label whose KL and interval are ten times the trial's (a sweep
    that measured another model): the export writes and checks the folder, measures it, exits 1
    with the line and leaves no folder behind."""
    import shutil

    tiny_only(request)
    dests, *_ = exported
    source = json.loads((dests["modelopt"] / "scheme.json").read_text())["export"]["sweep_output"]
    out = tmp_path / "out"
    shutil.copytree(source, out)
    doc = yaml.safe_load((out / "schemes.yaml").read_text())
    label = doc["schemes"][0]["metrics"]
    for k in ("kl_mean", "kl_ci_low", "kl_ci_high"):
        label[k] *= 10.0
    (out / "schemes.yaml").write_text(yaml.safe_dump(doc))
    dest = tmp_path / "ckpt"
    args = ["--output", str(out), "--scheme", "fp8_test", "--dest", str(dest)]
    capsys.readouterr()
    assert main([*args, "--format", "compressed-tensors"]) == 1
    err = failures(capsys.readouterr().err)
    assert len(err) == 1 and "outside the trial's 95% interval" in err[0], err
    assert f"vs label KL {label['kl_mean']:.4g}" in err[0], err
    assert not dest.exists() and not list(tmp_path.glob(".ckpt*"))

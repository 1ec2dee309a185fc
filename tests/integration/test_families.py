"""Every supported family end to end on CPU, through the library: a tiny random checkpoint of each
(saved with ``save_pretrained``) is loaded by the table's class, scored, measured at a small grid
on the resident model, selected and exported. ``tests/e2e/test_families.py`` runs Qwen2-VL the whole
way through ``python -m orchestrator.sweep``.

What each asserts: every Linear layer of the model is either eligible or never quantized by the
table (nothing falls between); with every eligible quantizer on, no vision-tower or ``lm_head``
quantizer is enabled and every enabled one sits on a decoder Linear layer; the schemes' modules are
decoder Linear layers only; the exported checkpoint holds FP8 weights for exactly those modules.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml
from torch import nn

from orchestrator.core.config import SweepConfig, load_catalog
from orchestrator.core.planning import make_plan
from orchestrator.core.records import TrialResult
from orchestrator.export.checkpoint import export_scheme
from orchestrator.model.loading import load_model
from orchestrator.model.scoring import ScoringSetup, score
from orchestrator.model.worker import Evaluator
from orchestrator.outputs.publish import SweepFacts, finalize
from tests.integration.families import save_tiny

pytestmark = pytest.mark.integration
RECIPE = "FP8_DEFAULT_CFG"
DECODER_LINEAR = re.compile(r"^model\.(language_model\.)?layers\.\d+\.(self_attn|mlp)\.\w+_proj$")
BITS = (8, 10, 11, 12, 13, 14, 15)


def enabled_quantizers(model: nn.Module) -> set[str]:
    return {
        name.rsplit(".", 1)[0]
        for name, mod in model.named_modules()
        if name.endswith(("weight_quantizer", "input_quantizer")) and mod.is_enabled
    }


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen3_vl", "qwen2", "qwen3"])
def test_family_scores_measures_selects_and_exports(model_type, tmp_path, tiny_data):
    if model_type == "qwen2_5_vl":
        from orchestrator.model.loading import load_model as build

        src = tmp_path / "model"
        build("tiny-qwen2.5-vl")[0].save_pretrained(src)
    else:
        src = save_tiny(model_type, tmp_path / "model")
    model, profile = load_model(str(src))
    linear = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    eligible = {m.name for m in profile.eligible_modules(model)}
    assert eligible and all(DECODER_LINEAR.match(n) for n in eligible)
    assert linear == eligible | {n for n in linear if profile.family.is_never_fp8(n)}
    assert "lm_head" in linear - eligible

    setup = ScoringSetup(
        str(src), None, profile.name, tiny_data.score.hash, "gradient", RECIPE, 1, 1
    )
    table = score(model, profile, tiny_data.score, setup, tmp_path / "cache")
    assert {m for g in table.groups for m in g.modules} == eligible

    fresh, _ = load_model(str(src))
    ev = Evaluator(fresh, profile, tiny_data.calib, tiny_data.eval, RECIPE, "cpu")
    ev._set_enabled(ev.eligible)
    on = enabled_quantizers(ev.model)
    ev._set_enabled(())
    assert on == eligible  # every eligible layer, and nothing of the vision tower or lm_head

    results = []
    for bits in BITS:
        plan = make_plan(table, bits, 1.0)
        m = ev.evaluate(plan.fp8_modules)
        results.append(
            TrialResult(
                plan.plan_hash,
                "gradient",
                RECIPE,
                bits,
                1.0,
                plan.achieved_bits,
                plan.fp8_fraction,
                "FINISHED",
                m,
            )
        )
    out = tmp_path / "out"
    cfg = SweepConfig.model_validate(
        {
            "model": {"source": str(src)},
            "search": {"effective_bits": list(BITS), "coverage": [1.0]},
            "controls": {"enabled": False},
        }
    )
    facts = SweepFacts.of(cfg, tiny_data.hashes())
    tables = {"gradient|FP8_DEFAULT_CFG": table}
    done = finalize(out, results, tables, load_catalog(), None, {}, facts)
    assert done.error is None, done.error
    doc = yaml.safe_load((out / "schemes.yaml").read_text())
    assert len(doc["schemes"]) == 3
    for s in doc["schemes"]:
        modules = json.loads((out / s["modules"]).read_text())["fp8_modules"]
        assert modules and set(modules) <= eligible

    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    dest = export_scheme(out, "fp8_autoquant_top50", tmp_path / "ckpt", device="cpu")
    quant = json.loads((dest / "hf_quant_config.json").read_text())["quantization"]
    assert "lm_head" in quant["exclude_modules"]
    if model_type.endswith("_vl"):
        assert any("visual" in m for m in quant["exclude_modules"])
    planned = json.loads((dest / "scheme.json").read_text())["fp8_modules"]
    assert set(planned) <= eligible

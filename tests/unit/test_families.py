"""The family table is the one source: the loader class, the input check's list and the README
agree with it, and a family the installed transformers lacks is refused with the reason."""

from __future__ import annotations

import pytest

from orchestrator.model.families import (
    FAMILIES,
    TRANSFORMERS_PIN,
    UnsupportedModel,
    family_for,
    profile_for,
    transformers_lacks,
)
from tests.conftest import ROOT

pytestmark = pytest.mark.unit


def test_an_unknown_type_is_refused_with_the_supported_list():
    with pytest.raises(UnsupportedModel) as e:
        family_for("llama")
    msg = str(e.value)
    assert msg.startswith("model_type 'llama' is not supported; supported: ")
    for t, f in FAMILIES.items():
        assert f"{t} ({f.label})" in msg


def test_a_family_missing_from_the_installed_transformers_is_refused(tmp_path):
    (tmp_path / "models" / "qwen2").mkdir(parents=True)
    assert transformers_lacks("qwen2", tmp_path) == ""
    why = transformers_lacks("qwen3_vl", tmp_path)
    pin = f"install the project's pin: pip install 'transformers{TRANSFORMERS_PIN}'"
    assert why.endswith(f"has no qwen3_vl models; {pin}")


def test_the_advice_names_the_pin_of_pyproject():
    assert f'"transformers{TRANSFORMERS_PIN}"' in (ROOT / "pyproject.toml").read_text()


def test_every_family_loads_with_the_pinned_transformers():
    import transformers

    for t, f in FAMILIES.items():
        assert transformers_lacks(t) == ""
        assert getattr(transformers, f.loader).config_class.model_type == t
        assert profile_for(t).family == f


def test_the_readme_lists_every_family():
    readme = (ROOT / "README.md").read_text()
    for f in FAMILIES.values():
        assert f"`{f.model_type}`" in readme and f.label in readme, f.label


# model_type -> its never-FP8 globs, as ModelOpt reads them (the order is the scoring call's)
NEVER_FP8 = {
    "qwen2_vl": ("*visual*", "*lm_head*", "*embed_tokens*"),
    "qwen2_5_vl": ("*visual*", "*lm_head*", "*embed_tokens*"),
    "qwen3_vl": ("*visual*", "*lm_head*", "*embed_tokens*"),
    "qwen2": ("*lm_head*", "*embed_tokens*"),
    "qwen3": ("*lm_head*", "*embed_tokens*"),
}


@pytest.mark.parametrize("model_type", sorted(NEVER_FP8))
def test_each_family_never_quantizes_what_the_table_says(model_type):
    """The vision tower where the table names one, lm_head and the embeddings, in any spelling."""
    f = FAMILIES[model_type]
    assert f.never_quantize == NEVER_FP8[model_type]
    names = ("lm_head", "model.embed_tokens", "model.language_model.embed_tokens")
    assert all(f.is_never_fp8(n) for n in names)
    tower = ("visual.blocks.0.attn.qkv", "model.visual.merger.mlp.0", "model.visual.blocks")
    assert all(f.is_never_fp8(n) == (f.vision is not None) for n in tower)
    assert all(f.in_vision_tower(n) == (f.vision is not None) for n in tower)
    for decoder in ("model.layers.0.mlp.up_proj", "model.language_model.layers.3.self_attn.q_proj"):
        assert not f.is_never_fp8(decoder) and not f.in_vision_tower(decoder)
    assert profile_for(model_type).classify("model.layers.0.mlp.up_proj") == (
        0,
        "gate_up",
        "model.layers.0.gate_up",
    )


def test_each_family_maps_names_as_its_loaders_do():
    """transformers 5 renames an old-layout VL checkpoint and leaves a text one alone; vLLM's
    mapper is the family's class's: Qwen3-VL has no rule for a bare ``model.``, text has none."""
    q, v = "model.layers.3.mlp.up_proj", "visual.blocks.0.attn.qkv"
    lm_q, lm_v = "model.language_model.layers.3.mlp.up_proj", "model.visual.blocks.0.attn.qkv"
    transformers = {  # model_type: checkpoint name -> transformers 5's
        "qwen2_vl": {q: lm_q, v: lm_v, lm_q: lm_q, lm_v: lm_v, "lm_head": "lm_head"},
        "qwen2_5_vl": {q: lm_q, v: lm_v, lm_q: lm_q, lm_v: lm_v, "lm_head": "lm_head"},
        "qwen3_vl": {lm_q: lm_q, lm_v: lm_v, "lm_head": "lm_head"},
        "qwen2": {q: q, "lm_head": "lm_head"},
        "qwen3": {q: q, "lm_head": "lm_head"},
    }
    vl_q, vl_head = "language_model.model.layers.3.mlp.up_proj", "language_model.lm_head.weight"
    vllm = {  # model_type: checkpoint name or list entry -> vLLM's
        "qwen2_vl": {q: vl_q, lm_q: vl_q, v: v, lm_v: v, "lm_head.weight": vl_head},
        "qwen2_5_vl": {q: vl_q, lm_q: vl_q, v: v, lm_v: v, "lm_head.weight": vl_head},
        "qwen3_vl": {q: q, lm_q: vl_q, lm_v: v, "lm_head.weight": vl_head},
        "qwen2": {q: q, lm_q: lm_q, "lm_head.weight": "lm_head.weight"},
        "qwen3": {q: q, lm_q: lm_q, "lm_head.weight": "lm_head.weight"},
    }
    assert set(transformers) == set(vllm) == set(FAMILIES)
    for model_type, f in FAMILIES.items():
        assert {k: f.transformers_name(k) for k in transformers[model_type]} == transformers[
            model_type
        ]
        assert {k: f.vllm_name(k) for k in vllm[model_type]} == vllm[model_type]

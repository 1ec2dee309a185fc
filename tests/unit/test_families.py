"""The family table is the one source: the loader class, the input check's list and the README
agree with it, and a family the installed transformers lacks is refused with the reason."""

from __future__ import annotations

import pytest

from orchestrator.model.families import (
    FAMILIES,
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
    assert "has no qwen3_vl models; upgrade it" in why


def test_every_family_loads_with_the_pinned_transformers():
    import transformers

    for t, f in FAMILIES.items():
        assert transformers_lacks(t) == ""
        assert getattr(transformers, f.loader).config_class.model_type == t
        assert profile_for(t).never_quantize == f.never_quantize
        assert "*lm_head*" in f.never_quantize and "*embed_tokens*" in f.never_quantize
        assert ("*visual*" in f.never_quantize) == (f.vision is not None)


def test_the_readme_lists_every_family():
    readme = (ROOT / "README.md").read_text()
    for f in FAMILIES.values():
        assert f"`{f.model_type}`" in readme and f.label in readme, f.label

"""The driver reads a local model's config.json as JSON: no torch, transformers or MLflow before
Ray starts (each costs seconds on a GPU machine, docs/benchmarks.md), and the same facts as
transformers' own config."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

TEXT = {"vocab_size": 512, "max_position_embeddings": 2048, "hidden_size": 64}


@pytest.mark.parametrize(
    "doc",
    [
        {"model_type": "qwen2_5_vl", "text_config": TEXT, "vision_config": {"depth": 2}},
        {"model_type": "qwen2_5_vl", **TEXT, "vision_config": {"depth": 2}},  # older layout
        {"model_type": "qwen2", **TEXT},
    ],
)
def test_facts_come_from_either_config_layout(tmp_path, doc):
    from orchestrator.model.loading import model_facts

    (tmp_path / "config.json").write_text(json.dumps(doc))
    facts = model_facts(str(tmp_path))
    assert (facts.model_type, facts.vocab_size, facts.max_position_embeddings) == (
        doc["model_type"],
        512,
        2048,
    )
    assert facts.has_vision == ("vision_config" in doc)


def test_a_saved_model_gives_the_same_facts_as_transformers(tmp_path):
    from orchestrator.model.loading import model_facts, resolve_config, text_config

    resolve_config("tiny-qwen2.5-vl").save_pretrained(tmp_path)
    facts = model_facts(str(tmp_path))
    hf = resolve_config(str(tmp_path))
    assert facts.model_type == hf.model_type == "qwen2_5_vl"
    assert facts.vocab_size == text_config(hf).vocab_size
    assert facts.max_position_embeddings == text_config(hf).max_position_embeddings
    assert facts.has_vision


def test_input_checks_on_a_local_model_import_no_heavy_framework(tmp_path):
    """A complete config.json (as save_pretrained writes it) also gives the memory plan's size.
    Synthetic data: text would need the model's tokenizer, which the checks load (transformers)."""
    from orchestrator.model.loading import resolve_config

    resolve_config("tiny-qwen2.5-vl").save_pretrained(tmp_path)
    code = (
        "import sys; from orchestrator import sweep; "
        f"a = sweep.parse_args(['--output', {str(tmp_path / 'out')!r}, "
        f"'--set', 'model.source={tmp_path}', '--set', 'data.source=synthetic']); "
        "inp, data = sweep.check_inputs(a); "
        "print(inp.profile, [m for m in ('torch', 'transformers', 'mlflow', 'ray') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "qwen2.5-vl []"


def test_relative_sqlite_uris_become_absolute(tmp_path, monkeypatch):
    from orchestrator.tracking.uri import absolute_uri

    monkeypatch.chdir(tmp_path)
    assert absolute_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert absolute_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert absolute_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_hidden_gpus_are_counted_as_none(monkeypatch):
    from orchestrator.runtime.host import local_gpu_count

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert local_gpu_count() == (0, "CUDA_VISIBLE_DEVICES hides every GPU")

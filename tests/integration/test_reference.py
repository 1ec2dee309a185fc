"""The shipped reference preset: loads by name with the network cut off, scores what it recorded.

``reference.json`` holds the test-split perplexity that ``scripts/train_reference.py`` measured on
CPU in float32 from the bf16 weights over the first 64 windows of 256 tokens; recomputing it here
checks the weights, the tokenizer, the config and this transformers version together.
"""

import json
import math
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from orchestrator.core.config import SweepConfig
from orchestrator.model.data import hf_tokenizer, read_text
from orchestrator.model.loading import load_model, resolve_config, resolve_source
from orchestrator.model.presets import SHIPPED_PRESETS
from tests.conftest import ROOT

pytestmark = pytest.mark.integration
NAME = "wikitext-qwen2.5-vl"
TEST_TXT = ROOT / "data" / "wikitext-2" / "test.txt"


@pytest.fixture(scope="module")
def offline():
    """Any connection attempt fails the test: the preset must need nothing but the clone."""

    def refuse(*_args, **_kwargs):
        raise OSError("network is off in test_reference")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        yield


@pytest.fixture(scope="module")
def reference():
    return json.loads((SHIPPED_PRESETS[NAME] / "reference.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tokenize(offline):
    return hf_tokenizer(resolve_source(NAME), None, False)


@pytest.fixture(scope="module")
def test_ids(tokenize):
    return torch.tensor(tokenize(read_text(TEST_TXT)))


def test_preset_folder_is_small_and_complete():
    folder = SHIPPED_PRESETS[NAME]
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "reference.json"} <= names
    assert "README.md" in names  # the CC BY-SA 3.0 note travels with the weights
    assert (folder / "model.safetensors").stat().st_size < 20 * 10**6  # bf16, 12 blocks
    assert sum(p.stat().st_size for p in folder.iterdir()) < 20 * 2**20


def test_reference_preset_is_deep_enough_for_block_choices(reference):
    """Coverage 0.25 and "first and last block BF16" must pick a few blocks, not a quarter/half."""
    cfg = resolve_config(NAME).text_config
    assert cfg.num_hidden_layers == reference["architecture"]["layers"] >= 12


def test_reference_preset_reproduces_its_recorded_perplexity(offline, reference, test_ids):
    model, profile = load_model(NAME)  # CPU, float32 from the bf16 weights
    assert resolve_config(NAME).model_type == "qwen2_5_vl"
    assert len(profile.eligible_modules(model)) == 7 * reference["architecture"]["layers"]
    seq, n = reference["eval_seq_len"], reference["subset_windows"]
    assert len(test_ids) == reference["test_tokens"]
    windows = test_ids[: n * seq].view(n, seq)
    nll = 0.0
    with torch.no_grad():
        for chunk in windows.split(16):
            logits = model(input_ids=chunk).logits.float()
            nll += F.cross_entropy(
                logits[:, :-1].flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum"
            ).item()
    ppl = math.exp(nll / (n * (seq - 1)))
    assert ppl == pytest.approx(reference["test_subset_perplexity"], rel=0.01)


def test_tokenizer_round_trips_a_test_line(offline):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_source(NAME))
    line = next(x for x in read_text(TEST_TXT).splitlines() if "<unk>" in x and " @-@ " in x)
    ids = tok(line, add_special_tokens=False)["input_ids"]
    assert len(ids) < len(line.encode("utf-8")) / 2  # merges learnt, not bytes
    assert tok.decode(ids) == line


def test_build_data_reads_text_with_the_preset_tokenizer(offline, tokenize, test_ids):
    from orchestrator.model.datasets import build_data

    cfg = SweepConfig.model_validate(
        {
            "model": {"source": NAME},
            "data": {"source": str(TEST_TXT), "seq_len": 128, "batch_size": 2},
            "search": {"effective_bits": [8], "coverage": [1.0]},
        }
    )
    data = build_data(cfg)
    # the text is read as documents (WikiText sections), each tokenized with the preset's
    # tokenizer; the sets that choose take windows of the other documents read one after another
    from orchestrator.model.data import split_documents

    report = set(data.report.docs.ravel().tolist())
    docs = split_documents([read_text(TEST_TXT)])
    stream = np.concatenate([tokenize(d) for i, d in enumerate(docs) if i not in report])
    windows = {tuple(w) for w in stream[: len(stream) // 128 * 128].reshape(-1, 128).tolist()}
    assert all(tuple(r) in windows for r in data.calib.tokens.reshape(-1, 128).tolist())
    assert int(data.eval.tokens.max()) < resolve_config(NAME).text_config.vocab_size

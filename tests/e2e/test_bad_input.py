"""Bad input exits 2 with one line naming the field, the value and what is allowed, before any
Ray, MLflow or model work, and writes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import ROOT, free_port
from tests.e2e.test_sweep import sweep

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    "args,needle",
    [
        (
            ["--set", "search.effective_bits=[17]"],
            "search.effective_bits=[17]: value 17.0 is outside [8, 16]",
        ),
        (["--set", "search.coverage=[0]"], "value 0.0 is outside (0, 1]"),
        (["--set", "search.coverage=[]"], "search.coverage=[]: List should have at least 1 item"),
        (["--set", "bogus=1"], "--set bogus=1: unknown key 'bogus'"),
        (["--set", "data.batch_size=two"], "--set data.batch_size=two: Input should be"),
        (
            ["--set", "model.source=/no/such/model"],
            "model.source='/no/such/model': folder /no/such/model does not exist",
        ),
        (["--set", "model.source=nobody-xyz/not-a-model"], "model.source='nobody-xyz/not-a-model'"),
        (["--set", "data.source=/no/such.txt"], "data.source='/no/such.txt': file not found"),
        (["--set", "search.gpus=required"], "search.gpus='required' but this machine has none"),
        (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
        (
            ["--set", "search.effective_bits=[8,12,15]"],
            "cannot reach fp8_autoquant_top25 (25% +- 5% FP8); add effective_bits 14",
        ),
        (["--set", "search.strategies=[ends_bf16:1]"], "lacks 'solve'"),
        (["--set", "search.strategies=[solve,oracle]"], "'oracle' is not one of solve"),
        (["--set", "selection.objective=ppl"], "--set selection.objective=ppl: Input should be"),
        (
            ["--set", "selection.objective=image_kl_mean"],
            "selection.objective='image_kl_mean': the evaluation set has no image+text rows",
        ),
        (
            ["--set", "data.eval_image_fraction=0.5"],
            "data.eval_image_fraction=0.5: there are no image+text records to mix in",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, args, needle):
    out = tmp_path / "out"
    proc = sweep(out, *args)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert not out.exists()
    assert "Ray" not in proc.stdout and "mlflow" not in proc.stdout.lower()


def test_a_presets_typo_is_refused_at_once_listing_the_presets(tmp_path):
    """Issue 27: ``wikitext-qwen2.5vl`` cannot be a hub id (no owner/), so the hub is never
    asked: online or not, with HF_HUB_OFFLINE unset, the answer comes in seconds (it took the hub
    client's retries, 43 s) and names the preset meant. The hub's address is a closed local port,
    so a lookup, were one made, would fail and retry (about 25 s), never leave the machine."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "out"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", "--output", str(out)]
        + ["--set", "model.source=wikitext-qwen2.5vl"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - start
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [
        "error: model.source='wikitext-qwen2.5vl': not a preset, a folder or a hub id "
        "(owner/name); did you mean 'wikitext-qwen2.5-vl'? presets: wikitext-qwen2.5-vl, "
        "tiny-qwen2.5-vl, qwen2.5-vl-3b-random, qwen2.5-vl-7b-random, qwen2.5-vl-32b-random, "
        "qwen2.5-vl-72b-random"
    ]
    assert took < 5, took
    assert not out.exists()


def test_a_folder_without_a_model_says_so(tmp_path):
    proc = sweep(tmp_path / "out", "--set", f"model.source={tmp_path}")
    assert proc.returncode == 2
    assert f"folder {tmp_path} has no config.json (not a saved model)" in proc.stderr


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_data_file(tmp_path, content):
    f = tmp_path / "empty.txt"
    f.write_text(content)
    proc = sweep(tmp_path / "out", "--set", f"data.source={f}")
    assert proc.returncode == 2 and "file holds no text" in proc.stderr


def test_output_holding_a_different_sweep_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep.json").write_text('{"name": "other", "config_hash": "abc"}')
    proc = sweep(out)
    assert proc.returncode == 2 and "holds sweep 'other'" in proc.stderr


def test_catalog_with_duplicate_names(tmp_path):
    from orchestrator.core.config import DEFAULT_CATALOG

    doc = yaml.safe_load(DEFAULT_CATALOG.read_text())
    doc["schemes"][2]["name"] = "fp8_autoquant_top25"
    cat = tmp_path / "cat.yaml"
    cat.write_text(yaml.safe_dump(doc))
    proc = sweep(tmp_path / "out", "--set", f"selection.catalog={cat}")
    assert proc.returncode == 2 and "duplicate scheme names" in proc.stderr


def test_a_config_with_an_alias_bomb_is_refused_before_it_expands(tmp_path):
    """Nine anchors of nine aliases each (9**9 nodes expanded) once took minutes and gigabytes."""
    rows = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    rows += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    proc = sweep(out, "--config", str(bomb))
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert lines == [
        f"error: {bomb}: line 1: anchor '&l0' refused; a config takes no anchors or "
        "aliases, write the value out"
    ], proc.stderr
    assert not out.exists()
    assert "Ray" not in proc.stdout and "mlflow" not in proc.stdout.lower()


def test_unreadable_data_file(tmp_path):
    f = tmp_path / "broken.jsonl"
    f.write_bytes(b'{"text": "ok"}\n{not json\n')
    proc = sweep(tmp_path / "out", "--set", f"data.source={f}")
    assert proc.returncode == 2 and "unreadable (JSONDecodeError" in proc.stderr
    assert not (tmp_path / "out").exists()


IMAGES = ROOT / "data" / "images"


def _records(tmp_path, rows):
    f = tmp_path / "records.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def _text_only_model(tmp_path):
    folder = tmp_path / "qwen2-text"
    folder.mkdir()
    doc = {"model_type": "qwen2", "vocab_size": 4096, "max_position_embeddings": 512}
    (folder / "config.json").write_text(json.dumps(doc))
    return folder


OK = {"image": str(IMAGES / "chelsea.jpg"), "prompt": "What animal is shown?", "answer": "A cat."}


@pytest.mark.parametrize(
    "case,needle",
    [
        ("missing", "record 2: image '{tmp}/nope.jpg' not found"),
        ("unreadable", "record 2: image is not a readable picture"),
        ("no_prompt", "record 2: no 'prompt' text (data.prompt_field)"),
        ("no_answer", "record 2: no 'answer' text (data.answer_field)"),
        ("too_long", "data.seq_len=64: data.image_source="),
        ("no_vision", "model '{tmp}/qwen2-text' has no vision tower"),
        ("no_column", "data.image_field='picture': data.image_source="),
    ],
)
def test_bad_image_data_exits_2_naming_field_and_record(tmp_path, case, needle):
    (tmp_path / "bad.jpg").write_bytes(b"not a picture")
    second = {
        "missing": {**OK, "image": "nope.jpg"},
        "unreadable": {**OK, "image": "bad.jpg"},
        "no_prompt": {**OK, "prompt": ""},
        "no_answer": {k: v for k, v in OK.items() if k != "answer"},
    }.get(case, OK)
    records = _records(tmp_path, [OK, second])
    args = ["--set", f"data.image_source={records}", "--set", "data.seq_len=160"]
    if case == "too_long":
        args += ["--set", "data.seq_len=64"]
    if case == "no_vision":
        args += ["--set", f"model.source={_text_only_model(tmp_path)}"]
    if case == "no_column":
        args += ["--set", "data.image_field=picture"]
    out = tmp_path / "out"
    proc = sweep(out, *args)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle.format(tmp=tmp_path) in lines[0], proc.stderr
    assert not out.exists()

"""Bad input exits 2 with one line naming the field, the value and what is allowed, before any
Ray, MLflow or model work, and writes nothing."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import HEAD_IP, ROOT, free_port
from tests.e2e.test_sweep import run_module, sweep

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
        (
            ["--set", "data.calib_batches=1000000000"],
            "data.calib_batches=1000000000: Input should be less than or equal to 100000",
        ),
        (
            ["--set", "data.eval_batches=100000", "--set", "data.batch_size=1024"],
            "data.eval_batches=100000 x data.batch_size=1024 x data.seq_len=48 = 4915200000 "
            "tokens in one set; at most 134217728",
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


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with a file's bytes: equal before and after = nothing written."""
    return {str(p): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def _no_tokenizer_model(tmp_path: Path) -> Path:
    """The shipped model's config.json alone: transformers 5 reads it as an empty tokenizer."""
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    shutil.copy(ROOT / "orchestrator/presets/wikitext-qwen2.5-vl/config.json", folder)
    return folder


def _unwritable(tmp_path: Path) -> tuple[Path, list[str]]:
    """A folder this user cannot write: a read-only one, or for root (whom permissions do not
    stop) a new folder in sysfs, which refuses it anyway; synthetic data keeps it quick."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        return locked / "out", []
    return Path(f"/sys/fp8-sweep-test-{os.getpid()}"), ["--set", "data.source=synthetic"]


# case -> (the --output, extra flags, the line's needle); {tmp} is tmp_path, {port} a closed port
def _late_case(tmp_path: Path, case: str) -> tuple[Path, list[str], str]:
    out = tmp_path / "out"
    if case == "no_tokenizer":
        model = _no_tokenizer_model(tmp_path)
        return out, ["--set", f"model.source={model}"], f"model.source='{model}': has no tokenizer"
    if case == "three_bytes":
        (tmp_path / "tiny.txt").write_text("abc")
        return (
            out,
            ["--set", f"data.source={tmp_path / 'tiny.txt'}"],
            "0 windows of 48 tokens, need 192 "
            "(calibration 16 + scoring 40 + selection 32 + report 104)",
        )
    if case in ("not_an_object", "no_text_field"):
        f = tmp_path / "records.jsonl"
        f.write_text(
            '{"text": "fine"}\n' + ("[1, 2]\n" if case == "not_an_object" else '{"body": "x"}\n')
        )
        needle = (
            "line 2 is a JSON array, not an object"
            if case == "not_an_object"
            else "line 2 has no 'text' key (data.text_field; its keys: 'body')"
        )
        return out, ["--set", f"data.source={f}"], f"data.source='{f}': {needle}"
    if case == "output_is_a_file":
        out.write_text("notes")
        return out, [], f"--output {out} is a file, not a folder"
    if case == "output_under_a_file":
        (tmp_path / "notes").write_text("notes")
        out = tmp_path / "notes" / "out"
        return out, [], f"--output {out} is a file ({tmp_path / 'notes'} is a file), not a folder"
    if case == "truncated_sweep_json":
        out.mkdir()
        (out / "sweep.json").write_text('{"name": "demo-tiny", "config_ha')
        return out, [], f"--output {out}: sweep.json is unreadable (JSONDecodeError"
    if case == "nothing_at_address":
        port = free_port(HEAD_IP)
        return (
            out,
            ["--address", f"{HEAD_IP}:{port}"],
            f"--address {HEAD_IP}:{port}: nothing answers there (Connection refused)",
        )
    assert case == "unwritable_output"
    out, extra = _unwritable(tmp_path)
    return out, extra, f"--output {out}: "


@pytest.mark.parametrize(
    "case",
    [
        "no_tokenizer",
        "three_bytes",
        "not_an_object",
        "no_text_field",
        "output_is_a_file",
        "output_under_a_file",
        "truncated_sweep_json",
        "nothing_at_address",
        "unwritable_output",
    ],
)
def test_what_failed_after_ray_is_refused_before_it(tmp_path, case):
    """Each of these once failed after Ray started (or with a traceback): now one line, exit 2,
    from the checks, within seconds, and nothing written anywhere."""
    out, args, needle = _late_case(tmp_path, case)
    before = _tree(tmp_path)
    started = time.monotonic()
    proc = sweep(out, *args)
    took = time.monotonic() - started
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "Ray" not in proc.stdout and "mlflow" not in proc.stdout.lower()
    assert _tree(tmp_path) == before
    if not str(out).startswith(str(tmp_path)):
        assert not out.exists()
    assert took < 60, f"{took:.0f}s: the checks should answer in seconds"


def test_select_on_a_truncated_trials_table(tmp_path):
    """A sweep folder whose trials.parquet was cut short: select names the file, exit 2."""
    from orchestrator.core.config import load_config
    from orchestrator.core.records import TrialResult
    from orchestrator.outputs.tables import write_trials

    out = tmp_path / "out"
    out.mkdir()
    cfg = load_config()
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    (out / "sweep.json").write_text(json.dumps({"name": cfg.name, "config_hash": "x"}))
    trial = TrialResult("p", "kl_div", "FP8_DEFAULT_CFG", 12.0, 1.0, 12.0, 0.5, "FINISHED", {})
    write_trials([trial], out / "trials.parquet")
    whole = (out / "trials.parquet").read_bytes()
    (out / "trials.parquet").write_bytes(whole[: len(whole) // 2])
    before = _tree(tmp_path)
    proc = run_module("orchestrator.select", "--output", str(out))
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert f"--output {out}: {out / 'trials.parquet'}: not a readable trials table" in lines[0]
    assert "Traceback" not in proc.stderr
    assert _tree(tmp_path) == before


# Ray's own waits, shortened so a start that cannot succeed fails in seconds (defaults: minutes)
SHORT_RAY_WAITS = {
    "RAY_gcs_server_port_wait_time_s": "1",
    "RAY_py_gcs_connect_timeout_s": "2",
    "RAY_gcs_rpc_server_connect_timeout_s": "1",
}


@pytest.mark.parametrize("how", ["local", "join"])
def test_a_ray_that_does_not_come_up_is_one_line_and_leaves_the_folder_reusable(tmp_path, how):
    """A local start on an address this machine does not have, or a join to a port that accepts
    connections but never answers (as a GCS under load does): Ray's real start-up failure, made
    quick by its own timeouts. One line, exit 1, the traceback in logs/driver.log. The tracking
    store cannot be created either, so the start dies before sweep.json: the same command run
    again takes the folder over (and fails the same way) instead of calling it foreign (exit 2)."""
    out = tmp_path / "out"
    env = dict(SHORT_RAY_WAITS)
    args = ["--set", "data.source=synthetic", "--tracking-uri", "sqlite:////dev/null/mlflow.db"]
    with socket.socket() as silent:
        if how == "local":
            env["FP8_SWEEP_NODE_IP"] = "192.0.2.1"  # TEST-NET-1: never an address of this host
            needle = "error: the local Ray instance did not start in time ("
        else:
            silent.bind((HEAD_IP, 0))
            silent.listen()
            address = f"{HEAD_IP}:{silent.getsockname()[1]}"
            args += ["--address", address]
            needle = f"error: --address {address}: the Ray cluster there did not answer in time ("
        for attempt in (1, 2) if how == "local" else (1,):  # the rerun: once is enough
            proc = sweep(out, *args, env=env)
            assert proc.returncode == 1, (attempt, proc.stdout[-2000:] + proc.stderr[-2000:])
            lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
            assert len(lines) == 1 and lines[0].startswith(needle), proc.stderr
            assert lines[0].endswith(f"Ray's traceback: {out / 'logs' / 'driver.log'}")
            assert "Traceback" not in proc.stdout + proc.stderr
            assert "Traceback" in (out / "logs" / "driver.log").read_text()
            assert {p.name for p in out.iterdir()} == {".owner", "config.yaml", "logs"}

"""Each Python script in scripts/ run as its docstring says, on its ``--smoke`` path (tiny, CPU), as
a subprocess, with assertions on what it wrote: benchmarks that no test runs rot (bench_sweep's
probe stage did, unseen, when batches became records).

bench_sweep.py and diag_actor.py start Ray (on 127.0.0.2, tests/conftest.py), so they are e2e;
diag_actor.py measures the model bench_sweep.py saves, so it reuses that run's --work.
schemes_doc.py reads a finished sweep: tests/e2e/test_sweep.py runs it on the demo's output.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def run_script(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python <args>`` from the repository root, this checkout first on the path."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """``bench_sweep.py run --smoke``: (work folder, out folder, stdout)."""
    root = tmp_path_factory.mktemp("bench")
    work, out = root / "work", root / "out"
    proc = run_script(
        "scripts/bench_sweep.py", "run", "--smoke", "--work", str(work), "--out", str(out)
    )
    return work, out, proc.stdout


@pytest.mark.e2e
def test_bench_sweep_smoke_runs_every_stage_a_cpu_can(bench, tmp_path):
    work, out, stdout = bench
    # the CUDA-only stages say why they did not run; every other one wrote its record
    assert stdout.count("skipped, ModelOpt's FP8 extension is CUDA code") == 2
    assert {p.name for p in out.glob("*.json")} == {
        "model.json",
        "probe.json",
        "sweep-s2.json",
        "loop-s2.json",
        "scale-1.json",
    }
    probe = json.loads((out / "probe.json").read_text())
    assert probe["device"]["card"] == "cpu" and {"python", "torch"} <= set(probe["versions"])
    kl = {name: runs[0]["kl_mean"] for name, runs in probe["evaluate"].items()}
    assert kl["none"] == 0 and 0 < kl["quarter"] < kl["full"]
    # every fake-quant forward variant ran, folded weights included
    assert {k.split("_x")[0] for k in probe["fake_quant_forward"]} == {
        "model",
        "decoder",
        "inputs_only",
        "folded",
    }
    assert all(v["tokens_per_s"] > 0 for v in probe["fake_quant_forward"].values())
    # calibrate once and toggle gives what calibrating each plan afresh gives
    for plan in probe["recalibrate"].values():
        assert plan["kl_abs_difference"] < 1e-9 and plan["amax_max_abs_difference"] == 0
    sweep = json.loads((out / "sweep-s2.json").read_text())
    assert sweep["exit_code"] == 0 and sweep["grid_points"] == 3 == sweep["distinct_plans"]
    assert [t["status"] for t in sweep["trials"]] == ["FINISHED"] * 3
    # each trial's evaluation pass covers the report set too, which the floor counts
    assert all(t["report_eval_tokens"] > 0 for t in sweep["trials"])
    assert (work / "sweep-s2" / "schemes.yaml").exists()
    # the sweep's console landmarks were found, in the order the sweep reaches them
    ph = sweep["phases"]
    assert ph["ray_up"] <= ph["scored"] <= ph["tune_start"] <= ph["last_trial_done"]
    assert len(sweep["workers"]) == 1 and sweep["workers"][0]["resident_hit"] == 0
    loop = json.loads((out / "loop-s2.json").read_text())
    (point,) = loop["points_timed"]
    assert loop["grid_points"] == 3 and point["kl_mean"] > 0
    assert point["achieved"]["effective_bits"] == pytest.approx(point["effective_bits"], abs=0.5)
    # scale:1 runs on one CPU worker under --smoke: both scoring methods on the smoke grid
    scale = json.loads((out / "scale-1.json").read_text())
    assert scale["device"] == "cpu" and scale["exit_code"] == 0
    assert scale["grid_points"] == 2 * sweep["grid_points"]
    assert {t["status"] for t in scale["trials"]} == {"FINISHED"}
    # the report's table has a row for the budget with the sweep's and the loop's times, and the
    # scale line; `report` merges the stages again into one JSON
    assert any(line.startswith("s2 ") for line in stdout.splitlines())
    assert f"{scale['grid_points']} points on 1 CPU worker" in stdout
    merged = tmp_path / "merged.json"
    run_script("scripts/bench_sweep.py", "report", "--out", str(out), "--json", str(merged))
    summary = json.loads(merged.read_text())["summary"]
    assert summary["s2"]["speedup_vs_loop"] > 0 and summary["s2"]["peak_gpu_gib"] is None
    assert summary["s2"]["median_trial_ratio_to_floor"] > 0
    assert summary["scale"]["1"]["speedup"] == 1
    assert summary["scale"]["1"]["trials_phase_seconds"] >= 0


@pytest.mark.e2e
def test_diag_actor_smoke_measures_one_plan_alike_everywhere(bench, tmp_path):
    work, _, _ = bench
    result = tmp_path / "diag.json"
    run_script(
        "scripts/diag_actor.py",
        "--smoke",
        "--work",
        str(work),
        "--out",
        str(result),
        "--parts",
        "plain,threads,actor,tune_pinned",
        "--trials",
        "2",
    )
    rows = json.loads(result.read_text())
    labels = [r["label"] for r in rows]
    assert "plain" in labels and "fresh thread 1" in labels
    actor = [r for r in rows if r["label"].startswith("ray actor")]
    assert len(actor) == 5 and len({r["pid"] for r in actor}) == 1  # one actor, two calls
    tune = [r for r in rows if r["label"].startswith("tune, model thread")]
    assert len(tune) == 6  # 2 trials x (before, after, after) the intermediate report
    assert len({r["pid"] for r in tune}) == 1  # the reused actor kept its evaluator
    assert all(r["thread"].startswith("fp8-model") for r in tune)
    # the same plan on the same calibrated model: the same KL in every setting
    assert len({r["kl_mean"] for r in rows}) == 1 and rows[0]["kl_mean"] > 0


@pytest.mark.integration
def test_bench_kl_prefix_smoke_scores_alike_with_and_without_reuse(tmp_path):
    result = tmp_path / "kl.json"
    proc = run_script("scripts/bench_kl_prefix.py", "--smoke", "--out", str(result))
    doc = json.loads(result.read_text())
    assert doc["scores_bitwise_equal"] and doc["model"]["layers"] == 2
    reuse, full = doc["runs"]["reuse"], doc["runs"]["full"]
    # per score batch, the reuse path records the block inputs once and replays each group
    assert reuse["forwards"]["recorded"] == 1 and reuse["forwards"]["replayed"] > 0
    assert full["forwards"] is None and doc["ideal_ratio_scoring"] > 1
    assert {"python", "nvidia-modelopt"} <= set(doc["versions"])
    assert '"scores_bitwise_equal": true' in proc.stdout


@pytest.mark.integration
def test_train_reference_smoke_writes_a_preset_that_loads(tmp_path):
    """scripts/train_reference.py, run as a module the way its docstring says."""
    out = tmp_path / "ref"
    run_script("-m", "scripts.train_reference", "--smoke", "--out", str(out))
    ref = json.loads((out / "reference.json").read_text())
    assert ref["architecture"]["layers"] == 2 and ref["steps"] == 4
    curve = ref["dev_curve"]
    assert [c["step"] for c in curve] == [2, 4]
    assert ref["kept_step"] == min(curve, key=lambda c: c["dev_perplexity"])["step"]
    assert math.isfinite(ref["test_perplexity"]) and math.isfinite(ref["test_subset_perplexity"])
    assert "wikitext-qwen2.5-vl" in (out / "README.md").read_text()
    # the folder is a model source like the shipped preset, with a lossless tokenizer
    from transformers import AutoTokenizer

    from orchestrator.model.loading import load_model

    model, profile = load_model(str(out))
    assert profile.name and len(profile.eligible_modules(model)) == 2 * 7
    tok = AutoTokenizer.from_pretrained(out)
    text = " = Valkyria Chronicles III = \n Senjō no Valkyria 3 : <unk> Chronicles"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


@pytest.mark.integration
def test_bench_memory_smoke_records_every_phase_beside_the_plan(tmp_path):
    """scripts/bench_memory.py on the CPU: every phase ran through the worker, its peaks null
    (nothing to measure), the plan's GiB beside them; --record adds no row without a GPU, and a
    bad phase is refused with exit 2."""
    from orchestrator.core.memory import PHASES

    result, factors = tmp_path / "mem.json", tmp_path / "factors.json"
    factors.write_text(json.dumps({"margin": 0.0, "rows": []}))
    proc = run_script(
        "scripts/bench_memory.py", "--smoke", "--out", str(result), "--record", str(factors)
    )
    doc = json.loads(result.read_text())
    assert set(doc["phases"]) == set(PHASES) and doc["card"] == "cpu"
    for name, p in doc["phases"].items():
        assert (p["allocated_gib"], p["reserved_gib"], p["device_used_gib"]) == (None,) * 3
        assert p["plan_gib"] >= doc["plan"]["phases"][name] > 0 or name == "load"
    assert doc["rows"] == [] and json.loads(factors.read_text())["rows"] == []
    assert {"torch", "transformers", "nvidia-modelopt"} <= set(doc["versions"])
    assert "no row added" in proc.stdout
    bad = subprocess.run(
        [sys.executable, "scripts/bench_memory.py", "--smoke", "--out", "x", "--phases", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "'nope' is not a phase; allowed: load" in bad.stderr
    # rows measured elsewhere go into the measurements file as they are
    measured = {"rows": [{"phase": "load", "preset": "p", "allocated_gib": 1.0}]}
    (tmp_path / "gpu.json").write_text(json.dumps(measured))
    run_script(
        "scripts/bench_memory.py", "--from", str(tmp_path / "gpu.json"), "--record", str(factors)
    )
    assert json.loads(factors.read_text())["rows"] == measured["rows"]

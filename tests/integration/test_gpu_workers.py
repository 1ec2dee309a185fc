"""Workers larger than one GPU (``search.gpus_per_worker`` > 1): the model spread over a worker's
GPUs scores and measures like the same model on one GPU, and the sweep places GPUs // 2 workers of
two GPUs each. Needs at least two CUDA GPUs; the GPU measurements belong to the GPU issue."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.gpu
needs_two = pytest.mark.skipif(
    torch.cuda.device_count() < 2,
    reason=f"needs 2 CUDA GPUs of compute capability >= 8.9, found {torch.cuda.device_count()}",
)
RECIPE = "FP8_DEFAULT_CFG"
PRESET = "qwen2.5-vl-3b-random"  # 7 GB: balanced over two GPUs, every block on one of them


@needs_two
def test_a_two_gpu_worker_spreads_the_model_and_measures_like_one_gpu():
    from orchestrator.core.config import ModelConfig, SweepConfig
    from orchestrator.core.planning import make_plan
    from orchestrator.core.records import ScoreTable
    from orchestrator.model.data import build_datasets
    from orchestrator.model.scoring import ScoringSetup
    from orchestrator.model.worker import Worker

    cfg = SweepConfig.model_validate(
        {
            "data": {"seq_len": 512, "batch_size": 2},
            "search": {"effective_bits": [8], "coverage": [1.0]},
        }
    )
    data = build_datasets(cfg.data, 151936, None, seed=0)
    setup = ScoringSetup(PRESET, None, "qwen2.5-vl", data.score.hash, "gradient", RECIPE, 2, 2)
    metrics, tables = [], []
    for gpus in (2, 1):
        w = Worker(ModelConfig(source=PRESET), gpus=gpus)
        devices = {p.device.index for p in w._pristine.parameters()}
        assert devices == set(range(gpus))  # spread over both, or on the one
        out = w.score(data, setup, [0, 1])
        table = ScoreTable.from_dict(out["table"])
        plan = make_plan(table, 12, 1.0)
        metrics.append(w.evaluate(data, RECIPE, 8 << 30, plan.fp8_modules))
        tables.append(table)
        del w
        torch.cuda.empty_cache()
    two, one = tables
    assert [g.name for g in two.groups] == [g.name for g in one.groups]
    assert [g.score for g in two.groups] == pytest.approx([g.score for g in one.groups], rel=0.05)
    assert metrics[0]["kl_mean"] == pytest.approx(metrics[1]["kl_mean"], rel=0.05)


@needs_two
def test_the_sweep_places_workers_of_two_gpus(tmp_path):
    from tests.e2e.test_sweep import SMALL, sweep

    out = tmp_path / "out"
    proc = sweep(
        out,
        *SMALL,
        "--set",
        "model.source=tiny-qwen2.5-vl",
        "--set",
        "data.source=synthetic",
        "--set",
        "search.gpus_per_worker=2",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    n = torch.cuda.device_count() // 2
    assert f"{n} worker(s) of 2 GPU(s)" in proc.stdout
    workers = json.loads((out / "workers.json").read_text())
    assert len(workers) == n
    for w in workers:  # each phase's peaks, summed over the worker's GPUs, beside the plan's
        phases = w["memory"]["phases"]
        assert {"load", "gradient", "calibration", "trials"} <= set(phases)
        assert set(w["memory"]["plan"]["phases"]) <= set(phases)
        for p in phases.values():
            assert p["device_used_gib"] >= p["reserved_gib"] >= p["allocated_gib"] > 0

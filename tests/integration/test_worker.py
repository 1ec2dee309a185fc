"""The long-lived worker (``orchestrator.model.worker``): scoring on copies, then one resident
model.

Real ModelOpt on the tiny Qwen2.5-VL, CPU. The worker scores on a copy of the model it loaded and
later quantizes that same model for its trials, so scoring must leave it untouched: its scores and
its plans' metrics must equal those of freshly loaded models.
"""

import threading

import pytest
import torch

from orchestrator.core.config import ModelConfig
from orchestrator.core.planning import make_plan
from orchestrator.core.records import ScoreTable
from orchestrator.model.loading import load_model
from orchestrator.model.worker import Evaluator, Worker

pytestmark = pytest.mark.integration
RECIPE = "FP8_DEFAULT_CFG"


@pytest.fixture(scope="module")
def worker():
    return Worker(ModelConfig(source="tiny-qwen2.5-vl"), threads=1)


def test_start_up_is_timed_once(worker):
    assert set(worker.startup) == {"import_seconds", "load_seconds"}
    assert all(v >= 0 for v in worker.startup.values())


def test_scoring_on_the_worker_equals_a_fresh_model_and_leaves_it_unquantized(
    worker, tiny_data, score_tables
):
    for method in ("kl_div", "gradient"):
        reference, setup, _ = score_tables[method]
        for _ in range(2):  # twice: the second copy must be as clean as the first
            out = worker.score(tiny_data, setup, list(range(setup.num_score_steps)))
            table = ScoreTable.from_dict(out["table"])
            assert [g.name for g in table.groups] == [g.name for g in reference.groups]
            assert [g.score for g in table.groups] == pytest.approx(
                [g.score for g in reference.groups], rel=1e-4, abs=1e-12
            )
    assert not any("quantizer" in n for n, _ in worker._pristine.named_modules())


def test_the_resident_model_measures_like_a_fresh_evaluator(worker, tiny_data, score_tables):
    plan = make_plan(score_tables["kl_div"][0], 11, 1.0)
    paid = worker.prepare(tiny_data, RECIPE, 8 << 30)
    assert paid["resident_hit"] == 0.0 and paid["calibration_seconds"] > 0
    assert worker._pristine is None  # the loaded model became the resident one
    again = worker.prepare(tiny_data, RECIPE, 8 << 30)
    assert again["resident_hit"] == 1.0 and again["calibration_seconds"] == 0.0
    got = worker.evaluate(tiny_data, RECIPE, 8 << 30, plan.fp8_modules)
    assert got["resident_hit"] == 1.0
    model, profile = load_model("tiny-qwen2.5-vl")
    fresh = Evaluator(model, profile, tiny_data.calib, tiny_data.eval, RECIPE, "cpu")
    want = fresh.evaluate(plan.fp8_modules)
    assert got["kl_mean"] > 0
    for key in ("kl_mean", "top1_agreement", "nll", "nll_ref"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-9)


def test_trials_run_in_bfloat16_with_vllm_scales_by_default_on_cpu(worker, tiny_data, score_tables):
    """The default config's worker on CPU measures in the export's dtype, and says so."""
    assert worker.device == "cpu"
    plan = make_plan(score_tables["kl_div"][0], 12, 1.0)
    got = worker.evaluate(tiny_data, RECIPE, 8 << 30, plan.fp8_modules)
    assert got["numerics"] == "bfloat16, vLLM fused scales"
    assert {p.dtype for p in worker._evaluator.model.parameters()} == {torch.bfloat16}


def test_evaluations_from_several_threads_run_one_at_a_time(worker, tiny_data, score_tables):
    """Ray may call an actor from more than one thread; the model thread serialises the work."""
    plans = [make_plan(score_tables["gradient"][0], b, 1.0) for b in (9, 13)]
    results: dict[int, float] = {}

    def run(i: int) -> None:
        results[i] = worker.evaluate(tiny_data, RECIPE, 8 << 30, plans[i].fp8_modules)["kl_mean"]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    alone = [worker.evaluate(tiny_data, RECIPE, 8 << 30, p.fp8_modules)["kl_mean"] for p in plans]
    assert [results[0], results[1]] == pytest.approx(alone, rel=1e-6)
    assert results[0] > results[1] > 0  # fewer bits, more drift


def test_without_room_for_a_copy_the_worker_scores_its_model_and_reloads(
    tiny_data, score_tables, monkeypatch
):
    """On a device too small for two copies the loaded model is scored and a clean one reloaded."""
    w = Worker(ModelConfig(source="tiny-qwen2.5-vl"), threads=1)
    monkeypatch.setattr(w, "_copy_fits", lambda: False)
    reference, setup, _ = score_tables["kl_div"]
    table = ScoreTable.from_dict(w.score(tiny_data, setup, [0, 1])["table"])
    assert [g.score for g in table.groups] == pytest.approx(
        [g.score for g in reference.groups], rel=1e-4, abs=1e-12
    )
    assert w._pristine is None  # it went to AutoQuantize
    plan = make_plan(reference, 11, 1.0)
    got = w.evaluate(tiny_data, RECIPE, 8 << 30, plan.fp8_modules)
    assert got["resident_hit"] == 0.0 and got["reload_seconds"] > 0
    model, profile = load_model("tiny-qwen2.5-vl")
    want = Evaluator(model, profile, tiny_data.calib, tiny_data.eval, RECIPE, "cpu").evaluate(
        plan.fp8_modules
    )
    assert got["kl_mean"] == pytest.approx(want["kl_mean"], rel=1e-5)


def test_each_phase_is_recorded_and_on_cpu_its_peaks_are_null(tiny_data, score_tables):
    """workers.json's ``memory.phases``: load, each scoring method, calibration, trials."""
    w = Worker(ModelConfig(source="tiny-qwen2.5-vl"), threads=1)
    for method in ("kl_div", "gradient"):
        _, setup, _ = score_tables[method]
        w.score(tiny_data, setup, [0])
    plan = make_plan(score_tables["kl_div"][0], 11, 1.0)
    w.evaluate(tiny_data, RECIPE, 8 << 30, plan.fp8_modules)
    memory = w.memory()
    phases = memory["phases"]
    assert memory["scored_on_copy"] is True  # on CPU there is always room for a copy
    assert {"load", "kl_div", "gradient", "calibration", "trials"} <= set(phases)
    for peaks in phases.values():
        assert peaks == {"allocated_gib": None, "reserved_gib": None, "device_used_gib": None}


def test_the_plans_reference_cache_is_what_the_evaluator_keeps(tiny_data):
    """The memory plan's reference-cache term (selection + report rows x width x bytes) against
    the hidden states the evaluator actually keeps, in the dtype it runs."""
    from orchestrator.core.config import SweepConfig
    from orchestrator.core.memory import GIB, Workload

    assert tiny_data.report is not None  # the default sets include a report set
    model, profile = load_model("tiny-qwen2.5-vl", dtype="bfloat16")
    ev = Evaluator(
        model,
        profile,
        tiny_data.calib,
        tiny_data.eval,
        RECIPE,
        "cpu",
        8 << 30,
        "vllm",
        tiny_data.report,
    )
    kept = sum(t.numel() * t.element_size() for t in ev._reference)
    d = SweepConfig.model_validate({"search": {"effective_bits": [8], "coverage": [1.0]}}).data
    _, batch, seq = tiny_data.eval.tokens.shape
    assert (batch, seq) == (d.batch_size, d.seq_len)
    load = Workload(
        0,
        2,
        "bfloat16",
        4,
        model.config.get_text_config().hidden_size,
        512,
        d.batch_size,
        d.seq_len,
        d.calib_batches,
        d.eval_batches,
        d.report_batches,
        ("gradient",),
        8.0,
    )
    assert load.reference_cache_gib_used() * GIB == kept
    small = Workload(**{**load.__dict__, "reference_cache_gib": kept / GIB / 2})
    assert small.reference_cache_gib_used() == 0.0  # over the budget: recomputed, not kept

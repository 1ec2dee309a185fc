"""The memory plan's arithmetic and worker placement on made-up node lists (pure), and the
parameter count from a config alone against the real module tree on the meta device."""

from __future__ import annotations

import pytest

from orchestrator.core.memory import (
    COPY_HEADROOM,
    FACTORS_FILE,
    PHASES,
    USABLE_FRACTION,
    Node,
    Slot,
    Workload,
    cpu_workers,
    factors,
    fit_factors,
    gpus_for,
    measurements,
    place,
    row_peak,
    row_shape,
    worker_need,
)

pytestmark = pytest.mark.unit
H200, H100 = 139.8, 79.6  # GiB per GPU as nvidia-smi reports them
P72B, P3B = 73_406_351_360, 3_754_622_976  # the presets' parameter counts (checked below)
BOUND = 1.25  # the plan may promise at most this much more than a measured peak


def load_of(params: int = P3B, blocks: int = 36, width: int = 2048, **kw) -> Workload:
    """A made-up workload: the 3B's shape, the sweeps' sets, gradient scoring."""
    base = dict(
        params=params,
        dtype_bytes=2,
        dtype="bfloat16",
        blocks=blocks,
        width=width,
        vocab=151936,
        batch_size=4,
        seq_len=1024,
        calib_batches=8,
        eval_batches=8,
        report_batches=16,
        methods=("gradient",),
        reference_cache_gib=2.0,
    )
    return Workload(**{**base, **kw})


# a made-up need for the placement tests, independent of the factors (an earlier plan's 72B at
# 4 x 1024 tokens)
BIG = 287.0


# --- the plan against every measured row -------------------------------------------------------


def test_every_measured_peak_is_covered_by_the_plan_and_not_by_more_than_a_quarter():
    """Each row of the measurements file against the plan's arithmetic for its shape: at or
    above its largest peak (allocated, reserved, nvidia-smi), at most 25 % above it."""
    fitted = factors()
    misses = []
    for row in measurements()["rows"]:
        plan = fitted[row["phase"]].gib(row_shape(row), row["phase"])
        for key in ("allocated_gib", "reserved_gib", "device_used_gib"):
            if row[key] is not None and not row[key] <= plan <= BOUND * row_peak(row):
                misses.append(f"{row['preset']} {row['phase']} {key} {row[key]}: plan {plan:.2f}")
    assert not misses, "\n".join(misses)


def test_every_row_names_where_it_came_from_and_its_phase():
    doc = measurements()
    assert doc["rows"] and 0 <= doc["margin"] < BOUND - 1
    for row in doc["rows"]:
        assert row["phase"] in PHASES and row["source"] and row["card"] and row["preset"]
        assert row["held_gib"] >= row["weights_gib"] > 0
        assert any(row[k] is not None for k in ("allocated_gib", "reserved_gib", "device_used_gib"))
    assert FACTORS_FILE.parent.name == "core"  # shipped with the package (pyproject package-data)


def _row(
    phase: str, held: float, tokens: int, peak: float, blocks: int = 36, width: int = 2048
) -> dict:
    return dict(
        phase=phase,
        held_gib=held,
        weights_gib=held,
        tokens=tokens,
        blocks=blocks,
        width=width,
        vocab=151936,
        logit_rows=tokens,
        allocated_gib=None,
        reserved_gib=None,
        device_used_gib=peak,
    )


def test_the_fit_is_the_smallest_that_covers_every_row_plus_the_margin():
    """Two rows that one factor pair meets exactly: the fit is that pair; the margin raises it."""
    rows = [_row("gradient", 7.0, 4096, 30.0), _row("gradient", 60.0, 2048, 85.0, 64, 5120)]
    exact = fit_factors({"margin": 0.0, "rows": rows})["gradient"]
    for r in rows:
        assert exact.gib(row_shape(r), "gradient") == pytest.approx(row_peak(r))
    raised = fit_factors({"margin": 0.1, "rows": rows})["gradient"]
    assert raised.activation == pytest.approx(1.1 * exact.activation)
    assert raised.logits == pytest.approx(1.1 * exact.logits)
    # a third row below the first two's line changes nothing; one above it raises the plan there
    low = _row("gradient", 7.0, 4096, 25.0, blocks=30)
    same = fit_factors({"margin": 0.0, "rows": [*rows, low]})["gradient"]
    assert (same.activation, same.logits) == (exact.activation, exact.logits)
    high = _row("gradient", 7.0, 4096, 40.0, blocks=30)
    f = fit_factors({"margin": 0.0, "rows": [*rows, high]})["gradient"]
    assert all(f.gib(row_shape(r), "gradient") >= row_peak(r) - 1e-9 for r in [*rows, high])


def test_load_rows_give_the_fixed_part_every_phase_adds():
    """What the load leaves on the device beyond the weights (CUDA context, allocator slack)."""
    rows = [_row("gradient", 7.0, 4096, 30.0), _row("load", 7.0, 0, 7.8)]
    f = fit_factors({"margin": 0.0, "rows": rows})
    assert {p: f[p].fixed_gib for p in PHASES} == dict.fromkeys(PHASES, pytest.approx(0.8))
    for r in rows:  # each row still met, the fixed part inside the fit
        assert f[r["phase"]].gib(row_shape(r), r["phase"]) == pytest.approx(row_peak(r))


def test_an_unmeasured_phase_takes_the_factors_of_one_that_needs_more():
    rows = [_row("gradient", 7.0, 4096, 30.0), _row("trials", 7.0, 32768, 11.0)]
    f = fit_factors({"margin": 0.0, "rows": rows})
    assert (f["kl_div"].activation, f["kl_div"].logits) == (
        f["gradient"].activation,
        f["gradient"].logits,
    )
    assert f["calibration"].activation == f["trials"].activation
    assert (f["load"].activation, f["load"].logits) == (0.0, 0.0)
    assert "unmeasured" in f["kl_div"].source


# --- the plan's arithmetic ------------------------------------------------------------------------


def test_the_worker_needs_the_most_of_the_phases_its_sweep_runs():
    n = worker_need(load_of(methods=("kl_div", "gradient")))
    phases = n.phase_gib
    assert set(phases) == set(PHASES)
    assert n.worker_gib == max(phases.values()) == phases[n.dominant]
    assert n.weights_gib == pytest.approx(6.99, abs=0.01)
    assert "kl_div" not in worker_need(load_of()).phase_gib  # only the methods configured
    assert f"a worker needs ~{n.worker_gib:.1f} GiB ({n.dominant})" in n.describe()


def test_scoring_scales_with_tokens_depth_and_width_and_trials_with_the_cache():
    f = factors()["gradient"]
    base = worker_need(load_of()).phase_gib["gradient"]
    half = worker_need(load_of(batch_size=2)).phase_gib["gradient"]
    w = load_of().weights_gib + f.fixed_gib  # the weights and the CUDA context do not scale
    assert half - w == pytest.approx((base - w) / 2)  # both terms follow the tokens per batch
    deeper = worker_need(load_of(blocks=72)).phase_gib["gradient"]
    assert deeper - base == pytest.approx(f.activation * 4096 * 36 * 2048 / 2**30)
    no_cache = worker_need(load_of(reference_cache_gib=0.0)).phase_gib["trials"]
    cached = worker_need(load_of()).phase_gib["trials"]
    assert cached - no_cache == pytest.approx((8 + 16) * 4096 * 2048 * 2 / 2**30)


def test_a_copy_for_scoring_counts_where_the_worker_makes_one():
    """The worker scores on a copy with COPY_HEADROOM model sizes free: on a big GPU the plan
    adds the weights once more, spread over several GPUs never."""
    n = worker_need(load_of())
    big = (COPY_HEADROOM + 1) * n.weights_gib
    assert n.gib_on(big) == pytest.approx(n.scoring_gib + n.weights_gib)
    assert n.gib_on(big - 0.1) == n.worker_gib
    one = place(n, [Node("a", 2, H100)])
    assert one.workers == (Slot("a", 1),) * 2
    assert one.lines[0].endswith(f"{n.gib_on(H100):.1f} GiB each (scoring on a copy)")


def test_gpus_for_a_worker():
    assert gpus_for(23.9, H100) == 1
    assert gpus_for(H100 * USABLE_FRACTION, H100) == 1  # exactly full fits
    assert gpus_for(H100 * USABLE_FRACTION + 0.01, H100) == 2
    assert gpus_for(BIG, H200) == 3
    assert gpus_for(BIG, H100) == 5


def test_the_72b_on_mixed_nodes():
    """A 4 x H200 node holds one worker of 3; an 8 x H100 node one of 5; 2 x 24 GiB none."""
    nodes = [Node("a", 4, H200), Node("b", 8, H100), Node("c", 2, 24.0)]
    p = place(BIG, nodes)
    assert p.workers == (Slot("a", 3), Slot("b", 5))
    assert p.lines[0] == "node a has 4 x 139.8 GiB: 1 worker(s) of 3 GPU(s)"
    assert p.lines[2].startswith("node c has 2 x 24.0 GiB: no worker (")
    assert "a worker needs 14 GPUs of this size" in p.lines[2]


def test_a_fixed_gpus_per_worker_that_cannot_hold_the_model_places_nothing():
    p = place(BIG, [Node("a", 8, H100)], gpus_per_worker=2)
    assert p.workers == ()
    assert "2 GPU(s) offer 139.5 GiB, a worker needs" in p.lines[0]
    assert "search.gpus_per_worker=2" in p.lines[0]


def test_workers_per_node_is_gpus_over_gpus_per_worker_and_capped():
    nodes = [Node("a", 8, H100), Node("b", 4, H100)]
    assert (
        place(30.0, nodes, gpus_per_worker=2).workers == (Slot("a", 2),) * 4 + (Slot("b", 2),) * 2
    )
    assert place(30.0, nodes, gpus_per_worker=3).workers == (Slot("a", 3),) * 2 + (Slot("b", 3),)
    assert place(30.0, nodes).workers == (Slot("a", 1),) * 8 + (Slot("b", 1),) * 4
    capped = place(30.0, nodes, max_workers=10)
    assert capped.workers == (Slot("a", 1),) * 8 + (Slot("b", 1),) * 2
    assert capped.lines[1] == "node b has 4 x 79.6 GiB: 2 worker(s) of 1 GPU(s)"


def test_cpu_nodes_are_not_gpu_slots():
    assert place(1.0, [Node("cpu", 0, 0.0)]).workers == ()


def test_cpu_workers_fit_the_host():
    assert cpu_workers(1.0, 24.0, 2) == (2, "no GPUs: 2 CPU worker(s) in this host's 24.0 GiB")
    count, line = cpu_workers(384.6, 23.5, 2)
    assert count == 0 and "(2 asked for; each needs 384.6 GiB)" in line
    assert cpu_workers(9.0, 24.0, 4)[0] == 2


# --- parameters from the config, against the meta device ----------------------------------------

PUBLISHED = {  # Qwen2.5-VL model cards: 8.29 B, 33.5 B, 73.4 B
    "qwen2.5-vl-7b-random": (8.29e9, 28, 3584, 4, 18944),
    "qwen2.5-vl-32b-random": (33.5e9, 64, 5120, 8, 27648),
    "qwen2.5-vl-72b-random": (73.4e9, 80, 8192, 8, 29568),
}


def _on_meta(config):
    import torch

    from orchestrator.model.families import loader_class

    with torch.device("meta"):
        return loader_class(config.model_type)._from_config(config)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_presets_have_the_published_size_and_eligible_layers(name):
    from orchestrator.model.families import profile_for
    from orchestrator.model.loading import model_facts, resolve_config

    size, layers, hidden, kv_heads, inter = PUBLISHED[name]
    config = resolve_config(name)
    model = _on_meta(config)
    params = sum(p.numel() for p in model.parameters())
    assert params == pytest.approx(size, rel=0.005)  # within 0.5% of the published size
    assert model_facts(name).params == params  # the plan's count from the config alone
    eligible = profile_for(config.model_type).eligible_modules(model)
    assert len(eligible) == 7 * layers
    head_dim = 128
    per_block = 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim + 3 * hidden * inter
    assert sum(m.params for m in eligible) == layers * per_block  # effective-bits denominator
    assert not any("visual" in m.name or "lm_head" in m.name for m in eligible)


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen2", "qwen3"])
def test_the_count_from_config_json_equals_the_module_tree(model_type, tmp_path):
    """Each family at its library defaults (full size) and tiny, read back from config.json."""
    from transformers import AutoConfig

    from orchestrator.model.families import FAMILIES
    from orchestrator.model.loading import model_facts
    from tests.integration.families import tiny_config

    family = FAMILIES[model_type]
    for config in (AutoConfig.for_model(model_type), _tiny_or_none(tiny_config, model_type)):
        if config is None:
            continue
        want = sum(p.numel() for p in _on_meta(config).parameters())
        config.save_pretrained(tmp_path / config.model_type)
        assert model_facts(str(tmp_path / config.model_type)).params == want, family.label


def _tiny_or_none(make, model_type):
    try:
        return make(model_type)
    except KeyError:  # qwen2_5_vl's tiny model is the preset
        from orchestrator.model.loading import resolve_config

        return resolve_config("tiny-qwen2.5-vl")


@pytest.mark.parametrize("size", ["7b", "32b", "72b"])
def test_the_search_space_headers_state_the_plan_the_code_prints(size):
    """Each big sibling's sweep states its worker's need in its header; it must be the code's."""
    import re

    from orchestrator.core.config import SEARCH_SPACES, load_config
    from orchestrator.model.loading import model_facts
    from orchestrator.search.capacity import need_of

    path = SEARCH_SPACES / f"qwen2_5_vl_{size}_fp8.yaml"
    cfg = load_config(path)
    f = model_facts(f"qwen2.5-vl-{size}-random")
    need = need_of(cfg, f)
    header = path.read_text().split("\nname:")[0]
    stated = float(re.search(r"a worker needs ~([\d.]+) GiB", header)[1])
    assert stated == pytest.approx(need.worker_gib, abs=0.05)
    assert f"{f.params / 1e9:.2f} B parameters, {need.weights_gib:.1f} GiB in BF16" in header

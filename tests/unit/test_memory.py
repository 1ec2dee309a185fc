"""The memory plan's arithmetic and worker placement on made-up node lists (pure), and the
parameter count from a config alone against the real module tree on the meta device."""

from __future__ import annotations

import pytest

from orchestrator.core.memory import (
    USABLE_FRACTION,
    Node,
    Slot,
    cpu_workers,
    gpus_for,
    place,
    worker_need,
)

pytestmark = pytest.mark.unit
H200, H100 = 139.8, 79.6  # GiB per GPU as nvidia-smi reports them
P72B, P3B = 73_406_351_360, 3_754_622_976  # the presets' parameter counts (checked below)


def need_72b(tokens: int = 4096) -> float:
    return worker_need(P72B, 2, "bfloat16", 80, 8192, tokens).worker_gib


def test_the_3b_need_reproduces_the_measurements_it_comes_from():
    n = worker_need(P3B, 2, "bfloat16", 36, 2048, 4 * 1024)
    assert n.weights_gib == pytest.approx(6.99, abs=0.01)
    assert n.scoring_gib == pytest.approx(23.9, abs=0.01)  # docs/benchmarks.md, run 3
    assert n.trial_gib == pytest.approx(9.83, abs=0.02)
    assert n.worker_gib == n.scoring_gib
    assert "a worker needs ~23.9 GiB" in n.describe()


def test_scoring_activations_scale_with_tokens_depth_width_and_dtype():
    base = worker_need(P3B, 2, "bfloat16", 36, 2048, 4096)
    act = base.scoring_gib - base.weights_gib
    assert worker_need(P3B, 2, "bfloat16", 36, 2048, 2048).scoring_gib == pytest.approx(
        base.weights_gib + act / 2
    )
    deeper = worker_need(P3B, 2, "bfloat16", 72, 4096, 4096)
    assert deeper.scoring_gib - deeper.weights_gib == pytest.approx(4 * act)
    fp32 = worker_need(P3B, 4, "float32", 36, 2048, 4096)
    assert fp32.scoring_gib == pytest.approx(2 * base.scoring_gib)


def test_gpus_for_a_worker():
    assert gpus_for(23.9, H100) == 1
    assert gpus_for(H100 * USABLE_FRACTION, H100) == 1  # exactly full fits
    assert gpus_for(H100 * USABLE_FRACTION + 0.01, H100) == 2
    assert gpus_for(need_72b(), H200) == 3
    assert gpus_for(need_72b(), H100) == 5


def test_the_72b_on_mixed_nodes():
    """A 4 x H200 node holds one worker of 3; an 8 x H100 node one of 5; 2 x 24 GiB none."""
    nodes = [Node("a", 4, H200), Node("b", 8, H100), Node("c", 2, 24.0)]
    p = place(need_72b(), nodes)
    assert p.workers == (Slot("a", 3), Slot("b", 5))
    assert p.lines[0] == "node a has 4 x 139.8 GiB: 1 worker(s) of 3 GPU(s)"
    assert p.lines[2].startswith("node c has 2 x 24.0 GiB: no worker (")
    assert "a worker needs 14 GPUs of this size" in p.lines[2]


def test_a_fixed_gpus_per_worker_that_cannot_hold_the_model_places_nothing():
    p = place(need_72b(), [Node("a", 8, H100)], gpus_per_worker=2)
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

    path = SEARCH_SPACES / f"qwen2_5_vl_{size}_fp8.yaml"
    cfg = load_config(path)
    f = model_facts(f"qwen2.5-vl-{size}-random")
    need = worker_need(
        f.params, 2, "bfloat16", f.num_layers, f.hidden_size, cfg.data.batch_size * cfg.data.seq_len
    )
    header = path.read_text().split("\nname:")[0]
    stated = float(re.search(r"a worker needs ~([\d.]+) GiB", header)[1])
    assert stated == pytest.approx(need.worker_gib, abs=0.05)
    assert f"{f.params / 1e9:.2f} B parameters, {need.weights_gib:.1f} GiB in BF16" in header

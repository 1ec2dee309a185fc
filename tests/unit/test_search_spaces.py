"""Every shipped YAML validates: the sweeps as SweepConfig, the catalog as Catalog."""

from pathlib import Path

import pytest

from orchestrator.core.config import SEARCH_SPACES, load_catalog, load_config

pytestmark = pytest.mark.unit
SWEEPS = sorted(p for p in SEARCH_SPACES.glob("*.yaml") if p.name != "schemes.yaml")


def test_there_is_a_demo_and_a_real_sweep():
    names = {p.name for p in SWEEPS}
    assert "demo_tiny.yaml" in names and "qwen2_5_vl_3b_fp8.yaml" in names


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_config_validates(path: Path):
    load_config(path)


def test_catalog_names_say_what_they_hold():
    cat = load_catalog()
    by = {s.name: s for s in cat.schemes}
    assert set(by) == {"fp8_autoquant_top25", "fp8_autoquant_top50", "fp8_autoquant_full"}
    for name, share in (
        ("fp8_autoquant_top25", 0.25),
        ("fp8_autoquant_top50", 0.5),
        ("fp8_autoquant_full", 1.0),
    ):
        s = by[name]
        assert s.fp8_share.nominal == share and s.fp8_share.tolerance <= 0.05
        assert s.knobs.effective_bits == pytest.approx(16 - 8 * share)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_sweep_can_reach_every_name(path: Path):
    from orchestrator.core.points import unreachable_names

    assert unreachable_names(load_config(path).search, load_catalog()) == []

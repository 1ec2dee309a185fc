from dataclasses import replace

import pytest

from orchestrator.outputs import baseline_summary, kl_margin

from .helpers import result

pytestmark = pytest.mark.unit


def _baseline(name: str, bits: float, kl: float, achieved: float | None = None):
    r = replace(result(f"{name}{bits}", bits, kl), kind="baseline", baseline=name)
    return replace(r, achieved_bits=bits if achieved is None else achieved)


def test_baselines_are_interpolated_to_the_schemes_share():
    rows = [
        _baseline("random:0", 14, 1e-3),
        _baseline("random:0", 12, 4e-3),
        _baseline("random:1", 14, 3e-3),
        _baseline("random:1", 12, 3e-3),
        _baseline("inverse", 14, 5e-3),
        _baseline("inverse", 12, 9e-3),
        _baseline("ends_bf16:1", 12, 1e-4, achieved=13.5),  # could not reach 12 bits: left out
        result("t", 13, 5e-4),  # trials are not baselines
    ]
    s = baseline_summary(rows, 13.0)
    assert s["random_seeds"] == 2
    assert s["random_kl_mean"] == pytest.approx((2e-3 + 3e-3) / 2)  # geometric midpoint per seed
    assert s["inverse_kl"] == pytest.approx((5e-3 * 9e-3) ** 0.5)
    assert "ends_bf16_kl" not in s
    # between the last budget and 16 bits, every baseline heads to KL 0 (the BF16 model)
    assert baseline_summary(rows, 15.0)["inverse_kl"] == pytest.approx(5e-3 / 2)
    assert baseline_summary(rows, 11.0) == {"at_effective_bits": 11.0}  # outside what was measured


def test_margin_is_over_the_best_baseline_and_rounding_reads_as_zero():
    assert kl_margin({"random_kl_mean": 3e-3, "inverse_kl": 2e-3}, 1e-3) == (
        "inverse",
        pytest.approx(1e-3),
    )
    assert kl_margin({"inverse_kl": 1e-3 + 1e-19}, 1e-3) == ("inverse", 0.0)
    assert kl_margin({"at_effective_bits": 12.0}, 1e-3) is None

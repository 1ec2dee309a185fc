"""What MLflow's table shows of a run: rounded copies in readable units, never in place of the
exact metrics, and a scheme's verdict table (``orchestrator/tracking/display.py``; no MLflow)."""

from __future__ import annotations

import math

import pytest

from orchestrator.tracking.display import (
    display_metrics,
    scheme_line,
    verdict_table,
    without_display,
)

pytestmark = pytest.mark.unit


def test_display_metrics_round_in_the_units_their_names_say():
    exact = {
        "kl_mean": 0.00025472345,
        "fp8_fraction": 0.33333333,
        "achieved_bits": 14.962962962,
        "top1_agreement": 0.991356,
        "report_kl_mean": 0.000172185,
        "report_fp8_fraction": math.nan,  # nothing shown for a number that is not one
    }
    assert display_metrics(exact) == {
        "kl_x1e6": 254.7,
        "fp8_share_pct": 33.3,
        "eff_bits": 14.96,
        "top1_pct": 99.14,
    }
    assert display_metrics(exact, "report_") == {"report_kl_x1e6": 172.2}
    shown = {**exact, **display_metrics(exact), **display_metrics(exact, "report_")}
    assert without_display(shown) == exact  # a reused run's metrics, as the sweep measured them


def test_verdict_table_says_which_way_is_better_and_skips_what_was_not_measured():
    entry = {
        "controls": [
            {
                "control": "random",
                "fp8_fraction": 0.5,
                "kl_ratio": 0.43,
                "kl_ratio_ci": [0.4, 0.47],
                "p_holm": 0.008,
                "verdict": "better",
            },
            {"control": "ends_fixed:1", "verdict": "cannot reach this share"},
        ]
    }
    lines = verdict_table(entry).splitlines()
    assert "< 1: scheme better" in lines[0]
    assert lines[2] == "| random | 50.0% | 0.430 [0.400, 0.470] | 0.008 | better |"
    assert lines[3] == "| ends_fixed:1 | - | - | - | cannot reach this share |"


def test_a_scheme_line_gives_its_published_numbers_verdicts_and_reason():
    entry = {
        "name": "fp8_autoquant_top25",
        "fp8_fraction": 0.25,
        "metrics_set": "report",
        "metrics": {
            "kl_mean": 1.72e-4,
            "kl_ci_low": 1.66e-4,
            "kl_ci_high": 1.78e-4,
            "top1_agreement": 0.99284,
        },
        "controls": [
            {"control": "inverse", "verdict": "better", "kl_ratio": 0.2},
            {
                "control": "random",
                "verdict": "better",
                "kl_ratio": 0.4781,
                "seeds": 20,
                "scheme_rank": 1,
            },
            {"control": "modelopt", "verdict": "equivalent", "kl_ratio": 0.99},
        ],
        "rationale": "fp8_autoquant_top25 (conservative): the front point nearest 25% FP8. 25.0%",
    }
    assert scheme_line(entry, "#/experiments/1/runs/abc") == (
        "- [fp8_autoquant_top25](#/experiments/1/runs/abc): 25.0% FP8, KL 1.72e-4 [1.66, 1.78], "
        "top-1 99.28% on the report set; vs ModelOpt's own plan: equivalent (KL ratio 0.99); "
        "vs random orders: better (KL ratio 0.478, rank 1 of 21); the front point nearest 25% FP8"
    )
    same = {**entry, "controls": [{"control": "modelopt", "verdict": "same plan"}]}
    assert "vs ModelOpt's own plan: same plan;" in scheme_line(same, "x")

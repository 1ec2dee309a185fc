"""The two figures as a reader gets them: built from hand-made trials, selected by the real
selector, and read back through matplotlib's objects (no file, no image comparison)."""

from dataclasses import replace

import pytest

from orchestrator.core.config import load_catalog
from orchestrator.core.planning import plan_for
from orchestrator.core.records import Point, table_key
from orchestrator.core.selection import select
from orchestrator.outputs.plots import KNEE_LABEL, pareto_figure, sensitivity_figure

from .helpers import table

pytestmark = pytest.mark.unit

# KL per effective bits: flat to 12 bits, steep below; on selection's normalised axes the front
# bends at 10 bits (75% FP8)
CURVE = {15: 1e-5, 14: 2e-5, 13: 3e-5, 12: 5e-5, 10: 4e-4, 8: 2e-3}
CONTROLS = ("modelopt", "random:0", "random:1", "inverse", "attn_bf16")


def _result(h, bits, kl, method):
    from .helpers import result

    r = result(h, bits, kl, method=method)
    return replace(r, metrics={**r.metrics, "kl_ci_low": kl * 0.9, "kl_ci_high": kl * 1.1})


@pytest.fixture(scope="module")
def sweep():
    tables = {
        table_key(m, "FP8_DEFAULT_CFG"): table({(0, "down"): 9.0, (1, "qkv"): 5.0}, method=m)
        for m in ("gradient", "kl_div")
    }
    trials = [
        _result(f"{m}{bits}", bits, kl * (1.3 if m == "kl_div" else 1.0), m)
        for m in ("gradient", "kl_div")
        for bits, kl in CURVE.items()
    ]
    sel = select(trials, load_catalog())
    controls = [
        replace(
            _result(f"{s.name}-{spec}", s.achieved_bits, 3 * s.metrics["kl_mean"], s.method),
            kind="control",
            strategy="",
            control=spec,
        )
        for s in sel.schemes
        if s.fp8_fraction < 1  # at 100% FP8 every control is the scheme's own plan
        for spec in CONTROLS
    ]
    return tables, trials + controls, sel


def test_pareto_reads_share_bits_nats_methods_controls_and_the_knee(sweep):
    _, results, sel = sweep
    fig = pareto_figure(results, sel.front, sel.schemes, "t")
    ax = fig.axes[0]
    assert "FP8 share" in ax.get_xlabel() and "nats per token" in ax.get_ylabel()
    (top,) = ax.child_axes
    assert "effective bits" in top.get_xlabel()
    lo, hi = ax.get_xlim()  # more FP8 to the right, so fewer bits
    assert top.get_xlim() == pytest.approx((16 - 0.08 * hi, 16 - 0.08 * lo))
    assert ax.get_yscale() == "log"  # the KLs span two decades

    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:2] == ["trial, gradient scores", "trial, kl_div scores"]
    assert {"Pareto front", KNEE_LABEL, "control: random", "control: inverse"} <= set(legend)
    assert "control: modelopt" in legend  # ModelOpt's own solve, in the first slot
    assert "control: attn_bf16" in legend and "control: ends_fixed" not in legend
    assert all(any(t.startswith(s.name) for t in legend) for s in sel.schemes)
    colours = {c.get_label(): c.lines[0].get_color() for c in ax.containers}
    assert colours["trial, gradient scores"] != colours["trial, kl_div scores"]

    (knee,) = [t for t in ax.texts if t.get_text().startswith("knee:")]
    assert sel.knee is not None and sel.knee.plan_hash == "gradient10"
    assert knee.xy == (75.0, CURVE[10]) and knee.get_text() == "knee: 75% FP8, 10.00 bits"

    # each control is joined to its scheme: a dotted line from the scheme's point, to its right
    joins = [line for line in ax.lines if line.get_linestyle() == ":"]
    assert len(joins) == len(CONTROLS) * 2  # top25 and top50; full has none
    at = {(100 * s.fp8_fraction, s.metrics["kl_mean"]) for s in sel.schemes}
    for line in joins:
        (x0, x1), (y0, y1) = line.get_xdata(), line.get_ydata()
        assert (x0, y0) in at and x1 > x0 and y1 == pytest.approx(3 * y0)
    assert any("drawn just right of it" in t.get_text() for t in ax.texts)


def test_pareto_without_picks_draws_the_controls_at_their_own_share_on_a_linear_axis(sweep):
    _, results, _ = sweep
    near = [replace(r, metrics={"kl_mean": 1e-4 * (1 + r.fp8_fraction)}) for r in results]
    ax = pareto_figure(near, (), (), "t").axes[0]
    assert ax.get_yscale() == "linear"  # the KLs span less than a decade
    assert not [t for t in ax.texts if t.get_text().startswith("knee:")]
    assert not [line for line in ax.lines if line.get_linestyle() == ":"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "control: random" in legend and KNEE_LABEL not in legend


def test_sensitivity_says_which_way_is_sensitive_and_outlines_each_schemes_fp8_groups(sweep):
    tables, _, sel = sweep
    fig = sensitivity_figure(tables.values(), "t", sel.schemes)
    maps = [ax for ax in fig.axes if "scores" in ax.get_title()]
    assert [ax.get_title().split()[0] for ax in maps] == ["gradient", "kl_div"]
    bars = [ax.get_ylabel() for ax in fig.axes if ax not in maps]
    assert bars and all("higher = more sensitive" in b for b in bars)
    assert "AutoQuantize" in fig.texts[0].get_text()  # the suptitle names the score
    for s in sel.schemes:
        groups = plan_for(Point.of(s), tables).fp8_groups
        for ax in maps:
            outlines = [p for p in ax.patches if p.get_gid() == f"fp8:{s.name}"]
            assert len(outlines) == len(groups) > 0
    styles = {
        (p.get_edgecolor(), p.get_linestyle()) for p in maps[0].patches if p.get_gid() is not None
    }
    assert len(styles) == len(sel.schemes) == 3
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert [t.split(":")[0] for t in legend] == [s.name for s in sel.schemes]
    assert sensitivity_figure([], "t") is None

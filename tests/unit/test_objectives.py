"""Selecting and comparing on the image answers' KL instead of all target tokens, and comparing
two sweeps' schemes name by name on one evaluation set. Pure: hand-made records."""

from __future__ import annotations

from dataclasses import replace

import pytest

from orchestrator.compare_sweeps import compare_named, table_lines
from orchestrator.core.config import load_catalog
from orchestrator.core.objectives import KL_MEAN, Objective, missing_rows
from orchestrator.core.planning import control_plan
from orchestrator.core.selection import select
from orchestrator.core.verdicts import compare_schemes, measured_by_plan

from .helpers import result
from .test_points import _scheme, _table

pytestmark = pytest.mark.unit
CATALOG = load_catalog()
IMAGE = Objective("image_kl_mean")


def _with_image(r, image_kl: float):
    return replace(r, metrics={**r.metrics, "image_kl_mean": image_kl})


def test_image_objective_picks_on_the_image_answers_kl():
    # two plans at 25% FP8: "t" is better on all tokens, "i" on the image answers
    rs = [
        _with_image(result("e", 8, 0.2), 0.3),
        _with_image(result("c", 12, 0.004), 0.01),
        _with_image(result("t", 14, 0.001), 0.009),
        _with_image(result("i", 14, 0.002), 0.002),
    ]
    top25 = {o.metric: select(rs, CATALOG, objective=o).schemes[0] for o in (Objective(), IMAGE)}
    assert (top25["kl_mean"].plan_hash, top25["image_kl_mean"].plan_hash) == ("t", "i")
    assert "chosen on KL on image answers: 0.002" in top25["image_kl_mean"].rationale
    picked = select(rs, CATALOG, objective=IMAGE)
    assert picked.objective == IMAGE and "t" not in picked.front


def test_image_objective_ignores_trials_without_image_answers_and_caps_on_their_kl():
    rs = [
        _with_image(result("e", 8, 0.2), 0.2),
        _with_image(result("c", 12, 0.004), 0.25),
        _with_image(result("d", 12, 0.006), 0.01),
        result("t", 14, 0.001),  # text-only evaluation: no image KL, never feasible here
        _with_image(result("i", 14, 0.002), 0.002),
    ]
    sel = select(rs, CATALOG, max_kl=0.21, objective=IMAGE)
    assert "c" not in sel.front and "t" not in sel.front  # c: 0.25 image KL over the cap
    assert [x.plan_hash for x in sel.schemes] == ["i", "d", "e"]


def _seq(kl, image_kl):
    return {
        "kl": tuple(kl),
        "agree": (9.0,) * len(kl),
        "tokens": (10.0,) * len(kl),
        "image_kl": tuple(image_kl),
        "image_agree": (1.0,) * len(image_kl),
        "image_tokens": (2.0,) * len(image_kl),
    }


def test_controls_are_compared_on_the_objective_tokens():
    t = _table()
    s = _scheme(t, 14)
    p = control_plan(t, "inverse", s.achieved_bits)
    text = [1.0, 2.0, 1.5, 3.0, 1.0, 2.5]
    image = [0.5, 0.4, 0.6, 0.5, 0.3, 0.4]
    rows = [
        replace(result(s.plan_hash, 14, 0.1), per_sequence=_seq([0.5 * x for x in text], image)),
        replace(
            result(p.plan_hash, 14, 0.2),
            kind="control",
            control="inverse",
            per_sequence=_seq(text, [2 * x for x in image]),
        ),
    ]
    tables = {"kl_div|FP8_DEFAULT_CFG": t}
    on_all = compare_schemes([s], tables, measured_by_plan(rows), ["inverse"], 0)[0][0]
    on_image = compare_schemes([s], tables, measured_by_plan(rows), ["inverse"], 0, IMAGE)[0][0]
    assert on_all["kl_ratio"] == pytest.approx(0.5) and on_all["objective"] == "kl_mean"
    assert on_image["kl_ratio"] == pytest.approx(0.5) and on_image["objective"] == "image_kl_mean"
    assert on_image["kl_mean"] == pytest.approx(2 * sum(image) / (2.0 * len(image)))
    no_image = replace(
        rows[0], per_sequence={k: v for k, v in rows[0].per_sequence.items() if "image" not in k}
    )
    (got,) = compare_schemes(
        [s], tables, measured_by_plan([no_image, rows[1]]), ["inverse"], 0, IMAGE
    )
    assert got == [{"control": "inverse", "verdict": "not measured"}]


def test_two_sweeps_compared_name_by_name_on_one_evaluation_set():
    image = [0.5, 0.4, 0.6, 0.5, 0.3, 0.4, 0.5, 0.6]
    a = {
        "top25": replace(result("a1", 14, 0.1), per_sequence=_seq(image, image)),
        "full": replace(result("f", 8, 0.3), per_sequence=_seq(image, image)),
        "only_a": replace(result("x", 12, 0.2), per_sequence=_seq(image, image)),
    }
    b = {
        "top25": replace(result("b1", 14, 0.1), per_sequence=_seq(image, [0.6 * x for x in image])),
        "full": a["full"],
    }
    rows = {r["scheme"]: r for r in compare_named(a, b, IMAGE)}
    assert set(rows) == {"top25", "full"}
    top = rows["top25"]
    assert top["ratio"] == pytest.approx(0.6) and top["verdict"] == "better"
    assert top["ratio_ci"][1] < 1.0 and top["a"]["ci"][0] <= top["a"]["image_kl_mean"]
    full = rows["full"]  # the same trial on both sides: the same KL, a ratio of exactly 1
    assert full["same_modules"] and full["ratio"] == 1.0 and full["verdict"] == "equivalent"
    lines = table_lines(list(rows.values()), IMAGE)
    assert lines[1].startswith("top25") and "0.6 [" in lines[1] and "better" in lines[1]


def test_only_the_image_objective_needs_image_rows():
    """One decision and one sentence for the driver's check, select and compare_sweeps."""
    assert missing_rows(KL_MEAN, "--objective", False) is None
    assert missing_rows(IMAGE, "--objective", True) is None
    problem = missing_rows(IMAGE, "selection.objective", False)
    assert problem is not None
    assert problem.startswith(
        "selection.objective='image_kl_mean': the evaluation set has no image+text rows; "
        "use kl_mean, or sweep with data.image_source"
    )

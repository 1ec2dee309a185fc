"""Selection on the image answers' KL, re-selection on another objective, and two sweeps that
calibrate differently (text only vs image+text) compared name by name on one evaluation set."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from orchestrator.outputs.files import write_sweep_json
from tests.e2e.test_sweep import SMALL, run_module, sweep

pytestmark = pytest.mark.e2e

MULTIMODAL = [
    "--config",
    "search_spaces/demo_multimodal.yaml",
    *SMALL,
    "--set",
    "search.effective_bits=[8,12,14]",
    "--set",
    "data.eval_image_fraction=1.0",  # evaluation: image answers only, the same in both sweeps
    "--set",
    "data.eval_batches=2",
    "--set",
    "selection.objective=image_kl_mean",
]


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory):
    root = tmp_path_factory.mktemp("objectives")
    outs = {}
    for name, fraction in (("text", 0.0), ("image", 0.5)):
        out = root / name
        proc = sweep(out, *MULTIMODAL, "--set", f"data.image_fraction={fraction}")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        outs[name] = (out, proc.stdout)
    return outs


def test_the_front_and_the_picks_are_on_the_image_answers(two_sweeps):
    out, stdout = two_sweeps["text"]
    doc = yaml.safe_load((out / "schemes.yaml").read_text())
    assert doc["objective"] == "image_kl_mean"
    assert "KL on image answers [95% CI]" in stdout
    for s in doc["schemes"]:
        m = s["metrics"]
        assert m["image_kl_ci_low"] <= m["image_kl_mean"] <= m["image_kl_ci_high"]
        assert m["image_eval_sequences"] == 8 and "text_kl_mean" not in m  # no text rows
    sweep_json = json.loads((out / "sweep.json").read_text())
    other = json.loads((two_sweeps["image"][0] / "sweep.json").read_text())
    assert sweep_json["data_hashes"]["eval"] == other["data_hashes"]["eval"]
    assert sweep_json["data_hashes"]["calib"] != other["data_hashes"]["calib"]


def test_select_re_selects_on_another_objective(two_sweeps, tmp_path):
    copy = tmp_path / "image"
    shutil.copytree(two_sweeps["image"][0], copy, ignore=shutil.ignore_patterns(".owner"))
    proc = run_module("orchestrator.select", "--output", str(copy), "--objective", "kl_mean")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    doc = yaml.safe_load((copy / "schemes.yaml").read_text())
    assert doc["objective"] == "kl_mean" and "KL [95% CI]" in proc.stdout
    assert all(
        r.get("objective", "kl_mean") == "kl_mean" for s in doc["schemes"] for r in s["controls"]
    )


def test_two_sweeps_compare_name_by_name_paired(two_sweeps, tmp_path):
    a, b = (two_sweeps[k][0] for k in ("text", "image"))
    rows_file = tmp_path / "rows.json"
    proc = run_module(
        "orchestrator.compare_sweeps",
        "--output",
        str(a),
        "--against",
        str(b),
        "--objective",
        "image_kl_mean",
        "--json",
        str(rows_file),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads(rows_file.read_text())
    assert [r["scheme"] for r in rows] == [
        "fp8_autoquant_top25",
        "fp8_autoquant_top50",
        "fp8_autoquant_full",
    ]
    for r in rows:
        assert r["verdict"] in {"better", "worse", "equivalent", "inconclusive"}
        for side in (r["a"], r["b"]):
            assert side["ci"][0] <= side["image_kl_mean"] <= side["ci"][1]
        assert r["ratio_ci"][0] <= r["ratio"] <= r["ratio_ci"][1]
        if r["same_modules"]:  # other calibration data, other ranges: never the very same KL
            assert r["a"]["image_kl_mean"] != r["b"]["image_kl_mean"]
    assert "B / A [95% CI]" in proc.stdout


def test_sweeps_evaluated_on_different_sets_are_refused(two_sweeps, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(two_sweeps["image"][0], other, ignore=shutil.ignore_patterns(".owner"))
    meta = json.loads((other / "sweep.json").read_text())
    # as a sweep with other selection and report settings has
    meta["data_hashes"].update({"eval": "0" * 16, "report": "1" * 16})
    write_sweep_json(other, meta)  # sealed as that sweep would have sealed it
    proc = run_module(
        "orchestrator.compare_sweeps",
        "--output",
        str(two_sweeps["text"][0]),
        "--against",
        str(other),
    )
    assert proc.returncode == 2
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert "a paired comparison needs one set" in line

"""The demo sweep end to end: a real local Ray instance (pinned to 127.0.0.2) and a real sqlite
MLflow store; then resume, selection, export. One sweep per module keeps CI well inside its
limit."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def run_module(
    module: str, *args: str, timeout: int = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sweep(
    output: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return run_module("orchestrator.sweep", "--output", str(output), *extra, env=env)


# one scoring method, coverage 1.0, one strategy, no controls: the small sweeps of the fault and
# cluster tests
SMALL = [
    "--set",
    "scoring.methods=[kl_div]",
    "--set",
    "search.coverage=[1.0]",
    "--set",
    "search.strategies=[solve]",
    "--set",
    "controls.enabled=false",
]


def start_sweep(output: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The sweep in the background, in its own process group, once a first trial has reported."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.sweep", "--output", str(output), *extra],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    # count reported trials on disk: reading the MLflow store here could race its creation
    while not list(output.glob("ray_results/tune/*/checkpoint_*")):
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"no trial reported in time: {proc.communicate()[0][-3000:]}")
        time.sleep(0.3)
    return proc


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The README's demo command as a new user runs it: RAY_AUTH_MODE unset, a fresh home."""
    out = tmp_path_factory.mktemp("demo") / "out"
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", "--output", str(out)],
        cwd=ROOT,
        env={**env, "HOME": str(home), "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc, home


# what Ray, Tune, ModelOpt, transformers and torch print, seen on the console before 2026-12
NOISE = (
    "core_worker.cc",  # the _Dispatcher constructor-arguments error line
    "_Dispatcher",
    "Configuration for experiment",  # Tune's boxed table
    "TensorBoard",
    "View detailed results",
    "Checkpoint successfully created",
    "auto_quantize scores",  # ModelOpt's tqdm bars
    "Evaluating hparams",
    "Inserted",
    "UserWarning",  # gradient checkpointing, non-writable NumPy arrays
    "rope_type",  # transformers
    "repeated",  # Ray's deduplication
    "pid=",  # Ray's forwarded-line prefix
    "Traceback",  # the trial actors' SIGTERM at shutdown
    "SystemExit",
    "Started a local Ray instance",
    "Token authentication",
    "mlflow.store",
)


def _runs(out: Path):
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("demo-tiny")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("kind") in ("trial", "control")]
    return client, parents, children


def test_demo_sweep_outputs(demo):
    out, proc, _ = demo
    text = (out / "schemes.yaml").read_text()
    doc = yaml.safe_load(text)
    names = [s["name"] for s in doc["schemes"]]
    assert names == ["fp8_autoquant_top25", "fp8_autoquant_top50", "fp8_autoquant_full"]
    # every value where it stands (a control sharing a plan repeats its numbers): no anchors
    assert not re.search(r"[&*]id\d+", text)
    # the README's command on CPU measures the export's numbers: BF16, vLLM's fused scales
    assert doc["numerics"] == "bfloat16, vLLM fused scales"
    assert {s["numerics"] for s in doc["schemes"]} == {doc["numerics"]}
    assert f"numerics: {doc['numerics']}" in proc.stdout
    for s in doc["schemes"]:
        assert {"effective_bits", "coverage", "strategy", "mlflow_run_id", "rationale"} <= set(s)
        m = s["metrics"]
        assert m["kl_ci_low"] <= m["kl_mean"] <= m["kl_ci_high"]
        assert m["top1_ci_low"] <= m["top1_agreement"] <= m["top1_ci_high"] <= 1
        # the rationale gives the label's number (the report set's), the choosing set's apart
        assert f"on the report set KL {m['kl_mean']:.3g}," in s["rationale"]
        assert f"chosen on: KL {s['selection_metrics']['kl_mean']:.3g}," in s["rationale"]
        plan = yaml.safe_load((out / s["modules"]).read_text())
        assert len(plan["fp8_modules"]) == s["num_fp8_modules"] > 0
        assert s["knobs"]["num_score_steps"] == 4 and s["catalog_knobs"]["num_score_steps"] == 64
        assert "num_score_steps" in s["knobs_differ_from_catalog"]
        assert set(s["knobs"]["data_hashes"]) >= {"calib", "score", "eval"}
    share = {s["name"]: s["fp8_fraction"] for s in doc["schemes"]}
    assert 0.20 <= share["fp8_autoquant_top25"] <= 0.30
    assert 0.45 <= share["fp8_autoquant_top50"] <= 0.55
    assert share["fp8_autoquant_full"] == 1.0
    assert doc["knee"]["kl_mean"] > 0 and set(doc["score_kl_spearman"]) == {"kl_div", "gradient"}
    assert list(doc)[:2] == ["schemes", "knee"]  # the schemes open the file; the knee follows
    assert doc["knee"]["name"] == "knee" and (out / doc["knee"]["modules"]).exists()  # exportable
    within = doc["score_kl_spearman_within_share"]  # the demo's 3 strategies x 3 coverages
    assert set(within) == {"kl_div", "gradient"} and all(-1 <= v <= 1 for v in within.values())
    for f in ("trials.parquet", "scores.parquet", "pareto.png", "sensitivity.png", "sweep.json"):
        assert (out / f).stat().st_size > 0
    assert "ETA" in proc.stdout and "fp8_autoquant_top50" in proc.stdout
    assert "knee of the front" in proc.stdout and "Spearman" in proc.stdout
    # each worker's scoring reports its progress (Ray forwards the workers' log lines) and kl_div
    # ran with prefix reuse
    for setup in ("kl_div/FP8_DEFAULT_CFG", "gradient/FP8_DEFAULT_CFG"):
        assert f"scoring {setup}" in proc.stdout, setup
    assert "prefix reuse kl_div/FP8_DEFAULT_CFG" in proc.stdout


def test_the_console_holds_only_the_sweeps_own_lines_and_the_rest_is_in_logs(demo):
    out, proc, home = demo
    assert proc.stderr == ""
    for noise in NOISE:
        assert noise not in proc.stdout, noise
    assert "ETA" in proc.stdout and "trial(s) finished" in proc.stdout
    # fits a terminal: 120 columns, the MLflow page's URL included (its view key is short)
    lines = proc.stdout.splitlines()
    wide = [x for x in lines if len(x) > 120]
    assert not wide, wide
    assert not [x for x in lines if "{'" in x or "['" in x]  # no Python structures
    trials = [x for x in lines if re.search(r" \d+/\d+ (kl_div|gradient|control) ", x)]
    assert trials and all(re.search(r": FP8 \d+\.\d%", x) for x in trials if "FAILED" not in x)
    assert "(<1: scheme closer to BF16)" in proc.stdout
    assert proc.stdout.count("knobs unlike the catalog's recommendation") == 1
    assert "num_score_steps 4 (catalog: 64)" in proc.stdout
    assert f"  python -m orchestrator.export --output {out} \\\n      --scheme " in proc.stdout
    assert ", knee; --all exports" in proc.stdout  # the sentence may wrap after it
    assert re.fullmatch(r"done in (\d+ min )?\d+ s \(wall time, start-up included\)", lines[-1])
    assert "[worker 1] loaded" in proc.stdout  # a worker's own record
    assert f"logs of Ray, Tune, ModelOpt and transformers: {out / 'logs'}/" in proc.stdout
    assert "mlflow ui --backend-store-uri sqlite:///" in proc.stdout
    logs = out / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["driver.log", "worker-0.log", "worker-1.log"]
    driver = (logs / "driver.log").read_text()
    assert "Started a local Ray instance" in driver and "Checkpoint successfully created" in driver
    assert "ETA" in driver  # the sweep's own records too, in order with the rest
    for w in ("worker-0.log", "worker-1.log"):
        text = (logs / w).read_text()
        assert "Inserted" in text and "Calibrating" in text  # ModelOpt's prints and bars
    # the local Ray instance had its own token: nothing that turns token auth on later
    assert not (home / ".ray").exists()


def test_mlflow_opens_on_the_sweep_with_its_key_columns_and_description(demo):
    """What the UI reads: experiment tags (kind, description with the view's link, the saved
    runs-table view), the parent's description, run names."""
    import json

    out, proc, _ = demo
    client, parents, children = _runs(out)
    exp = client.get_experiment(parents[0].info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    key = f"sweep-{parents[0].info.run_id[:12]}"
    page = f"#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
    # MLflow 3.17 ignores the kind tag (its GenAI/Model training toggle decides): the
    # description the experiment page shows on top links the saved view, in the training view
    note = exp.tags["mlflow.note.content"]
    assert f"({page}&viewStateShareKey={key})" in note and "demo-tiny" in note
    assert note.startswith("Open the runs table: [the three schemes first")
    parent_note = parents[0].data.tags["mlflow.note.content"]
    assert "FP8 mixed-precision sweep `demo-tiny`" in parent_note and str(out) in parent_note
    saved = json.loads(exp.tags[f"mlflow.sharedViewState.{key}"])  # as the UI saves a view
    assert saved["name"] == "demo-tiny: schemes first" and saved["createdAt"] > 0
    view = json.loads(saved["state"])
    assert view["orderByKey"] == "attributes.start_time" and view["orderByAsc"] is False
    assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "kind"}]
    (chart,) = view["compareRunCharts"]
    assert (chart["type"], chart["xaxis"]["key"], chart["yaxis"]["key"]) == (
        "SCATTER",
        "fp8_share_pct",
        "kl_x1e6",
    )
    have = {
        *(f"metrics.`{k}`" for c in children for k in c.data.metrics),
        *(f"params.`{k}`" for c in children for k in c.data.params),
        *(f"tags.`{k}`" for c in children for k in c.data.tags),
    }
    assert set(view["selectedColumns"]) <= have  # every column shows a value the runs have
    for col in ("fp8_share_pct", "kl_x1e6", "top1_pct", "eff_bits", "method", "coverage"):
        assert any(col in c for c in view["selectedColumns"]), col
    assert f"viewStateShareKey={key}" in proc.stdout
    names = {c.info.run_name for c in children}
    point = re.compile(r"(kl_div|gradient)-b[\d.]+-c[\d.]+(-[\w:]+)?|control-[\w:]+-b[\d.]+")
    assert all(point.fullmatch(n.split(" (")[-1].rstrip(")")) for n in names), names
    schemes = {
        c.data.tags["scheme_name"]: c.info.run_name
        for c in children
        if "scheme_name" in c.data.tags
    }
    assert all(name.startswith(f"{s} (") for s, name in schemes.items()) and len(schemes) == 3
    # readable numbers beside the exact ones, and each run in its kind's colour
    for c in children:
        m = c.data.metrics
        assert m["fp8_share_pct"] == round(m["fp8_fraction"] * 100, 1)
        assert m["kl_x1e6"] == round(m["kl_mean"] * 1e6, 1)
        assert m["eff_bits"] == round(m["achieved_bits"], 2)
        colour = c.data.tags["mlflow.runColor"]
        assert colour == ("#7f7f7f" if c.data.tags["kind"] == "control" else "#1f77b4")


def test_mlflow_lists_the_scheme_runs_first_with_their_reasons(demo):
    """One run per published scheme, first in MLflow's default order (newest first), with the
    rationale and the verdict table as its description, its numbers rounded for reading, and
    pareto.png, the plan and the verdicts as artifacts."""
    out, *_ = demo
    client, parents, children = _runs(out)
    doc = yaml.safe_load((out / "schemes.yaml").read_text())
    runs = client.search_runs([parents[0].info.experiment_id], max_results=1000)  # default order
    first = runs[:3]
    assert [r.info.run_name for r in first] == [s["name"] for s in doc["schemes"]]
    assert all(r.data.tags["kind"] == "scheme" for r in first)
    assert all(r.data.tags["kind"] != "scheme" for r in runs[3:])
    by_id = {c.info.run_id: c for c in children}
    for run, s in zip(first, doc["schemes"], strict=True):
        tags, m = run.data.tags, run.data.metrics
        assert "mlflow.parentRunId" not in tags  # outside the parent's fold
        assert tags["sweep_run_id"] == parents[0].info.run_id
        assert tags["source_run_id"] == s["mlflow_run_id"] in by_id
        assert tags["mlflow.runColor"] == "#d62728"
        note = tags["mlflow.note.content"]
        assert note.startswith(s["rationale"])
        assert f"runs/{s['mlflow_run_id']})" in note
        assert "| control | FP8 share | KL ratio" in note and "| random |" in note
        assert tags["verdict.random"] == s["verdicts"]["random"]
        # the selection set's numbers (those of the trials in the chart) and the published set's
        assert m["kl_mean"] == s["selection_metrics"]["kl_mean"]
        assert m["kl_x1e6"] == round(s["selection_metrics"]["kl_mean"] * 1e6, 1)
        assert m["report_kl_x1e6"] == round(s["metrics"]["kl_mean"] * 1e6, 1)
        assert m["fp8_share_pct"] == round(s["fp8_fraction"] * 100, 1)
        for row in s["controls"]:
            if "kl_ratio" in row:
                assert m[f"kl_ratio.{row['control']}"] == row["kl_ratio"]
        assert run.data.params["plan_hash"] == s["plan_hash"]
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert arts == {"pareto.png", Path(s["modules"]).name, "verdicts.md"}
        table = client.download_artifacts(run.info.run_id, "verdicts.md", str(out / "tmp-md"))
        assert Path(table).read_text() in note
    # the experiment's description (the first page a click from home shows) lists the schemes,
    # each linking its run, with its published numbers and verdicts, and links the chart
    exp = parents[0].info.experiment_id
    about = client.get_experiment(exp).tags["mlflow.note.content"]
    assert "&compareRunsMode=CHART)" in about.split("\n")[0]
    for run, s in zip(first, doc["schemes"], strict=True):
        line = next(x for x in about.split("\n") if x.startswith(f"- [{s['name']}]"))
        assert f"(#/experiments/{exp}/runs/{run.info.run_id})" in line
        assert f"{s['fp8_fraction'] * 100:.1f}% FP8" in line and "on the report set" in line
        assert f"vs ModelOpt's own plan: {s['verdicts']['modelopt']}" in line


def test_mlflow_click_path_in_chromium(demo, tmp_path):
    """From MLflow's home page to the three schemes, the chart and a scheme's reasons in a real
    browser (scripts/mlflow_screenshots.py): the pages show what the store holds."""
    import json
    import shutil

    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("no chromium on PATH (apt-get install -y chromium)")
    out, *_ = demo
    doc = yaml.safe_load((out / "schemes.yaml").read_text())
    names = [s["name"] for s in doc["schemes"]]
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/mlflow_screenshots.py",
            "--output",
            str(out),
            "--shots",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    seen = json.loads(proc.stdout)
    assert seen["home_link"].startswith("#/experiments/")  # click 1, from home
    assert "viewStateShareKey=sweep-" in seen["view_link"]  # click 2, on the experiment page
    assert seen["chart_link"].endswith("&compareRunsMode=CHART")  # or the chart
    assert all(f"{n}: " in seen["experiment_text"] for n in names)  # the schemes, unfolded
    assert "workflowType=machine_learning" in seen["runs_page"]
    assert seen["runs_in_order"][:3] == names  # the table lists the schemes first
    assert all(n in seen["table_text"] for n in ("fp8_share_pct", "kl_x1e6"))
    assert "kl_x1e6" in seen["chart_text"] and "fp8_share_pct" in seen["chart_text"]
    assert doc["schemes"][0]["rationale"][:60] in seen["scheme_text"]
    assert all(a in seen["artifacts_text"] for a in ("pareto.png", "verdicts.md"))
    shots = {p.name for p in tmp_path.glob("*.png") if p.stat().st_size > 10_000}
    assert shots == {
        "mlflow-home.png",
        "mlflow-experiment.png",
        "mlflow-runs.png",
        "mlflow-chart.png",
        "mlflow-scheme.png",
        "mlflow-scheme-artifacts.png",
    }


CONTROLS = {"modelopt", "random", "inverse", "ends_fixed:1", "attn_bf16"}
VERDICTS = ("better", "equivalent", "inconclusive", "worse")
# the demo's groups, as shares of its eligible weights: o 0.93%, q/k/v and down 1.85%, gate/up
# 3.70%; a control lands within half of the smallest group it may take (attention BF16: down)
HALF_GROUP = {"attn_bf16": 0.00926}


def test_every_scheme_is_compared_with_every_control_at_its_own_share(demo):
    """Controls measured at each published scheme's share (within half a group), compared on the
    same tokens; the 20 random orders as one distribution."""
    out, proc, _ = demo
    doc = yaml.safe_load((out / "schemes.yaml").read_text())
    rule = doc["verdict_rule"]
    assert (rule["margin"], rule["correction"], rule["level"]) == (0.05, "holm", 0.95)
    assert f"Holm-corrected over the {rule['comparisons']} comparisons" in proc.stdout
    assert "over 20 seeds and the sequences" in proc.stdout
    for s in doc["schemes"]:
        rows = {r["control"]: r for r in s["controls"]}
        assert set(rows) == CONTROLS and s["controls"][0]["control"] == "modelopt"
        for spec, r in rows.items():
            if s["name"] == "fp8_autoquant_full":  # every control that reaches 100% is the scheme
                assert r["verdict"] in ("same plan", "cannot reach this share"), (spec, r)
                continue
            assert r["verdict"] in VERDICTS, (spec, r)
            lo, hi = r["kl_ratio_ci"]
            assert lo <= r["kl_ratio"] <= hi
            assert r["p"] <= r["p_holm"] <= 1
            for x in r.get("by_seed", [r]):
                if spec != "modelopt":  # ModelOpt's own solve holds the share it returns
                    assert abs(x["fp8_fraction_diff"]) <= HALF_GROUP.get(spec, 0.00463), (spec, x)
                assert x["fp8_fraction"] == pytest.approx(
                    s["fp8_fraction"] + x["fp8_fraction_diff"]
                )
        rnd = rows["random"]
        if s["name"] != "fp8_autoquant_full":
            assert rnd["seeds"] == len(rnd["by_seed"]) == 20
            spread = rnd["seed_kl_ratio"]
            assert spread["min"] <= spread["median"] <= spread["max"]
            assert 1 <= rnd["scheme_rank"] <= 21


def test_modelopt_control_is_modelopts_own_solve_on_the_sweeps_raw_scores(demo):
    """ModelOpt's own AutoQuantize re-solve, called here on the search state the sweep saved
    with its scores (raw, not rescaled) for each scheme's budget, enables exactly the modules of
    the ``modelopt`` control's plan, which select re-derives from the files without ModelOpt and
    the sweep measured (or found to be the scheme's or another control's plan, and said so)."""
    import warnings

    import modelopt.torch.quantization as mtq

    from orchestrator.core.planning import plan_for
    from orchestrator.core.records import NamedScheme, Point, plan_hash, table_key
    from orchestrator.model.scoring import cache_path, state_from_json
    from orchestrator.outputs.summary import control_lines
    from orchestrator.outputs.tables import load_results, read_score_tables, read_search_state

    out, proc, _ = demo
    doc = yaml.safe_load((out / "schemes.yaml").read_text())
    tables = read_score_tables(out)
    measured = {r.plan_hash for r in load_results(out) if r.status == "FINISHED"}
    for s in doc["schemes"]:
        table = tables[table_key(s["method"], s["fp8_recipe"])]
        state = read_search_state(cache_path(out / "score_cache", table.key))
        # ModelOpt's bits are over its cost denominator, the project's over the eligible weights:
        # the sweep keeps everything else out of the cost, so here they are one scale
        assert state["cost_denominator"] == table.eligible_params
        row = s["controls"][0]
        assert row["control"] == "modelopt"
        assert row["effective_bits"] == pytest.approx(s["achieved_effective_bits"], abs=1e-6)
        assert row["modelopt_effective_bits"] == pytest.approx(row["effective_bits"], abs=1e-6)
        bits = row["modelopt_effective_bits"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg = mtq.get_auto_quantize_config(state_from_json(state), {"effective_bits": bits})
        theirs = {
            e["quantizer_name"].removesuffix(".weight_quantizer")
            for e in cfg["quant_cfg"]
            if e.get("enable", True) and e["quantizer_name"].endswith(".weight_quantizer")
        }
        assert theirs
        scheme = NamedScheme.from_dict({**s, "achieved_bits": s["achieved_effective_bits"]})
        plan = plan_for(Point.control_at(scheme, "modelopt"), tables)
        assert set(plan.fp8_modules) == theirs, s["name"]
        assert row["plan_hash"] == plan.plan_hash == plan_hash(sorted(theirs), s["fp8_recipe"])
        if row["verdict"] == "same plan":
            assert plan.plan_hash == s["plan_hash"]
        else:
            assert plan.plan_hash in measured and row["verdict"] in VERDICTS
        for other in row.get("same_plan_as", []):  # the same plan, one comparison
            twin = next(r for r in s["controls"] if r["control"] == other)
            assert twin["plan_hash"] == row["plan_hash"] and twin["verdict"] == row["verdict"]
            assert "modelopt" in twin["same_plan_as"]
            assert twin.get("kl_ratio") == row.get("kl_ratio")
        # the console says what ModelOpt was asked, and which control's plan it is
        assert all(line in proc.stdout for line in control_lines(row)), row
    assert "ModelOpt's own solve for fp8_autoquant_top25" in proc.stdout


def test_published_schemes_beat_random_and_lose_to_no_control(demo):
    """The product's claim, with its uncertainty: on the trained reference model top25 and top50
    are better than random choice (the 95% interval of the KL ratio over the seeds and sequences
    lies below 1/1.05, Holm-corrected), and no published scheme is worse than any control at its
    share."""
    out, *_ = demo
    doc = yaml.safe_load((out / "schemes.yaml").read_text())
    for s in doc["schemes"]:
        if s["name"] != "fp8_autoquant_full":
            assert s["verdicts"]["random"] == "better", (s["name"], s["controls"])
            assert s["verdicts"]["inverse"] == "better", s["name"]
        assert "worse" not in s["verdicts"].values(), (s["name"], s["verdicts"])


def test_one_finished_child_per_distinct_plan_nested_under_the_parent(demo):
    import pyarrow.parquet as pq

    out, *_ = demo
    client, parents, children = _runs(out)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    rows = pq.read_table(out / "trials.parquet").to_pylist()
    assert {r["numerics"] for r in rows} == {"bfloat16, vLLM fused scales"}  # each row, as run
    trials = [r["plan_hash"] for r in rows if r["kind"] == "trial"]
    assert len(set(trials)) == len(trials)  # the grid was de-duplicated by plan
    assert len(children) == len({r["plan_hash"] for r in rows})  # one run per distinct plan
    controls = [r for r in rows if r["kind"] == "control"]
    assert {r["control"].split(":")[0] for r in controls} <= {
        "modelopt",
        "random",
        "inverse",
        "ends_fixed",
        "attn_bf16",
    }
    assert {r["control"] for r in controls} & {"random:0", "inverse"}
    # a strategy whose plans all equal another's is measured once, under the first
    strategies = {r["strategy"] for r in rows if r["kind"] == "trial"}
    assert "solve" in strategies and strategies <= {"solve", "ends_bf16:1", "mlp_only"}
    assert all(c.info.status == "FINISHED" for c in children)
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.data.tags["kind"] for c in children} == {"trial", "control"}
    assert {c.data.tags["numerics"] for c in children} == {"bfloat16, vLLM fused scales"}
    for key in (
        "kl_mean",
        "top1_agreement",
        "nll_delta",
        "achieved_bits",
        "fp8_fraction",
        "lm_bytes",
        "model_bytes",
        "trial_seconds",
    ):
        assert all(key in c.data.metrics for c in children), key
    tags = parent.data.tags
    assert {"config_hash", "git_commit", "data_hash.eval", "version.nvidia-modelopt"} <= set(tags)
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"schemes.yaml", "trials.parquet", "sensitivity.png", "pareto.png"} <= arts
    assert {a.path for a in client.list_artifacts(children[0].info.run_id)} == {
        "plan.json",
        "per_sequence.json",
    }
    named = {c.data.tags.get("scheme_name"): c for c in children}
    assert set(named) - {None} == {
        "fp8_autoquant_top25",
        "fp8_autoquant_top50",
        "fp8_autoquant_full",
    }
    top50 = named["fp8_autoquant_top50"]
    assert top50.data.tags["verdict.random"] == "better"
    lo, hi = (
        top50.data.metrics["kl_ratio_ci_low.random"],
        top50.data.metrics["kl_ratio_ci_high.random"],
    )
    assert lo <= top50.data.metrics["kl_ratio.random"] <= hi < 1
    assert "verdict.modelopt" in top50.data.tags
    assert "modelopt_effective_bits.modelopt" in top50.data.metrics
    # the run that measured ModelOpt's own plan for each scheme says so
    solved = {
        c.data.tags["modelopt_solve_for"] for c in children if "modelopt_solve_for" in c.data.tags
    }
    assert {n for v in solved for n in v.split(",")} == set(named) - {None}
    assert "score_kl_spearman.kl_div" in parent.data.metrics


def test_rerun_on_the_same_output_resumes_without_new_trials(demo):
    out, *_ = demo
    _, _, before = _runs(out)
    schemes_before = (out / "schemes.yaml").read_text()
    trial_dirs = sorted(p.name for p in (out / "ray_results").glob("tune*/trainable_*"))
    proc = sweep(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming Tune experiment" in proc.stdout
    assert "scores: 2 cached, 0 computed" in proc.stdout
    _, parents, after = _runs(out)
    assert len(parents) == 1
    assert sorted(r.info.run_id for r in after) == sorted(r.info.run_id for r in before)
    assert sorted(p.name for p in (out / "ray_results").glob("tune*/trainable_*")) == trial_dirs
    assert (out / "schemes.yaml").read_text() == schemes_before


def test_select_reruns_selection_from_the_files(demo):
    out, *_ = demo
    before = (out / "schemes.yaml").read_text()
    proc = run_module("orchestrator.select", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "schemes.yaml").read_text() == before
    proc = run_module("orchestrator.select", "--output", str(out), "--max-kl", "1e-9")
    assert proc.returncode == 3 and "error:" in proc.stderr
    assert (out / "schemes.yaml").read_text() == before  # a failed re-selection rewrites nothing


def _numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?", cell)]


def _close(cell: str, *values: float, digits: int = 3, points: bool = False) -> bool:
    """The cell's first numbers are ``values`` as printed: to ``digits`` significant digits, or
    (``points``) as percentages to one decimal."""
    got = _numbers(cell)[: len(values)]
    return len(got) == len(values) and all(
        math.isclose(g, 100 * v, abs_tol=0.051)
        if points
        else math.isclose(g, v, rel_tol=0.51 * 10 ** (1 - digits))
        for g, v in zip(got, values, strict=True)
    )


def test_schemes_doc_tables_carry_the_sweeps_numbers_and_check_names_a_stale_table(demo, tmp_path):
    """scripts/schemes_doc.py, which writes docs/SCHEMES.md's tables, on the demo's output: every
    number in the tables is schemes.yaml's, the prose around the markers stays, ``--check`` passes
    on the fresh doc and, after one number is edited, exits 1 naming that table alone."""
    out, *_ = demo
    prose = "# Doc\n\nProse with 58 % in it.\n"
    markers = "".join(
        f"\n<!-- generated: {n} -->\n<!-- end generated -->\n"
        for n in ("sweep", "schemes", "controls", "front")
    )
    doc = tmp_path / "SCHEMES.md"
    doc.write_text(prose + markers + "\nclosing prose\n")
    args = ("--output", str(out), "--doc", str(doc))
    proc = run_module("scripts.schemes_doc", *args, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = doc.read_text()
    assert text.startswith(prose) and text.endswith("\nclosing prose\n")
    sweep_doc = yaml.safe_load((out / "schemes.yaml").read_text())
    heads = [x for x in text.splitlines() if x.startswith("*Generated by")]
    assert len(heads) == 4
    for head in heads:  # each table names the sweep's config hash and its numerics
        assert sweep_doc["config_hash"] in head and f"numerics: {sweep_doc['numerics']};" in head
    lines = text.splitlines()
    first = sweep_doc["schemes"][0]
    size = f"| evaluation | {first['report_sequences']} sequences, "
    assert f"{size}{int(first['metrics']['eval_tokens']):,} scored tokens |" in lines
    for s in sweep_doc["schemes"]:
        m = s["metrics"]
        row = next(x for x in lines if x.startswith(f"| `{s['name']}` |")).split(" | ")
        assert _close(row[1], s["fp8_fraction"], points=True)
        assert _close(row[2], s["achieved_effective_bits"])
        assert _close(row[4], m["kl_mean"], m["kl_ci_low"], m["kl_ci_high"])
        assert _close(row[5], m["top1_agreement"], m["top1_ci_low"], m["top1_ci_high"], digits=4)
    blocks = text.split("\n**")[1:]
    assert [b.split("**")[0] for b in blocks] == [s["name"] for s in sweep_doc["schemes"]]
    for block, s in zip(blocks, sweep_doc["schemes"], strict=True):
        assert block.count("(published)") == 1
        rows = [x for x in block.splitlines() if x.startswith("| control ")]
        ordered = sorted(s["controls"], key=lambda c: c["control"] != "modelopt")
        assert [x.split(" | ")[0] for x in rows] == [f"| control {c['control']}" for c in ordered]
        assert rows[0].startswith("| control modelopt |")  # ModelOpt's own plan comes first
        for row, c in zip(rows, ordered, strict=True):
            cells = row.strip("|").split(" | ")
            assert cells[5].strip().startswith(c["verdict"])
            if "seeds" in c and "fp8_fraction_range" in c:
                assert cells[1].strip().startswith(f"{c['seeds']} seeds at")
            elif "fp8_fraction" in c:
                assert _close(cells[1], c["fp8_fraction"], c["fp8_fraction_diff"], points=True)
            if "kl_ratio" in c:
                assert _close(cells[2], c["kl_mean"], *c["kl_ci"])
                assert _close(cells[4], c["kl_ratio"], *c["kl_ratio_ci"])
    knee = sweep_doc["knee"]
    assert _close(
        next(x for x in lines if x.startswith("| knee of the front |")).replace("FP8", ""),
        100 * knee["fp8_fraction"],
        knee["achieved_effective_bits"],
        knee["kl_mean"],
    )

    proc = run_module("scripts.schemes_doc", *args, "--check", timeout=120)
    assert proc.returncode == 0, proc.stderr
    # one number edited by hand: --check names its table, and only it, and rewrites nothing
    ratio = next(c for c in sweep_doc["schemes"][0]["controls"] if "kl_ratio" in c)["kl_ratio"]
    edited = text.replace(f"| {ratio:.3g} [", f"| {1.5 * ratio:.3g} [", 1)
    assert edited != text
    doc.write_text(edited)
    proc = run_module("scripts.schemes_doc", *args, "--check", timeout=120)
    assert proc.returncode == 1
    assert "stale generated tables: controls (" in proc.stderr
    assert doc.read_text() == edited
    assert run_module("scripts.schemes_doc", *args, timeout=120).returncode == 0
    assert doc.read_text() == text


def test_export_writes_a_checkpoint_that_reloads_with_the_same_logits(demo, tmp_path):
    from orchestrator.core.config import SweepConfig, read_yaml
    from orchestrator.export.checkpoint import export_scheme, load_exported
    from orchestrator.model.datasets import build_data
    from orchestrator.model.loading import load_model
    from orchestrator.model.quantize import quantize_plan

    out, *_ = demo
    dest = export_scheme(out, "fp8_autoquant_top50", tmp_path / "ckpt", device="cpu")
    quant = yaml.safe_load((dest / "hf_quant_config.json").read_text())["quantization"]
    assert quant["quant_algo"] == "FP8"
    assert any("visual" in m for m in quant["exclude_modules"])
    assert "lm_head" in quant["exclude_modules"]
    cfg = SweepConfig.model_validate(read_yaml(out / "config.yaml"))
    plan = yaml.safe_load((dest / "scheme.json").read_text())
    model, _ = load_model(cfg.model.source, "cpu", "bfloat16")
    data = build_data(cfg)
    model = quantize_plan(
        model,
        plan["fp8_recipe"],
        plan["fp8_modules"],
        data.calib,
        "cpu",
        fused_scales=cfg.model.fused_scales,  # the trials' numerics, which the export writes
    )
    reloaded = load_exported(dest)
    batch = torch.as_tensor(data.eval.tokens[0])
    with torch.no_grad():
        a = model(input_ids=batch).logits.float()
        b = reloaded(input_ids=batch).logits.float()
    # both run in bf16; the checkpoint's FP8 codes and scales give the same quantized weights, so
    # what is left is bf16 rounding: tiny next to the logits' spread, and the same argmax
    diff = (a - b).abs()
    assert diff.mean() < 0.01 * a.std(), (diff.mean(), a.std())
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.98
    dtypes = {}
    from safetensors import safe_open

    with safe_open(str(next(dest.glob("*.safetensors"))), "pt") as f:
        for k in f.keys():
            dtypes[k] = f.get_tensor(k).dtype
    fp8 = {k for k, v in dtypes.items() if v == torch.float8_e4m3fn}
    assert len(fp8) == len(plan["fp8_modules"])
    assert all(v in (torch.bfloat16, torch.float8_e4m3fn, torch.float32) for v in dtypes.values())
    client, _, _ = _runs(out)
    scheme = next(
        s
        for s in yaml.safe_load((out / "schemes.yaml").read_text())["schemes"]
        if s["name"] == "fp8_autoquant_top50"
    )
    assert client.get_run(scheme["mlflow_run_id"]).data.tags["export.modelopt"] == str(dest)


def test_export_all_as_compressed_tensors_checks_and_tags_each_scheme(demo, tmp_path):
    """`--all`: three folders that pass `--check`, each traceable to its sweep and MLflow run."""
    import json

    from orchestrator.export.__main__ import main

    out, *_ = demo
    dest = tmp_path / "ct"
    args = ["--output", str(out), "--all", "--format", "compressed-tensors", "--dest", str(dest)]
    proc = run_module("orchestrator.export", *args)  # as a user runs it: its lines on the console
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client, parents, _ = _runs(out)
    schemes = yaml.safe_load((out / "schemes.yaml").read_text())["schemes"]
    for i, s in enumerate(schemes, 1):
        assert f"exporting {s['name']} as compressed-tensors ({i} of 3)" in proc.stdout
        assert f"exported {s['name']} as compressed-tensors (" in proc.stdout
        assert f"FP8 modules) to {dest.resolve() / s['name']}" in proc.stdout
    # the console holds the export's own lines only: no load report, progress bar or ModelOpt print
    console = proc.stdout + proc.stderr
    assert not re.search(r"LOAD REPORT|Loading weights|it/s\]|Inserted \d+ quantizers", console)
    assert all(re.match(r"\d\d:\d\d:\d\d ", line) for line in proc.stdout.splitlines())
    check = run_module("orchestrator.export", "--check", str(dest / schemes[0]["name"]))
    assert check.returncode == 0 and "passes the export check" in check.stdout, check.stderr
    for s in schemes:
        folder = dest / s["name"]
        assert main(["--check", str(folder)]) == 0
        info = json.loads((folder / "scheme.json").read_text())["export"]
        assert info["mlflow_run_id"] == s["mlflow_run_id"] and info["plan_hash"] == s["plan_hash"]
        assert info["parent_run_id"] == parents[0].info.run_id
        tags = client.get_run(s["mlflow_run_id"]).data.tags
        assert tags["export.compressed-tensors"] == str(folder.resolve())

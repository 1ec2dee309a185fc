"""The sha256 record in sweep.json: a file cut short or edited since it was written is found."""

from __future__ import annotations

import json

import pytest
import yaml

from orchestrator.core.config import ConfigError
from orchestrator.outputs import integrity
from orchestrator.outputs.files import read_sweep_json, write_sweep_json, write_text

pytestmark = pytest.mark.unit


@pytest.fixture
def folder(tmp_path):
    write_sweep_json(tmp_path, {"name": "s", "config_hash": "h"})
    write_text(tmp_path / "schemes.yaml", "schemes: [a, b, c]\n")
    write_text(tmp_path / "plans" / "p.json", '{"fp8_modules": ["x", "y"]}\n')
    integrity.record(tmp_path, integrity.published([{"modules": "plans/p.json"}]))
    return tmp_path


def test_files_as_written_pass_and_a_file_cut_at_a_line_is_named(folder):
    sweep = read_sweep_json(folder)
    assert set(sweep[integrity.FILES]) == {"schemes.yaml", "plans/p.json"}  # no trials.parquet
    assert integrity.changed(folder, sweep) == []
    (folder / "schemes.yaml").write_text("schemes: [a]\n")  # still valid YAML: read silently
    assert integrity.changed(folder, sweep) == ["schemes.yaml"]
    with pytest.raises(ConfigError, match=r"--against .*: schemes\.yaml changed since the sweep"):
        integrity.refuse_changed(folder, sweep, ["schemes.yaml", "plans/p.json"], "--against")
    integrity.refuse_changed(folder, sweep, ["plans/p.json"])  # the plan is whole
    integrity.record(folder, ["schemes.yaml"])  # rewritten by its owner: recorded anew
    assert integrity.changed(folder, read_sweep_json(folder)) == []


def test_a_removed_file_loses_its_record_and_an_older_record_has_none(folder):
    (folder / "schemes.yaml").unlink()  # a sweep whose selection failed removes it
    integrity.record(folder, ["schemes.yaml"])
    assert set(read_sweep_json(folder)[integrity.FILES]) == {"plans/p.json"}
    older = {"name": "s"}  # a sweep from before the record: nothing to check against
    assert integrity.changed(folder, older) == []


def test_sweep_json_edited_by_hand_is_refused_even_as_valid_json(folder):
    doc = json.loads((folder / "sweep.json").read_text())
    doc["config_hash"] = "other"
    (folder / "sweep.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="sweep.json does not match its own sha256"):
        read_sweep_json(folder)
    del doc["sha256"]  # as sweeps before the seal wrote it: read as before
    (folder / "sweep.json").write_text(json.dumps(doc))
    assert read_sweep_json(folder)["config_hash"] == "other"


def test_a_path_read_from_a_file_may_not_lead_outside_the_folder(folder):
    assert integrity.inside(folder, "plans/p.json", "plan") == (folder / "plans/p.json").resolve()
    with pytest.raises(ConfigError, match=r"plan '\.\./elsewhere\.json' lies outside the folder"):
        integrity.inside(folder, "../elsewhere.json", "plan")


def test_the_knees_plan_is_recorded_and_a_changed_one_is_refused_by_export(tmp_path):
    """The knee is exportable (``export --scheme knee``), so its plan is hashed like the schemes'
    plans: here the knee (75% FP8) is no scheme's plan, and a cut one is refused with the line
    a scheme's plan gets."""
    from orchestrator.core.config import load_catalog, load_config
    from orchestrator.core.records import table_key
    from orchestrator.export.checkpoint import find_scheme
    from orchestrator.outputs.publish import SweepFacts, finalize

    from .helpers import result, table

    # the names bind 8, 12 and 14 bits (100%, 50%, 25% FP8); the front bends at 10 bits
    curve = {15: 1e-5, 14: 2e-5, 13: 3e-5, 12: 5e-5, 10: 4e-4, 8: 2e-3}
    trials = [result(f"t{bits}", bits, kl) for bits, kl in curve.items()]
    key = table_key("kl_div", "FP8_DEFAULT_CFG")
    tables = {key: table({(0, "down"): 9.0, (1, "qkv"): 5.0}, method="kl_div")}
    write_sweep_json(tmp_path, {"name": "s", "config_hash": "h"})
    cfg = load_config(None, [])
    done = finalize(
        tmp_path, trials, tables, load_catalog(), None, {"sweep": "s"}, SweepFacts.of(cfg, {})
    )
    assert done.error is None and done.knee is not None
    knee = str(done.knee["modules"])
    assert knee not in {e["modules"] for e in done.entries}  # no scheme's plan records it
    integrity.record(tmp_path, integrity.published(done.entries, done.knee))
    assert knee in read_sweep_json(tmp_path)[integrity.FILES]
    assert find_scheme(tmp_path, "knee")["modules"] == knee  # as written: exportable
    plan = tmp_path / knee
    plan.write_text(plan.read_text() + "\n")  # edited, still valid JSON
    with pytest.raises(ConfigError) as e:
        find_scheme(tmp_path, "knee")
    assert str(e.value).startswith(f"--output {tmp_path}: {knee} changed since the sweep wrote it")


def test_a_knee_on_a_schemes_plan_is_recorded_once_and_named_once_when_changed(tmp_path):
    from orchestrator.export.checkpoint import find_scheme

    scheme = {"name": "top50", "plan_hash": "p", "modules": "plans/p.json"}
    knee = {"name": "knee", "plan_hash": "p", "modules": "plans/p.json"}
    write_sweep_json(tmp_path, {"name": "s", "config_hash": "h"})
    write_text(tmp_path / "schemes.yaml", yaml.safe_dump({"schemes": [scheme], "knee": knee}))
    write_text(tmp_path / "plans" / "p.json", '{"fp8_modules": ["x"]}\n')
    paths = integrity.published([scheme], knee)
    assert paths == ["trials.parquet", "schemes.yaml", "plans/p.json"]
    integrity.record(tmp_path, paths)
    (tmp_path / "plans" / "p.json").write_text('{"fp8_modules": []}\n')
    for name in ("top50", "knee"):
        with pytest.raises(ConfigError) as e:
            find_scheme(tmp_path, name)
        assert str(e.value).startswith(f"--output {tmp_path}: plans/p.json changed since")

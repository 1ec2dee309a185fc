"""The sha256 record in sweep.json: a file cut short or edited since it was written is found."""

from __future__ import annotations

import json

import pytest

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

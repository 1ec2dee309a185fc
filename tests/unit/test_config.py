from pathlib import Path

import pytest
import yaml

from orchestrator.core.config import (
    ConfigError,
    load_catalog,
    load_config,
    parse_overrides,
    read_written_config,
)

pytestmark = pytest.mark.unit


def _cfg(tmp_path: Path, body: dict) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(body))
    return p


BASE = {"search": {"effective_bits": [12], "coverage": [1.0]}}


def test_overrides_win_and_parse_yaml_values(tmp_path):
    cfg = load_config(_cfg(tmp_path, BASE), ["search.coverage=[0.5, 1.0]", "seed=7", "name=x1"])
    assert cfg.search.coverage == [0.5, 1.0] and cfg.seed == 7 and cfg.name == "x1"


@pytest.mark.parametrize(
    "override,needle",
    [
        ("search.effective_bits=[17]", "search.effective_bits=[17]: value 17.0 is outside [8, 16]"),
        ("search.effective_bits=[7.5]", "outside [8, 16]"),
        ("search.coverage=[0]", "search.coverage=[0]: value 0.0 is outside (0, 1]"),
        ("search.coverage=[1.5]", "outside (0, 1]"),
        ("search.effective_bits=[]", "search.effective_bits=[]: List should have at least 1 item"),
        ("search.coverage=[]", "at least 1 item"),
        ("data.seq_len=abc", "--set data.seq_len=abc: Input should be a valid integer"),
        (
            "scoring.methods=[hessian]",
            "scoring.methods.0='hessian': Input should be 'gradient' or 'kl_div'",
        ),
        ("search.max_failures=-1", "greater than or equal to 0"),
        ("searh.coverage=[1]", "unknown key 'searh'"),
        ("search.colour=blue", "unknown key 'search.colour'"),
        ("scoring.num_score_steps=9", "scoring.num_score_steps=9 exceeds data.score_batches=2"),
        ("scoring.shards=0", "scoring.shards=0: is 0; use a positive integer or auto"),
        ("scoring.shards=two", "scoring.shards.literal['auto']='two': Input should be 'auto'"),
        ("scoring.shards=3", "scoring.shards=3 exceeds scoring.num_score_steps=2"),
        (
            "controls.margin=-0.1",
            "controls.margin=-0.1: Input should be greater than or equal to 0",
        ),
        ("controls.margin=5", "controls.margin=5: Input should be less than or equal to 1"),
        ("controls.random_seeds=500", "controls.random_seeds=500: Input should be less than or"),
    ],
)
def test_bad_values_name_field_value_and_what_is_allowed(tmp_path, override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(_cfg(tmp_path, BASE), [override])
    msg = str(e.value)
    assert needle in msg
    assert "\n" not in msg
    assert "<root>" not in msg and "'search': {" not in msg  # never the whole document


@pytest.mark.parametrize(
    "body,needle",
    [
        (
            {"search": {"effective_bits": [12]}},
            "search.coverage: required (a list of shares in (0, 1], e.g. [0.5, 1.0])",
        ),
        (
            {"search": {"coverage": [1.0]}},
            "search.effective_bits: required (a list of bits per eligible LM weight in [8, 16]",
        ),
        ({"name": "x"}, "search: required (a section with effective_bits and coverage lists"),
    ],
)
def test_a_missing_field_says_what_it_takes_not_the_mapping_around_it(tmp_path, body, needle):
    with pytest.raises(ConfigError) as e:
        load_config(_cfg(tmp_path, body))
    msg = str(e.value)
    assert needle in msg and "\n" not in msg
    assert "Field required" not in msg and "{'" not in msg  # no parent mapping as the value


def test_an_unknown_key_lists_the_keys_of_its_section(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(_cfg(tmp_path, BASE), ["model.sorce=x"])
    allowed = "source, revision, dtype, trust_remote_code, fused_scales"
    assert f"unknown key 'model.sorce' (allowed: {allowed})" in str(e.value)


def test_a_missing_catalog_field_names_the_scheme_and_what_it_takes(tmp_path):
    doc = yaml.safe_load(Path(load_catalog.__defaults__[0]).read_text())
    del doc["schemes"][1]["knobs"]["num_score_steps"]
    del doc["schemes"][0]["role"]
    p = tmp_path / "cat.yaml"
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as e:
        load_catalog(p)
    msg = str(e.value)
    assert "schemes.0.role: required (conservative, balanced or aggressive)" in msg
    assert "schemes.1.knobs.num_score_steps: required (an integer >= 1)" in msg


def test_a_bad_value_is_blamed_on_the_set_that_gave_it_not_on_the_file(tmp_path):
    """Issue 27: a ``--set`` value's error named the YAML file, which holds no such value."""
    body = {**BASE, "data": {"batch_size": 0}}
    with pytest.raises(ConfigError) as e:
        load_config(_cfg(tmp_path, body), ["seed=x", "search.coverage=[2]", "model.sorce=m"])
    parts = str(e.value).split("; ")
    assert (
        parts[0]
        == f"{tmp_path / 'c.yaml'}: data.batch_size=0: Input should be greater than or equal to 1"
    )
    assert (
        "--set seed=x: Input should be a valid integer, unable to parse string as an integer"
        in parts
    )
    assert (
        "--set search.coverage=[2]: value 2.0 is outside (0, 1] (share of decoder blocks)" in parts
    )
    assert any(
        p.startswith("--set model.sorce=m: unknown key 'model.sorce' (allowed: source")
        for p in parts
    )
    assert "\n" not in str(e.value)


def test_an_empty_set_sets_nothing():
    """What MLproject passes when its ``set`` parameter is left out."""
    assert parse_overrides(["", "seed=3"]) == parse_overrides(["seed=3"])
    assert load_config(None, [""]) == load_config(None)


def test_all_problems_are_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(_cfg(tmp_path, BASE), ["search.coverage=[2]", "search.effective_bits=[4]"])
    assert "coverage" in str(e.value) and "effective_bits" in str(e.value)


@pytest.mark.parametrize("pair", ["noequals", "=3", "a..b=1"])
def test_malformed_overrides(pair):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides([pair])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("search: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)


def _written(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def _refusal(path: Path, *overrides: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_a_repeated_key_is_refused_with_both_lines_at_any_depth(tmp_path):
    text = (
        "seed: 1\n"
        "search:\n"
        "  effective_bits: [12]\n"
        "  coverage: [1.0]\n"
        "  effective_bits: [8]\n"  # nested: would silently replace line 3
        "seed: 2\n"
    )
    msg = _refusal(_written(tmp_path, text))
    assert msg.startswith(f"{tmp_path / 'c.yaml'}: ")
    assert "key 'search.effective_bits' appears twice (lines 3 and 5); keep one" in msg
    assert "key 'seed' appears twice (lines 1 and 6); keep one" in msg
    flow = "search: {effective_bits: [12], coverage: [1.0], coverage: [0.5]}\n"
    assert "key 'search.coverage' appears twice (line 1, columns 32 and 49)" in _refusal(
        _written(tmp_path, flow)
    )


def test_a_repeated_catalog_key_is_refused(tmp_path):
    lines = Path(load_catalog.__defaults__[0]).read_text().splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.strip().startswith("role:"))
    lines.insert(at + 1, lines[at])  # the first scheme's role, twice
    p = tmp_path / "cat.yaml"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        ConfigError, match=rf"key 'schemes\.0\.role' appears twice \(lines {at + 1} "
    ):
        load_catalog(p)


def _alias_bomb(levels: int = 9) -> str:
    """Nine anchors of nine aliases each: 9**9 nodes once expanded, from about 300 bytes."""
    rows = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    rows += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(rows) + "\n"


def test_an_alias_bomb_is_refused_at_its_first_anchor(tmp_path):
    msg = _refusal(_written(tmp_path, _alias_bomb()))
    assert msg.endswith(
        "c.yaml: line 1: anchor '&l0' refused; a config takes no anchors or aliases, write the "
        "value out"
    )


def test_an_alias_is_refused_in_a_file_and_in_a_set_value(tmp_path):
    body = "search: {effective_bits: [12], coverage: [1.0]}\nseed: *s\n"
    assert "line 2: alias '*s' refused" in _refusal(_written(tmp_path, body))
    with pytest.raises(ConfigError) as e:
        parse_overrides(["search.coverage=*c"])
    assert str(e.value) == (
        "--set 'search.coverage=*c': line 1: alias '*c' refused; a config takes no anchors or "
        "aliases, write the value out"
    )
    with pytest.raises(ConfigError, match="anchor '&c' refused"):
        parse_overrides(["search.coverage=&c [1.0]"])
    with pytest.raises(ConfigError, match="key 'a' appears twice"):
        parse_overrides(["model={a: 1, a: 2}"])


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    p = _written(tmp_path, "# " + "x" * (1 << 20) + "\n")
    size = p.stat().st_size
    assert _refusal(p) == f"{p}: {size:,} bytes is over the 1 MiB limit for a config file"
    with pytest.raises(ConfigError, match="bytes is over the 1 MiB limit"):
        load_catalog(p)


@pytest.mark.parametrize(
    "text,needle",
    [
        ("x: " + "[" * 5000, "line 1: nested deeper than 32 levels"),
        ("x: [" + ", ".join(["1"] * 20_000) + "]", "line 1: more than 10000 keys and values"),
        ("model:\n  <<: {source: x}\n", "line 2: merge key 'model.<<' refused; write the keys out"),
        ("seed: " + "1" * 5000, "line 1: value '11111111111111111111...' cannot be read (Exceeds"),
        ("search:\n  x: [unclosed\n", "not valid YAML at line 3 (ParserError)"),
    ],
    ids=["deep", "many", "merge", "long-int", "syntax"],
)
def test_other_hostile_yaml_is_one_line_naming_the_line(tmp_path, text, needle):
    assert needle in _refusal(_written(tmp_path, text))


def test_config_hash_ignores_tracking_only(tmp_path):
    a = load_config(_cfg(tmp_path, BASE))
    b = load_config(_cfg(tmp_path, BASE), ["tracking.experiment=other"])
    c = load_config(_cfg(tmp_path, BASE), ["seed=1"])
    assert a.config_hash() == b.config_hash() != c.config_hash()


def test_controls_default_to_20_random_seeds_and_a_5_percent_margin(tmp_path):
    controls = load_config(_cfg(tmp_path, BASE)).controls
    assert controls.random_seeds == 20 and controls.margin == 0.05
    assert controls.specs()[:3] == ["modelopt", "random:0", "random:1"]  # ModelOpt's own first
    assert len([s for s in controls.specs() if s.startswith("random:")]) == 20


def test_the_demo_config_hash_is_pinned():
    """Sweep folders record this hash and refuse to resume under another, and schemes.yaml names
    it: a change to the schema that changes it must be deliberate (and say so). The default
    catalog is an absolute path into the checkout, hashed relative to it (both pins below).
    Last changed on purpose by issue 26: the demo's 20 random seeds and ``controls.margin``,
    ``controls.modelopt`` (a demo folder from before refuses to resume; its controls were other
    plans anyway), and ``model.fused_scales``: ``dtype: auto`` became BF16 on CPU too and fused
    layers got vLLM's shared scales, so a sweep measured before (float32 on CPU, per-shard scales)
    must not resume into one folder with trials measured after; then ``data.report_batches``
    and the demo's shorter windows (the report set), and ``data.draw``. Issue 25:
    ``scoring.adaptive`` (the demo's 4 score batches are too few for the rule to stop early, so its
    scores are the same; larger configs score fewer batches)."""
    cfg = load_config(None, ["selection.catalog=schemes.yaml"])
    assert cfg.config_hash() == "b2bdca933cc027ac"
    # the checkout's own paths are hashed relative to it: the demo's hash is one everywhere
    assert load_config(None).config_hash() == "2b5465b1dc0963da"


def test_a_moved_checkout_gives_the_same_hash_and_a_legacy_sweep_still_resumes(tmp_path):
    """Paths under the checkout (the default catalog, data/) are hashed relative to it; the
    hash sweeps wrote before (absolute paths) is still accepted by a resume."""
    from orchestrator import checks
    from orchestrator.core import config
    from orchestrator.outputs.files import write_sweep_json

    cfg = load_config(None)
    here = cfg.config_hash()
    moved = load_config(None, ["selection.catalog=/elsewhere/checkout/search_spaces/schemes.yaml"])
    old_root = config.PROJECT_ROOT
    try:
        config.PROJECT_ROOT = Path("/elsewhere/checkout")
        assert moved.config_hash() == here  # the same sweep, from another checkout
        assert moved.config_hash(legacy=True) != here
    finally:
        config.PROJECT_ROOT = old_root
    legacy = cfg.config_hash(legacy=True)
    assert legacy != here  # the default catalog's absolute path was hashed
    out = tmp_path / "old-sweep"
    out.mkdir()
    write_sweep_json(out, {"name": cfg.name, "config_hash": legacy})
    assert checks.check_output(out, here, cfg, legacy)["config_hash"] == legacy
    with pytest.raises(ConfigError, match="with config hash .* not 2b5465b1dc0963da"):
        checks.check_output(out, here, cfg)  # without the legacy hash: another sweep


def test_a_written_config_from_before_the_fault_section_left_still_reads(tmp_path):
    """select and export read config.yaml of sweeps that wrote an (empty) fault section."""
    old = {**BASE, "fault": {"raise_on_bits": [], "sleep_seconds": 0.0}}
    cfg = read_written_config(_cfg(tmp_path, old))
    assert cfg == load_config(_cfg(tmp_path, BASE))


def test_a_removed_key_says_it_was_removed_not_unknown(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(_cfg(tmp_path, BASE), ["fault.sleep_seconds=2"])
    assert str(e.value) == (
        "--set fault.sleep_seconds=2: 'fault' was removed (faults are injected by the test suite "
        "only, tests/faults.py); delete it"
    )
    doc = yaml.safe_load(Path(load_catalog.__defaults__[0]).read_text())
    doc["schemes"][2]["coverage_rule"] = "coverage 1.0 (every decoder block)"
    doc["schemes"][2]["post_filters"] = ["finished trial with finite metrics"]
    p = tmp_path / "cat.yaml"
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as e:
        load_catalog(p)
    msg = str(e.value)
    assert "\n" not in msg and "unknown key" not in msg
    assert "'schemes.2.coverage_rule' was removed (it never had an effect; " in msg
    assert "'schemes.2.post_filters' was removed (it never had an effect; " in msg


def test_catalog_with_duplicate_names_is_rejected(tmp_path):
    doc = yaml.safe_load(Path(load_catalog.__defaults__[0]).read_text())
    doc["schemes"][1]["name"] = doc["schemes"][0]["name"]
    p = tmp_path / "cat.yaml"
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="duplicate scheme names \\['fp8_autoquant_top25'\\]"):
        load_catalog(p)

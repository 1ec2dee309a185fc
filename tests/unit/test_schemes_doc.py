"""docs/SCHEMES.md's generator without a sweep: the marker rewrite on text, the reader on a
hand-written schemes.yaml in the shapes it must survive (no numerics label, metrics keyed by
evaluation set), bad input. The generator on a real sweep's folder is in tests/e2e/test_sweep.py."""

from __future__ import annotations

import pytest
import yaml

from orchestrator.core.numerics import UNRECORDED
from orchestrator.outputs.report import read_report
from scripts.schemes_doc import END, OTHERS, START, TABLES, MarkerError, blocks, main, splice
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

DOC = """# Title

Prose that stays, 58 % and all.

<!-- generated: a (from old, config_hash 0) -->
old a
<!-- end generated -->

between

<!-- generated: b -->
<!-- end generated -->
tail
"""
NEW = {"a": "<!-- generated: a (from new) -->\nnew a", "b": "<!-- generated: b (from new) -->"}


def test_splice_rewrites_only_between_markers_and_names_what_changed():
    text, changed = splice(DOC, NEW)
    assert changed == ["a", "b"]
    assert text == DOC.replace(
        "<!-- generated: a (from old, config_hash 0) -->\nold a", NEW["a"]
    ).replace("<!-- generated: b -->", NEW["b"])
    again, changed = splice(text, NEW)
    assert again == text and changed == []
    # a block the doc does not show is no error; one edited by hand is the one named
    edited = text.replace("new a", "new A")
    assert splice(edited, {**NEW, "c": "x"}) == (text, ["a"])


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("<!-- generated: z -->\n" + END, "line 1: no generated table is called 'z' (a, b)"),
        ("x\n<!-- generated: a -->\nbody\n", "line 2: generated block 'a' has no " + END),
        (f"x\n{END}\n", f"line 2: {END} without a start marker"),
        (
            "<!-- generated: a -->\n<!-- generated: b -->\n" + END,
            "line 2: a generated block starts",
        ),
    ],
)
def test_splice_refuses_markers_it_cannot_rewrite(doc, message):
    with pytest.raises(MarkerError, match=message.replace("(", r"\(").replace(")", r"\)")):
        splice(doc, NEW)


def _sweep(tmp_path, **top):
    """A folder with only a schemes.yaml: one scheme whose metrics are keyed by evaluation set,
    as a sweep with a selection and a report set may write them."""
    scheme = {
        "name": "fp8_autoquant_top25",
        "fp8_share": {"nominal": 0.25, "tolerance": 0.05},
        "fp8_fraction": 0.25,
        "achieved_effective_bits": 14.0,
        "method": "gradient",
        "strategy": "solve",
        "coverage": 1.0,
        "plan_hash": "p1",
        "metrics": {
            "selection": {"kl_mean": 1.0e-4, "kl_ci_low": 0.9e-4, "kl_ci_high": 1.1e-4},
            "report": {"kl_mean": 2.0e-4, "kl_ci_low": 1.8e-4, "kl_ci_high": 2.2e-4},
        },
        "controls": [
            {
                "control": "random",
                "seeds": 20,
                "verdict": "better",
                "kl_ratio": 0.5,
                "set": "report",
            },
            {"control": "modelopt", "verdict": "same plan", "fp8_fraction": 0.25},
        ],
    }
    doc = {"schemes": [scheme], "sweep": "s", "config_hash": "abc123", **top}
    (tmp_path / "schemes.yaml").write_text(yaml.safe_dump(doc))
    return tmp_path


def test_reader_takes_the_report_set_and_says_when_numerics_are_unrecorded(tmp_path):
    report = read_report(_sweep(tmp_path))
    (s,) = report.schemes
    assert (s.kl, s.kl_ci, s.set) == (2.0e-4, (1.8e-4, 2.2e-4), "report")
    assert [c.control for c in s.controls] == ["modelopt", "random"]  # ModelOpt's plan first
    assert report.numerics == UNRECORDED and report.sets == ("report",)
    assert s.top1 is None and report.eval_tokens is None and report.scored_plans == 0
    labelled = read_report(_sweep(tmp_path, numerics="bfloat16, vLLM fused scales"))
    made = blocks(labelled)
    assert list(made) == ["sweep", "schemes", "controls", "front"]
    for name, block in made.items():
        head = block.splitlines()[1]
        assert block.startswith(f"<!-- generated: {name} (from {tmp_path}, config_hash abc123)")
        assert "numerics: bfloat16, vLLM fused scales; evaluation set: report." in head
    assert (
        "| `fp8_autoquant_top25` | 25.0% | 14 | gradient solve c=1 | 0.0002 [0.00018"
        in (made["schemes"])
    )


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    doc = tmp_path / "doc.md"
    doc.write_text(DOC)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--output", str(empty), "--doc", str(doc)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --output {empty}: ") and err.count("\n") == 1
    (tmp_path / "s").mkdir()
    sweep = _sweep(tmp_path / "s")
    assert main(["--output", str(sweep), "--doc", str(doc)]) == 2  # markers 'a', 'b' unknown
    assert "no generated table is called 'a'" in capsys.readouterr().err
    assert main(["--output", str(sweep), "--check"]) == 2
    assert "give --doc" in capsys.readouterr().err
    assert doc.read_text() == DOC


def test_schemes_md_shows_every_table_between_markers_the_script_can_rewrite():
    """docs/SCHEMES.md holds one block per table this script makes and the stability script's, and
    its markers parse (a broken marker would make the next regeneration refuse the doc); each
    script's rewrite leaves the other's block as it is."""
    text = (ROOT / "docs" / "SCHEMES.md").read_text()
    names = [m["name"] for line in text.splitlines() if (m := START.match(line))]
    assert sorted(names) == sorted([*TABLES, *OTHERS])
    new, _ = splice(text, {name: f"<!-- generated: {name} -->" for name in TABLES}, OTHERS)
    stability = text[text.index("<!-- generated: stability") :].split("<!-- end generated -->")[0]
    assert stability in new

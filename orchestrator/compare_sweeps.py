"""``python -m orchestrator.compare_sweeps --output A --against B``: two finished sweeps' schemes,
name by name.

    python -m orchestrator.compare_sweeps --output runs/text-calib --against runs/image-calib
    python -m orchestrator.compare_sweeps --output A --against B --objective image_kl_mean

Two sweeps that differ in how they calibrate and score (text only vs image+text, other records,
other step counts) but were evaluated on the same evaluation set can be compared paired: for each
scheme name, each sweep's KL on the chosen objective's tokens with its 95% bootstrap interval, and
the ratio B / A with its paired interval and a verdict (``better``: B's scheme has less KL,
beyond ``--margin``; ``equivalent``, ``worse`` or ``inconclusive`` by the rules of
``orchestrator.core.stats``, Holm-corrected across the names compared). A
name bound to the same modules in both still differs when calibration did (other ranges), so it
is compared like any other (``same_modules`` says so). The evaluation sets must be the same
tokens, images and processor settings (``sweep.json``'s eval data hash); otherwise the command
exits 2 and says so. ``--objective`` spells ``--set selection.objective``. Reads only the two
folders; no Ray, no MLflow. Exit 0, or 2 on bad input. The older ``compare_sweeps A B`` still
works, with a line saying so.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from orchestrator import cli
from orchestrator.core.config import ConfigError, Override
from orchestrator.core.objectives import KL_MEAN, OBJECTIVES, REPORT, Objective, missing_rows
from orchestrator.core.records import TrialResult, stable_seed
from orchestrator.core.stats import MARGIN, holm, paired_comparison, ratio_ci, verdict
from orchestrator.core.verdicts import verdict_rule
from orchestrator.outputs import integrity
from orchestrator.outputs.files import read_sweep_json, write_text
from orchestrator.outputs.summary import rule_line
from orchestrator.outputs.tables import load_results
from orchestrator.runtime.logs import setup_logging


def _side(r: TrialResult, objective: Objective, seed: int) -> dict[str, Any]:
    sums = objective.per_sequence(r.per_sequence)
    assert sums is not None
    ci = ratio_ci(*sums, seed)
    return {
        "plan_hash": r.plan_hash,
        "fp8_fraction": r.fp8_fraction,
        "method": r.method,
        "strategy": r.strategy,
        objective.metric: ci.estimate,
        "ci": [ci.low, ci.high],
    }


def compare_named(
    a: Mapping[str, TrialResult],
    b: Mapping[str, TrialResult],
    objective: Objective,
    margin: float = MARGIN,
) -> list[dict[str, Any]]:
    """Per scheme name both sweeps published: each side's KL with CI, and B / A paired, judged
    with ``margin`` and Holm's correction across the names. A name whose trial lacks the
    objective's per-sequence sums reads ``not measured``."""
    rows: list[dict[str, Any]] = []
    tests = []
    for name in [n for n in a if n in b]:
        ra, rb = a[name], b[name]
        sa, sb = objective.per_sequence(ra.per_sequence), objective.per_sequence(rb.per_sequence)
        if sa is None or sb is None or len(sa[0]) != len(sb[0]):
            rows.append({"scheme": name, "verdict": "not measured"})
            continue
        test = paired_comparison(
            sb[0], sa[0], stable_seed(name, ra.plan_hash, rb.plan_hash), margin
        )
        tests.append((len(rows), test))
        rows.append(
            {
                "scheme": name,
                "objective": objective.metric,
                "a": _side(ra, objective, stable_seed(name, ra.plan_hash)),
                "b": _side(rb, objective, stable_seed(name, rb.plan_hash)),
                "same_modules": ra.plan_hash == rb.plan_hash,
                "ratio": test.ratio.estimate,
                "ratio_ci": [test.ratio.low, test.ratio.high],
                "p": test.p,
            }
        )
    for (i, test), p_holm in zip(tests, holm([t.p for _, t in tests]), strict=True):
        rows[i] = {**rows[i], "p_holm": p_holm, "verdict": verdict(test, p_holm)}
    return rows


def _published(output: Path, field: str) -> tuple[dict[str, Any], dict[str, TrialResult]]:
    """(sweep.json, scheme name -> its measured trial) of a finished sweep folder."""
    sweep = read_sweep_json(output)
    if sweep is None or not (output / "schemes.yaml").exists():
        raise ConfigError(f"{field} {output}: no finished sweep (sweep.json, schemes.yaml)")
    integrity.refuse_changed(output, sweep, ["schemes.yaml", "trials.parquet"], field)
    doc = yaml.safe_load((output / "schemes.yaml").read_text())
    by_plan = {r.plan_hash: r for r in load_results(output) if r.status == "FINISHED"}
    named = {
        s["name"]: by_plan[s["plan_hash"]] for s in doc["schemes"] if s["plan_hash"] in by_plan
    }
    return sweep, named


def check_same_evaluation(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """The set both sweeps were measured on, to pair them on: their report set when it is the same
    one, else their selection set when that is (``report`` or ``selection``)."""
    ha, hb = (s.get("data_hashes", {}) for s in (a, b))
    if ha.get("report") is not None and ha.get("report") == hb.get("report"):
        return "report"
    if ha.get("eval") is not None and ha.get("eval") == hb.get("eval"):
        return "selection"
    raise ConfigError(
        f"--against: measured on sets {hb.get('report') or hb.get('eval')}, --output on "
        f"{ha.get('report') or ha.get('eval')}; a paired comparison needs one set (the same "
        "data.report_batches or eval_batches, batch_size, seq_len, eval_image_fraction, records "
        "and seed)"
    )


def _ci(v: Sequence[float]) -> str:
    return f"[{v[0]:.3g}, {v[1]:.3g}]"


def table_lines(rows: Sequence[Mapping[str, Any]], objective: Objective) -> list[str]:
    kl = objective.label + " [95% CI]"
    lines = [f"{'scheme':<22}{'A: FP8':>7}  {kl:<32}{'B: FP8':>7}  {kl:<32}B / A [95% CI]"]
    for r in rows:
        if "a" not in r:
            lines.append(f"{r['scheme']:<22}{r['verdict']}")
            continue
        a, b = r["a"], r["b"]
        cells = [f"{x[objective.metric]:.3g} {_ci(x['ci'])}" for x in (a, b)]
        same = " (same modules)" if r["same_modules"] else ""
        lines.append(
            f"{r['scheme']:<22}{a['fp8_fraction']:>7.1%}  {cells[0]:<32}"
            f"{b['fp8_fraction']:>7.1%}  {cells[1]:<32}"
            f"{r['ratio']:.3g} {_ci(r['ratio_ci'])} {r['verdict']}{same}"
        )
    return lines


def parser() -> cli.Parser:
    p = cli.Parser(
        "orchestrator.compare_sweeps",
        __doc__,
        output="a finished sweep's output folder: A, the baseline",
        set_keys={"selection.objective": "image_kl_mean"},
        verbose="show what the libraries print",
    )
    p.add_argument(
        "--against", type=Path, metavar="DIR", help="B: another sweep, evaluated on the same set"
    )
    p.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default=None,
        help="the KL compared (default: kl_mean; = --set selection.objective)",
    )
    p.add_argument(
        "--margin",
        type=float,
        default=MARGIN,
        help="materiality margin: a ratio within it of 1 is no difference (default 0.05)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    p.add_argument("folders", nargs="*", type=Path, help=argparse.SUPPRESS)  # the old A B form
    return p


@cli.command  # bad input: one line on stderr, exit 2
def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if not 0.0 <= args.margin <= 1.0:
        raise ConfigError(f"--margin={args.margin}: use a share in [0, 1], e.g. 0.05")
    a_dir, b_dir = _folders(p, args)
    given = p.overrides(args, objective=args.objective)
    setup_logging(args.verbose)
    objective = _objective(given[-1] if given else None)
    sweep_a, a = _published(a_dir.resolve(), "--output")
    sweep_b, b = _published(b_dir.resolve(), "--against")
    on = check_same_evaluation(sweep_a, sweep_b)
    has_rows = any(objective.per_sequence(r.per_sequence) for r in a.values())
    problem = missing_rows(objective, given[-1].flag if given else "--objective", has_rows)
    if problem:
        raise ConfigError(problem)
    # the report set when both sweeps share it (the names were chosen on the selection set)
    objective = replace(objective, part=REPORT if on == "report" else "")
    rows = compare_named(a, b, objective, args.margin)
    print(f"A: {a_dir} ({sweep_a.get('name')})\nB: {b_dir} ({sweep_b.get('name')})")
    print(f"measured on each sweep's {objective.set_name} set")
    for line in table_lines(rows, objective):
        print(line)
    print(rule_line(verdict_rule([rows], args.margin)))
    if args.json is not None:
        write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return cli.ExitCode.OK


def _objective(given: Override | None) -> Objective:
    if given is None:
        return KL_MEAN
    if given.value not in OBJECTIVES:
        raise ConfigError(f"{given.given}: use one of {', '.join(OBJECTIVES)}")
    return Objective(given.value)


def _folders(p: cli.Parser, args: argparse.Namespace) -> tuple[Path, Path]:
    """(A, B) from --output and --against, or from the older positional ``A B`` (said once)."""
    if args.folders:
        if len(args.folders) != 2 or args.output or args.against:
            p.error(f"unrecognized arguments: {' '.join(map(str, args.folders))}")
        print("note: `compare_sweeps A B` is deprecated; use --output A --against B")
        return args.folders[0], args.folders[1]
    missing = [f for f in ("--output", "--against") if getattr(args, f[2:]) is None]
    if missing:
        p.error(f"missing {' and '.join(missing)}: the two sweeps to compare")
    return args.output, args.against


if __name__ == "__main__":
    sys.exit(main())

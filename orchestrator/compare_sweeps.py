"""``python -m orchestrator.compare_sweeps A B``: two finished sweeps' schemes, name by name.

Two sweeps that differ in how they calibrate and score (text only vs image+text, other records,
other step counts) but were evaluated on the same evaluation set can be compared paired: for each
scheme name, each sweep's KL on the chosen objective's tokens with its 95% bootstrap interval, and
the ratio B / A with its paired interval and a verdict (``better``: B's scheme has less KL,
beyond ``--margin``; ``equivalent``, ``worse`` or ``inconclusive`` by the rules of
``orchestrator.core.stats``, Holm-corrected across the names compared). A
name bound to the same modules in both still differs when calibration did (other ranges), so it
is compared like any other (``same_modules`` says so). The evaluation sets must be the same
tokens, images and processor settings (``sweep.json``'s eval data hash); otherwise the command
exits 2 and says so. Reads only the two folders; no Ray, no MLflow. Exit 0, or 2 on bad input.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from orchestrator import cli
from orchestrator.core.config import ConfigError
from orchestrator.core.objectives import OBJECTIVES, Objective, missing_rows
from orchestrator.core.records import TrialResult, stable_seed
from orchestrator.core.stats import MARGIN, holm, paired_comparison, ratio_ci, verdict
from orchestrator.core.verdicts import verdict_rule
from orchestrator.outputs.files import read_sweep_json
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
        raise ConfigError(f"{field}={output}: no finished sweep (sweep.json, schemes.yaml)")
    doc = yaml.safe_load((output / "schemes.yaml").read_text())
    by_plan = {r.plan_hash: r for r in load_results(output) if r.status == "FINISHED"}
    named = {
        s["name"]: by_plan[s["plan_hash"]] for s in doc["schemes"] if s["plan_hash"] in by_plan
    }
    return sweep, named


def check_same_evaluation(a: Mapping[str, Any], b: Mapping[str, Any]) -> None:
    ha, hb = (s.get("data_hashes", {}).get("eval") for s in (a, b))
    if ha is None or ha != hb:
        raise ConfigError(
            f"B: evaluated on set {hb}, A on {ha}; a paired comparison needs one evaluation set "
            "(the same data.eval_batches, batch_size, seq_len, eval_image_fraction and records)"
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


@cli.command  # bad input: one line on stderr, exit 2
def main(argv: Sequence[str] | None = None) -> int:
    p = cli.Parser("orchestrator.compare_sweeps", __doc__)
    p.add_argument("a", type=Path, help="a finished sweep's output folder (the baseline)")
    p.add_argument("b", type=Path, help="another, evaluated on the same set")
    p.add_argument("--objective", choices=OBJECTIVES, default="kl_mean", help="the KL compared")
    p.add_argument(
        "--margin",
        type=float,
        default=MARGIN,
        help="materiality margin: a ratio within it of 1 is no difference (default 0.05)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    if not 0.0 <= args.margin <= 1.0:
        raise ConfigError(f"--margin={args.margin}: use a share in [0, 1], e.g. 0.05")
    setup_logging()
    objective = Objective(args.objective)
    sweep_a, a = _published(args.a.resolve(), "A")
    sweep_b, b = _published(args.b.resolve(), "B")
    check_same_evaluation(sweep_a, sweep_b)
    has_rows = any(objective.per_sequence(r.per_sequence) for r in a.values())
    problem = missing_rows(objective, "--objective", has_rows)
    if problem:
        raise ConfigError(problem)
    rows = compare_named(a, b, objective, args.margin)
    print(f"A: {args.a} ({sweep_a.get('name')})\nB: {args.b} ({sweep_b.get('name')})")
    for line in table_lines(rows, objective):
        print(line)
    print(rule_line(verdict_rule([rows], args.margin)))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return cli.ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())

"""Write docs/SCHEMES.md's tables of measured numbers from a finished sweep's folder.

    python -m scripts.schemes_doc --output runs/demo-tiny                          # print them
    python -m scripts.schemes_doc --output runs/demo-tiny --doc docs/SCHEMES.md    # rewrite
    python -m scripts.schemes_doc --output runs/demo-tiny --doc docs/SCHEMES.md --check

Hand-copied tables went stale (a "58 %" plan that held 52.8 %, third digits of several tables), so
every table of measured numbers in the doc sits between two markers,

    <!-- generated: NAME (from FOLDER, config_hash HASH) -->
    ...
    <!-- end generated -->

and this script rewrites only what lies between them, from the folder alone: the prose around
them is the doc's own. ``--check`` rewrites nothing and exits 1 naming each table that differs
from what the folder gives (tests/e2e/test_sweep.py runs both on the demo's output). The tables:

* ``sweep``: what ran (numerics, evaluation tokens, grid, plans measured) and the verdict rule;
* ``schemes``: per published scheme its FP8 share, effective bits, plan, KL and top-1 with their
  95% intervals;
* ``controls``: per scheme, the best point of every scored (method, strategy) at its share, then
  every control at that share (ModelOpt's own plan first; random as its seeds' distribution):
  the share reached, KL, top-1, the paired KL ratio with its interval, and the verdict;
* ``front``: the knee of the front and the score-KL rank correlations.

Each table's first line names the folder, the sweep, its config hash and the numerics label. The
keys are read by ``orchestrator/outputs/report.py`` only; nothing here computes a number.

Exit: 0 written (or, with ``--check``, up to date); 1 ``--check`` found stale tables; 2 bad input
(one line: a folder with no schemes.yaml, a missing doc, a marker this script does not know or
that is never closed), nothing written.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

from orchestrator.cli import ExitCode, Parser, command
from orchestrator.core.config import ConfigError
from orchestrator.outputs.report import (
    Control,
    Interval,
    NotASweep,
    Point,
    Report,
    Scheme,
    read_report,
)

START = re.compile(r"^<!-- generated: (?P<name>[^\s()]+)(?: \(.*\))? -->$")
END = "<!-- end generated -->"
NONE = "not recorded"
OTHERS = ("stability",)  # blocks scripts/stability.py writes, from several sweeps


class MarkerError(ValueError):
    """A doc whose markers cannot be rewritten: the message names the line."""


# --- the marker rewrite (pure text) ---------------------------------------------------------


def splice(
    text: str, blocks: Mapping[str, str], others: Collection[str] = ()
) -> tuple[str, list[str]]:
    """``text`` with each generated block (its start marker and body, up to the end marker)
    replaced by ``blocks[name]``, and the names of the blocks that changed, in doc order.

    Lines outside the markers come back as they were, and so do the blocks named in ``others``
    (written by another script: ``scripts/stability.py``). A marker naming neither, a start
    without its end (or inside another block) and an end without a start raise
    :class:`MarkerError`."""
    lines = text.split("\n")
    out: list[str] = []
    changed: list[str] = []
    open_at: int | None = None  # the line of the open block's start marker
    name = ""
    for i, line in enumerate(lines):
        m = START.match(line)
        if m:
            if open_at is not None:
                raise MarkerError(f"line {i + 1}: a generated block starts inside {name!r}")
            name, open_at = m["name"], i
            if name not in blocks and name not in others:
                made = ", ".join(blocks) or "none"
                raise MarkerError(f"line {i + 1}: no generated table is called {name!r} ({made})")
        elif line == END:
            if open_at is None:
                raise MarkerError(f"line {i + 1}: {END} without a start marker")
            new = blocks[name].split("\n") if name in blocks else lines[open_at:i]
            if lines[open_at:i] != new and name not in changed:
                changed.append(name)
            out += [*new, line]
            open_at = None
        elif open_at is None:
            out.append(line)
    if open_at is not None:
        raise MarkerError(f"line {open_at + 1}: generated block {name!r} has no {END}")
    return "\n".join(out), changed


# --- the tables -----------------------------------------------------------------------------


def _g(x: float | None) -> str:
    return NONE if x is None else f"{x:.3g}"


def _ci(x: float | None, ci: Interval | None, fmt: Callable[[float], str] = "{:.3g}".format) -> str:
    if x is None:
        return NONE
    return fmt(x) if ci is None else f"{fmt(x)} [{fmt(ci[0])}, {fmt(ci[1])}]"


def _share(x: float | None) -> str:
    return NONE if x is None else f"{x:.1%}"


def _top1(x: float | None) -> str:
    return f"{x:.4f}" if x is not None else ""


def _header(name: str, r: Report) -> list[str]:
    """The start marker and the line every table opens with: where its numbers come from."""
    sets = ", ".join(r.sets) if r.sets else "not named (one set, before the selection/report split)"
    return [
        f"<!-- generated: {name} (from {r.folder}, config_hash {r.config_hash}) -->",
        f"*Generated by `python -m scripts.schemes_doc` from `{r.folder}`: sweep `{r.sweep}`, "
        f"config hash `{r.config_hash}`; numerics: {r.numerics}; evaluation set: {sets}.*",
        "",
    ]


def _values(xs: Sequence[object]) -> str:
    return " / ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in xs) or NONE


def sweep_table(r: Report) -> list[str]:
    g = r.grid
    points = 1
    for axis in ("methods", "effective_bits", "coverage", "strategies"):
        points *= len(g.get(axis) or ())
    evaluation = (
        f"{r.eval_sequences} sequences, {r.eval_tokens:,} scored tokens"
        if r.eval_sequences is not None and r.eval_tokens is not None
        else NONE
    )
    rule = r.rule
    margin, level = rule.get("margin"), rule.get("level")
    verdicts = NONE
    if isinstance(margin, float | int) and isinstance(level, float | int):
        verdicts = (
            f"margin {margin:.0%}: `better` below {_g(rule.get('better_below'))}, `worse` "
            f"above {_g(rule.get('worse_above'))}; {level:.0%} intervals; "
            f"correction {rule.get('correction', 'none')} over {rule.get('comparisons', NONE)} "
            "comparisons"
        )
    rows = [
        ("sweep; config hash", f"`{r.sweep}`; `{r.config_hash}`"),
        ("numerics", r.numerics),
        ("evaluation", evaluation),
        (
            "grid",
            f"methods {_values(g.get('methods') or ())}; effective bits "
            f"{_values(g.get('effective_bits') or ())}; coverage {_values(g.get('coverage') or ())}"
            f"; strategies {_values(g.get('strategies') or ())} ({points} points)",
        ),
        ("plans measured", f"{r.scored_plans} scored, {r.control_plans} control plans"),
        ("selection objective", r.objective or NONE),
        ("verdict rule", verdicts),
    ]
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def schemes_table(r: Report) -> list[str]:
    out = [
        "| scheme | FP8 share | effective bits | plan | KL [95% CI] | top-1 [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for s in r.schemes:
        plan = f"{s.method} {s.strategy} c={_g(s.coverage)}"
        out.append(
            f"| `{s.name}` | {_share(s.share)} | {_g(s.bits)} | {plan} | {_ci(s.kl, s.kl_ci)} | "
            f"{_ci(s.top1, s.top1_ci, '{:.4f}'.format)} |"
        )
    return out


def _point_row(p: Point) -> str:
    mark = " (published)" if p.published else ""
    return (
        f"| {p.method} {p.strategy} c={p.coverage:g}{mark} | {_share(p.share)} | "
        f"{_ci(p.kl, p.kl_ci)} | {_top1(p.top1)} | | |"
    )


def _control_row(c: Control) -> str:
    """Share reached (and its difference from the scheme's, in points), KL, top-1, the paired
    ratio with its interval, the verdict; random as its seeds' distribution."""
    diff = f"{100 * c.share_diff:+.1f}" if c.share_diff is not None else NONE
    asked = f"; ModelOpt asked {c.modelopt_bits:.6g} bits" if c.modelopt_bits is not None else ""
    if c.seeds is not None:
        lo, hi = c.share_range or (c.share, c.share)
        at = _share(lo) if lo == hi else f"{_share(lo)}-{_share(hi)}"
        share = f"{c.seeds} seeds at {at} ({diff} at most)" if c.share_diff is not None else ""
    elif c.share is not None:
        share = f"{_share(c.share)} ({diff}{asked})"
    else:
        share = asked.lstrip("; ")
    ratio = ""
    if c.ratio is not None:
        ratio = _ci(c.ratio, c.ratio_ci)
        if c.seeds is not None:
            ratio += " over seeds and sequences"
            if c.seed_ratio is not None:
                ratio += f"; per seed {c.seed_ratio[0]:.3g}-{c.seed_ratio[1]:.3g}"
            if c.rank is not None:
                ratio += f"; rank {c.rank} of {c.seeds + 1}"
    verdict = c.verdict
    if c.p_holm is not None:
        verdict += f" (Holm p {c.p_holm:.2g})"
    if c.same_plan_as:
        verdict += f"; same plan as {', '.join(c.same_plan_as)}"
    kl = _ci(c.kl, c.kl_ci) if c.kl is not None else ""
    return f"| control {c.control} | {share} | {kl} | {_top1(c.top1)} | {ratio} | {verdict} |"


def _scheme_block(s: Scheme) -> list[str]:
    return [
        f"**{s.name}** ({_share(s.share)} FP8; {s.method} {s.strategy})",
        "",
        "| plan | FP8 share (vs the scheme, points) | KL [95% CI] | top-1 | KL ratio scheme / it "
        "[95% CI] | verdict |",
        "|---|---|---|---|---|---|",
        *(_point_row(p) for p in s.points),
        *(_control_row(c) for c in s.controls),
    ]


def controls_table(r: Report) -> list[str]:
    out: list[str] = []
    for s in r.schemes:
        out += [*([""] if out else []), *_scheme_block(s)]
    return out


def front_table(r: Report) -> list[str]:
    k = r.knee
    knee = NONE
    if k:
        knee = (
            f"{_share(k.get('fp8_fraction'))} FP8, {_g(k.get('achieved_effective_bits'))} bits, "
            f"KL {_g(k.get('kl_mean'))}; {k.get('method', '')} {k.get('strategy', '')} "
            f"c={_g(k.get('coverage'))}"
        )

    def per_method(d: Mapping[str, float]) -> str:
        return ", ".join(f"{m} {v:.3g}" for m, v in sorted(d.items())) or NONE

    return [
        "| | |",
        "|---|---|",
        f"| knee of the front | {knee} |",
        f"| Spearman(summed score, KL), all scored plans | {per_method(r.spearman)} |",
        "| the same among the plans of one budget (mean over budgets with 3 or more plans) | "
        f"{per_method(r.spearman_within_share)} |",
    ]


TABLES: dict[str, Callable[[Report], list[str]]] = {
    "sweep": sweep_table,
    "schemes": schemes_table,
    "controls": controls_table,
    "front": front_table,
}


def blocks(r: Report) -> dict[str, str]:
    """Each table as the text between its markers: start marker, header line, table."""
    return {name: "\n".join([*_header(name, r), *make(r)]) for name, make in TABLES.items()}


# --- the command ----------------------------------------------------------------------------


@command
def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(
        "scripts.schemes_doc",
        __doc__,
        output="the finished sweep's folder (schemes.yaml, trials.parquet, config.yaml)",
        set_keys={},
    )
    parser.add_argument("--doc", type=Path, help="the markdown file whose markers to rewrite")
    parser.add_argument(
        "--check", action="store_true", help="rewrite nothing; exit 1 naming each stale table"
    )
    args = parser.parse_args(argv)
    parser.overrides(args)
    if args.output is None:
        raise ConfigError("--output: missing; give a finished sweep's folder")
    if args.check and args.doc is None:
        raise ConfigError("--check: compares a doc with the folder; give --doc")
    if args.doc is not None and not args.doc.is_file():
        raise ConfigError(f"--doc {args.doc}: no such file; give the markdown file to rewrite")
    try:
        report = read_report(args.output, folder=str(args.output))
    except NotASweep as e:
        raise ConfigError(f"--output {args.output}: {e}; give a finished sweep's folder") from e
    made = blocks(report)
    if args.doc is None:
        print("\n\n".join(made.values()))
        return ExitCode.OK
    text = args.doc.read_text()
    try:
        new, changed = splice(text, made, OTHERS)
    except MarkerError as e:
        raise ConfigError(f"--doc {args.doc}: {e}") from e
    if args.check:
        if changed:
            print(
                f"{args.doc}: stale generated tables: {', '.join(changed)} (differ from "
                f"{args.output}; rewrite them: python -m scripts.schemes_doc --output "
                f"{args.output} --doc {args.doc})",
                file=sys.stderr,
            )
            return ExitCode.ERROR
        print(f"{args.doc}: every generated table matches {args.output}")
        return ExitCode.OK
    if new != text:
        args.doc.write_text(new)
    print(f"{args.doc}: rewrote {', '.join(changed) or 'nothing (up to date)'}")
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())

"""The console's closing lines: trials finished and failed, the numerics they ran in, each scheme
with its share, KL and interval, its verdicts against the controls (ModelOpt's own solve first;
each with the share it reached; random as the distribution of its seeds; controls with one plan
say so), the rule the verdicts follow, the knee and the score-KL correlation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.core.records import TrialResult
from orchestrator.outputs.console import WIDTH, duration, kl_with_ci, sci, wrap
from orchestrator.outputs.publish import KNEE, Finalized


def _ci(v: Sequence[float]) -> str:
    return f"[{v[0]:.3g}, {v[1]:.3g}]"


def _points(diff: float) -> str:
    return f"{100 * diff:+.1f} points"


# a ratio's direction, said where it is read: the KL ratio is the scheme's KL over the control's
BETTER_BELOW_1 = "(<1: scheme closer to BF16)"


def _notes(row: Mapping[str, Any]) -> str:
    """What ModelOpt was asked, and which other controls hold the very same plan."""
    notes = []
    if "modelopt_effective_bits" in row:
        whose = ", the scheme's plan" if row["verdict"] == "same plan" else ""
        notes.append(
            f"ModelOpt's own solve at effective_bits={row['modelopt_effective_bits']:.6g}{whose}"
        )
    if row.get("same_plan_as"):
        notes.append(f"same plan as {', '.join(row['same_plan_as'])}")
    return "".join(f"; {n}" for n in notes)


def _fit(text: str, indent: int) -> list[str]:
    """A verdict sentence within the console's width, continued under its own text."""
    return wrap(text, WIDTH, " " * indent)


def control_lines(row: Mapping[str, Any]) -> list[str]:
    """One control's verdict, ratio (with the direction that is better) and interval, and the
    share it reached (its difference from the scheme's); the random orders over their seeds,
    with the per-seed ratios' spread and the scheme's rank among the seeds."""
    head = f"  vs {row['control']:<13}{row['verdict']:<13}"
    if "kl_ratio" not in row:
        return _fit(head.rstrip() + _notes(row), len(head))
    ratio = f"KL ratio {row['kl_ratio']:.3g} {BETTER_BELOW_1} {_ci(row['kl_ratio_ci'])}"
    diff = _points(row["fp8_fraction_diff"])
    if "by_seed" not in row:
        text = f"{head}{ratio} at {row['fp8_fraction']:.1%} FP8 ({diff}){_notes(row)}"
        return _fit(text, len(head))
    low, high = row["fp8_fraction_range"]
    share = f"{low:.1%}" if round(low, 3) == round(high, 3) else f"{low:.1%}-{high:.1%}"
    spread = row["seed_kl_ratio"]
    return _fit(f"{head}{ratio} at {share} FP8 ({diff} max)", len(head)) + _fit(
        f"{'':<{len(head)}}over {row['seeds']} seeds and the sequences; per seed "
        f"{spread['min']:.3g}-{spread['max']:.3g} (median {spread['median']:.3g}); "
        f"rank {row['scheme_rank']} of {row['seeds'] + 1}",
        len(head),
    )


def rule_line(rule: Mapping[str, Any]) -> str:
    return (
        f"verdicts: better / worse when the {rule['level']:.0%} interval of the KL ratio lies "
        f"below {rule['better_below']:.3g} / above {rule['worse_above']:.3g} (margin "
        f"{rule['margin']:.0%}), equivalent inside, else inconclusive; Holm-corrected over the "
        f"{rule['comparisons']} comparisons"
    )


def knob_lines(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """Where the schemes' knobs differ from the catalog's recommendation, with both values;
    once for all schemes when they differ alike (one sweep's settings usually do)."""

    def diffs(e: Mapping[str, Any]) -> str:
        return ", ".join(
            f"{k} {e['knobs'].get(k)} (catalog: {e['catalog_knobs'].get(k)})"
            for k in e.get("knobs_differ_from_catalog", ())
        )

    said = [(e["name"], diffs(e)) for e in entries if e.get("knobs_differ_from_catalog")]
    if not said:
        return []
    if len({d for _, d in said}) == 1 and len(said) == len(entries):
        return wrap(f"knobs unlike the catalog's recommendation, all schemes: {said[0][1]}", WIDTH)
    return [
        line
        for name, d in said
        for line in wrap(f"knobs unlike the catalog's recommendation, {name}: {d}", WIDTH)
    ]


def export_lines(done: Finalized, output: Path) -> list[str]:
    """The next step: the command that writes a scheme (or the knee) as a checkpoint, split with
    a shell continuation so that it fits and still pastes as one command."""
    if done.selection is None or not done.entries:
        return []
    names = [e["name"] for e in done.entries]
    if done.selection.knee is not None:
        names.append(KNEE)
    first = names[min(1, len(names) - 1)]
    return [
        "",
        *wrap(
            f"next, a checkpoint: --scheme takes {', '.join(names)}; --all exports every scheme",
            WIDTH,
        ),
        f"  python -m orchestrator.export --output {output} \\",
        f"      --scheme {first} --dest {Path('checkpoints') / first}",
    ]


def measured_on(done: Finalized) -> str:
    """Which set the numbers below come from."""
    if not done.judged.part:
        return (
            "measured on the selection set, which the schemes were chosen on "
            "(data.report_batches is 0: no report set)"
        )
    docs = next((e.get("report_documents") for e in done.entries), None)
    spans = f" ({docs} documents)" if docs else ""
    return f"measured on the report set{spans}, which chose nothing; chosen on the selection set"


def summary_lines(done: Finalized, output: Path) -> list[str]:
    """The console's account of the selection: each scheme with its share, KL and CI, its
    verdict against every control measured at its share, the knee, the score-KL correlation."""
    if done.selection is None:
        return []
    obj = done.judged
    top1 = f"{obj.prefix}top1_agreement"
    lines = [
        "",
        f"numerics: {done.numerics}",
        *wrap(measured_on(done), WIDTH),
        f"{'scheme':<22}{'FP8':>7}{'bits':>7}  {obj.label + ' [95% CI]':<24}{'top-1':>8}  "
        "picked from",
    ]
    for s, e in zip(done.selection.schemes, done.entries, strict=True):
        m = s.metrics
        ci = obj.ci(m)
        kl = kl_with_ci(obj.value(m), *ci) if ci is not None else f"{obj.value(m):.3g}"
        lines.append(
            f"{s.name:<22}{s.fp8_fraction:>7.1%}{s.achieved_bits:>7.2f}  {kl:<24}"
            f"{m.get(top1, float('nan')):>8.4f}  {s.method} {s.strategy} "
            f"c={s.coverage:g}"
        )
        lines += [line for row in e["controls"] for line in control_lines(row)]
    lines += knob_lines(done.entries)
    if done.verdict_rule:
        lines += wrap(rule_line(done.verdict_rule), WIDTH)
    k = done.selection.knee
    if k is not None:
        lines += wrap(
            f"knee of the front, exported as '{KNEE}': {k.fp8_fraction:.1%} FP8, "
            f"{k.achieved_bits:.2f} bits, {obj.label} {sci(obj.value(k.metrics))} "
            f"({k.method} {k.strategy} c={k.coverage:g})",
            WIDTH,
        )
    if done.correlation:
        rho = ", ".join(f"{m} {v:.2f}" for m, v in done.correlation.items())
        if done.within_share:
            rho += "; among the plans of one budget: " + ", ".join(
                f"{m} {v:.2f}" for m, v in done.within_share.items()
            )
        lines += wrap(
            f"summed score vs measured KL over the sweep's plans (Spearman): {rho}", WIDTH
        )
    lines += [line for n in done.selection.notes for line in wrap(f"note: {n}", WIDTH)]
    lines += wrap(f"schemes: {output / 'schemes.yaml'} (plots: pareto.png, sensitivity.png)", WIDTH)
    return lines


def closing_lines(done: Finalized, output: Path, wall_seconds: float | None) -> list[str]:
    """The console's last lines: the export command, then how long the whole run took."""
    lines = export_lines(done, output)
    if wall_seconds is not None:
        lines.append(f"done in {duration(wall_seconds)} (wall time, start-up included)")
    return lines


def print_summary(results: Sequence[TrialResult], done: Finalized, output: Path) -> None:
    failed = [r for r in results if r.status != "FINISHED"]
    controls = sum(r.kind == "control" for r in results)
    print(
        f"\n{len(results) - len(failed)} trial(s) finished, {len(failed)} failed "
        f"({len(results) - controls} scored, {controls} control)"
    )
    for r in failed:
        for line in wrap(
            f"  FAILED b={r.effective_bits:g} c={r.coverage:g} {r.method} {r.label}: {r.error}",
            WIDTH,
            "    ",
        ):
            print(line)
    for line in summary_lines(done, output):
        print(line)

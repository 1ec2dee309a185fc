"""The console's closing lines: trials finished and failed, each scheme with its share, KL and
interval, its verdicts against the controls (ModelOpt's own solve first; each with the share it
reached; random as the distribution of its seeds; controls with one plan say so), the rule the
verdicts follow, the knee and the score-KL correlation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.core.records import TrialResult
from orchestrator.outputs.publish import Finalized


def _ci(v: Sequence[float]) -> str:
    return f"[{v[0]:.3g}, {v[1]:.3g}]"


def _points(diff: float) -> str:
    return f"{100 * diff:+.1f} points"


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


def control_lines(row: Mapping[str, Any]) -> list[str]:
    """One control's verdict, ratio and interval, and the share it reached (its difference from
    the scheme's); the random orders over their seeds, with a second line for the per-seed
    ratios' spread and the scheme's rank among the seeds."""
    head = f"    vs {row['control']:<14} {row['verdict']:<14}"
    if "kl_ratio" not in row:
        return [head.rstrip() + _notes(row)]
    ratio = f"KL ratio {row['kl_ratio']:.3g} {_ci(row['kl_ratio_ci'])}"
    diff = _points(row["fp8_fraction_diff"])
    if "by_seed" not in row:
        return [f"{head}{ratio} at {row['fp8_fraction']:.1%} FP8 ({diff}){_notes(row)}"]
    low, high = row["fp8_fraction_range"]
    share = f"{low:.1%}" if round(low, 3) == round(high, 3) else f"{low:.1%}-{high:.1%}"
    spread = row["seed_kl_ratio"]
    return [
        f"{head}{ratio} over {row['seeds']} seeds and the sequences, at {share} FP8 "
        f"({diff} at most)",
        f"{'':<{len(head)}}per seed {spread['min']:.3g}-{spread['max']:.3g} (median "
        f"{spread['median']:.3g}); the scheme ranks {row['scheme_rank']} of {row['seeds'] + 1}",
    ]


def rule_line(rule: Mapping[str, Any]) -> str:
    return (
        f"verdicts: better / worse when the {rule['level']:.0%} interval of the KL ratio lies "
        f"below {rule['better_below']:.3g} / above {rule['worse_above']:.3g} (margin "
        f"{rule['margin']:.0%}), equivalent inside, else inconclusive; Holm-corrected over the "
        f"{rule['comparisons']} comparisons"
    )


def summary_lines(done: Finalized, output: Path) -> list[str]:
    """The console's account of the selection: each scheme with its share, KL and CI, its
    verdict against every control measured at its share, the knee, the score-KL correlation."""
    if done.selection is None:
        return []
    obj = done.selection.objective
    top1 = f"{obj.prefix}top1_agreement"
    lines = [
        "",
        f"{'scheme':<22}{'FP8':>7}{'bits':>7}  {obj.label + ' [95% CI]':<30}{'top-1':>8}  "
        "picked from",
    ]
    for s, e in zip(done.selection.schemes, done.entries, strict=True):
        m = s.metrics
        kl = f"{obj.value(m):.3g}"
        ci = obj.ci(m)
        if ci is not None:
            kl += f" {_ci(ci)}"
        lines.append(
            f"{s.name:<22}{s.fp8_fraction:>7.1%}{s.achieved_bits:>7.2f}  {kl:<30}"
            f"{m.get(top1, float('nan')):>8.4f}  {s.method} {s.strategy} "
            f"c={s.coverage:g}"
        )
        lines += [line for row in e["controls"] for line in control_lines(row)]
        if e["knobs_differ_from_catalog"]:
            lines.append(
                "    knobs that differ from the catalog's recommendation: "
                + ", ".join(e["knobs_differ_from_catalog"])
            )
    if done.verdict_rule:
        lines.append(rule_line(done.verdict_rule))
    k = done.selection.knee
    if k is not None:
        lines.append(
            f"knee of the front: {k.fp8_fraction:.1%} FP8, {k.achieved_bits:.2f} bits, "
            f"{obj.label} {obj.value(k.metrics):.3g} ({k.method} {k.strategy} c={k.coverage:g})"
        )
    if done.correlation:
        rho = ", ".join(f"{m} {v:.2f}" for m, v in done.correlation.items())
        if done.within_share:
            rho += "; among the plans of one budget: " + ", ".join(
                f"{m} {v:.2f}" for m, v in done.within_share.items()
            )
        lines.append(f"summed score vs measured KL over the sweep's plans (Spearman): {rho}")
    lines += [f"note: {n}" for n in done.selection.notes]
    lines.append(f"schemes: {output / 'schemes.yaml'} (plots: pareto.png, sensitivity.png)")
    return lines


def print_summary(results: Sequence[TrialResult], done: Finalized, output: Path) -> None:
    failed = [r for r in results if r.status != "FINISHED"]
    controls = sum(r.kind == "control" for r in results)
    print(
        f"\n{len(results) - len(failed)} trial(s) finished, {len(failed)} failed "
        f"({len(results) - controls} scored, {controls} control)"
    )
    for r in failed:
        print(f"  FAILED b={r.effective_bits:g} c={r.coverage:g} {r.method} {r.label}: {r.error}")
    for line in summary_lines(done, output):
        print(line)

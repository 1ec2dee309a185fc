"""The console's closing lines: trials finished and failed, the numerics they ran in, each scheme
with its share, KL and interval, its verdicts against the controls, the knee and the score-KL
correlation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from orchestrator.core.records import TrialResult
from orchestrator.outputs.publish import Finalized


def _ci(v: Sequence[float]) -> str:
    return f"[{v[0]:.3g}, {v[1]:.3g}]"


def summary_lines(done: Finalized, output: Path) -> list[str]:
    """The console's account of the selection: each scheme with its share, KL and CI, its
    verdict against every control measured at its share, the knee, the score-KL correlation."""
    if done.selection is None:
        return []
    obj = done.selection.objective
    top1 = f"{obj.prefix}top1_agreement"
    lines = [
        "",
        f"numerics: {done.numerics}",
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
        for row in e["controls"]:
            if str(row["control"]).startswith("random:"):
                continue  # each seed is in schemes.yaml; the console shows them pooled
            ratio = (
                f" (KL ratio {row['kl_ratio']:.3g} {_ci(row['kl_ratio_ci'])})"
                if "kl_ratio" in row
                else ""
            )
            lines.append(f"    vs {row['control']:<14} {row['verdict']}{ratio}")
        if e["knobs_differ_from_catalog"]:
            lines.append(
                "    knobs that differ from the catalog's recommendation: "
                + ", ".join(e["knobs_differ_from_catalog"])
            )
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

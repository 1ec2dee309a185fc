"""Print the markdown quality table of a finished sweep (docs/SCHEMES.md quotes one).

    python scripts/quality_table.py runs/demo-tiny

One block per published scheme: at its FP8 share, the best measured point of every scored
(method, strategy) pair within the name's tolerance, and every control measured at the scheme's
share (the share each reached, and its difference in points), each with its KL, 95% bootstrap
interval and top-1 agreement; the controls also carry the paired KL ratio (scheme / control) with
its interval and the verdict from ``schemes.yaml``, the random orders as one row over their seeds
(an interval over seeds and sequences, the per-seed spread and the scheme's rank among them).
ModelOpt's own solve (``control modelopt``) comes first, with the budget ModelOpt was asked; a
control that holds another's plan says so before its ratio.
It reads a finished sweep and computes nothing, so it needs no ``--smoke`` path:
tests/e2e/test_sweep.py runs it on the demo's output.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from orchestrator.core.records import TrialResult
from orchestrator.outputs.tables import load_results


def _kl(m: dict) -> str:
    return f"{m['kl_mean']:.3g} [{m['kl_ci_low']:.3g}, {m['kl_ci_high']:.3g}]"


def _control(row: dict, r: TrialResult | None) -> str:
    """A control's row: the share it reached (its difference from the scheme's, in points), KL,
    top-1, the paired ratio and the verdict; the random orders as one row over their seeds."""
    same = f"same plan as {', '.join(row['same_plan_as'])}; " if row.get("same_plan_as") else ""
    asked = ""
    if "modelopt_effective_bits" in row:
        asked = f"ModelOpt asked {row['modelopt_effective_bits']:.6g} bits"
    if "kl_ratio" not in row:
        cell = f" {asked} " if asked else " "
        return f"| control {row['control']} |{cell}| | | {same}{row['verdict']} |"
    diff = f"{100 * row['fp8_fraction_diff']:+.1f}"
    lo, hi = row["kl_ci"]
    rlo, rhi = row["kl_ratio_ci"]
    ratio = f"{same}{row['kl_ratio']:.3g} [{rlo:.3g}, {rhi:.3g}]"
    if "by_seed" in row:
        slo, shi = row["fp8_fraction_range"]
        spread = row["seed_kl_ratio"]
        at = f"{slo:.1%}" if round(slo, 3) == round(shi, 3) else f"{slo:.1%}-{shi:.1%}"
        share = f"{row['seeds']} seeds, {at} ({diff} at most)"
        ratio += (
            f" over seeds and sequences; per seed {spread['min']:.3g}-{spread['max']:.3g}, "
            f"rank {row['scheme_rank']} of {row['seeds'] + 1}"
        )
        top1 = ""
    else:
        share = f"{row['fp8_fraction']:.1%} ({diff}{', ' + asked if asked else ''})"
        top1 = f"{r.metrics['top1_agreement']:.4f}" if r else ""
    return (
        f"| control {row['control']} | {share} | {row['kl_mean']:.3g} [{lo:.3g}, {hi:.3g}] | "
        f"{top1} | {ratio}: {row['verdict']} |"
    )


def main(output: Path) -> None:
    doc = yaml.safe_load((output / "schemes.yaml").read_text())
    results = [r for r in load_results(output) if r.status == "FINISHED"]
    by_hash = {r.plan_hash: r for r in results}
    for s in doc["schemes"]:
        band = s["fp8_share"]
        print(f"\n**{s['name']}** ({s['fp8_fraction']:.1%} FP8; {s['method']} {s['strategy']})\n")
        print("| plan | FP8 share | KL [95% CI] | top-1 | scheme / it: KL ratio [95% CI] |")
        print("|---|---|---|---|---|")
        scored: dict[tuple[str, str], object] = {}
        for r in sorted(results, key=lambda r: r.metrics["kl_mean"]):
            if r.kind == "trial" and abs(r.fp8_fraction - band["nominal"]) <= band["tolerance"]:
                scored.setdefault((r.method, r.strategy), r)
        for (method, strategy), r in sorted(scored.items()):
            mark = " (published)" if r.plan_hash == s["plan_hash"] else ""
            print(
                f"| {method} {strategy} c={r.coverage:g}{mark} | {r.fp8_fraction:.1%} | "
                f"{_kl(r.metrics)} | {r.metrics['top1_agreement']:.4f} | |"
            )
        for row in s["controls"]:
            print(_control(row, by_hash.get(row.get("plan_hash", ""))))
    print(f"\nverdict rule: {doc.get('verdict_rule')}")
    print(f"\nknee: {doc['knee']}; Spearman(score, KL): {doc['score_kl_spearman']}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""What MLflow's runs table and charts show of a run: rounded copies of its key numbers, in units
a person reads (``kl_x1e6`` 254.7 for a KL of 0.00025472..., ``fp8_share_pct`` 33.3), logged
beside the exact metrics, which stay as they are. No MLflow import: the numbers only.

The UI prints a metric with all its digits and names it by its key, so the key carries the unit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from orchestrator.outputs.console import kl_with_ci, sci

# display metric -> (exact metric it rounds, factor, decimals)
DISPLAY = {
    "fp8_share_pct": ("fp8_fraction", 100.0, 1),
    "kl_x1e6": ("kl_mean", 1e6, 1),
    "eff_bits": ("achieved_bits", 1.0, 2),
    "top1_pct": ("top1_agreement", 100.0, 2),
}

# each kind of run's colour in the table and the charts (the parent run: black, it has no point)
KIND_COLOURS = {"scheme": "#d62728", "trial": "#1f77b4", "control": "#7f7f7f", "sweep": "#000000"}


def display_metrics(metrics: Mapping[str, float], prefix: str = "") -> dict[str, float]:
    """The display metrics of the exact ones present (``prefix`` names another set's copy:
    ``report_kl_mean`` -> ``report_kl_x1e6``); a missing or non-finite number shows nothing."""
    out: dict[str, float] = {}
    for name, (exact, factor, decimals) in DISPLAY.items():
        value = metrics.get(prefix + exact)
        if isinstance(value, (int, float)) and math.isfinite(float(value)):
            out[prefix + name] = round(float(value) * factor, decimals)
    return out


def without_display(metrics: Mapping[str, float]) -> dict[str, float]:
    """A run's metrics as the sweep measured them: the display copies dropped."""
    shown = {n for n in metrics if any(n.endswith(d) for d in DISPLAY)}
    return {k: v for k, v in metrics.items() if k not in shown}


def _pct(x: object) -> str:
    return f"{float(x) * 100:.1f}%" if isinstance(x, (int, float)) else "-"


def verdict_table(entry: Mapping[str, object]) -> str:
    """A scheme's comparisons as a markdown table (its run's description and ``verdicts.md``):
    per control the FP8 share it reached, the KL ratio scheme / control with its 95% interval
    (below 1: the scheme loses less), Holm's p and the verdict."""
    rows = [
        "| control | FP8 share | KL ratio (95% CI; < 1: scheme better) | p (Holm) | verdict |",
        "|---|---|---|---|---|",
    ]
    controls = entry.get("controls")
    for row in controls if isinstance(controls, list) else []:
        ratio, ci = row.get("kl_ratio"), row.get("kl_ratio_ci")
        shown = (
            f"{ratio:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
            if isinstance(ratio, float) and isinstance(ci, list)
            else "-"
        )
        p = row.get("p_holm")
        rows.append(
            f"| {row['control']} | {_pct(row.get('fp8_fraction'))} | {shown} | "
            f"{f'{p:.3g}' if isinstance(p, float) else '-'} | {row['verdict']} |"
        )
    return "\n".join(rows) + "\n"


def scheme_line(entry: Mapping[str, Any], link: str) -> str:
    """One published scheme as a line of the experiment's description (markdown, plain text
    too): its name linking ``link`` (its run), FP8 share, KL and top-1 on the set it is
    published from, the verdicts against ModelOpt's own plan and random orders, and why the
    name sits there (the rationale's first sentence)."""
    m = entry.get("metrics") or {}
    kl = (
        f"KL {kl_with_ci(m['kl_mean'], m['kl_ci_low'], m['kl_ci_high'])}"
        if "kl_ci_low" in m
        else f"KL {sci(float(m.get('kl_mean', math.nan)))}"
    )
    top1 = f", top-1 {float(m['top1_agreement']) * 100:.2f}%" if "top1_agreement" in m else ""
    rows = {str(r["control"]): r for r in entry.get("controls") or []}
    against = [_against(rows[c], label) for c, label in _HEADLINE if c in rows]
    why = str(entry.get("rationale", "")).split(". ", 1)[0].split("): ", 1)[-1]
    return (
        f"- [{entry['name']}]({link}): {_pct(entry.get('fp8_fraction'))} FP8, {kl}{top1} on the "
        f"{entry.get('metrics_set', 'selection')} set"
        + (f"; {'; '.join(against)}" if against else "")
        + (f"; {why}" if why else "")
    )


# the controls a reader looks at first (README "Reading the result"), as the description says them
_HEADLINE = (("modelopt", "ModelOpt's own plan"), ("random", "random orders"))


def _against(row: Mapping[str, Any], label: str) -> str:
    ratio, rank, seeds = row.get("kl_ratio"), row.get("scheme_rank"), row.get("seeds")
    said = [f"KL ratio {ratio:.3g}"] if isinstance(ratio, float) else []
    if rank is not None and seeds:
        said.append(f"rank {rank} of {int(seeds) + 1}")
    return f"vs {label}: {row['verdict']}" + (f" ({', '.join(said)})" if said else "")

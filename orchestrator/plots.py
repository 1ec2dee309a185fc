"""pareto.png: every trial, the front, and the three published schemes labelled."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.planning import BASELINES
from orchestrator.records import NamedScheme, TrialResult


def pareto_png(
    results: Sequence[TrialResult],
    front: Sequence[str],
    schemes: Sequence[NamedScheme],
    path: Path,
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [
        r
        for r in results
        if r.status == "FINISHED" and math.isfinite(r.metrics.get("kl_mean", math.nan))
    ]
    ok = [r for r in done if r.kind == "trial"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for method, marker in (("gradient", "o"), ("kl_div", "s")):
        _scatter(
            ax,
            [r for r in ok if r.method == method],
            f"trials ({method} scores)",
            marker=marker,
            c="0.6",
            s=22,
        )
    for name, marker in zip(BASELINES, ("x", "v", "^", "d"), strict=True):
        pts = [r for r in done if r.kind == "baseline" and r.baseline.split(":")[0] == name]
        _scatter(ax, pts, f"baseline: {name}", marker=marker, c="tab:orange", s=18, alpha=0.7)
    by_hash = {r.plan_hash: r for r in ok}
    f = sorted((by_hash[h] for h in front if h in by_hash), key=lambda r: r.achieved_bits)
    if f:
        ax.plot(
            [r.achieved_bits for r in f],
            [max(r.metrics["kl_mean"], 1e-12) for r in f],
            "-",
            c="tab:blue",
            lw=1.5,
            label="Pareto front",
        )
    for s in schemes:
        y = max(s.metrics["kl_mean"], 1e-12)
        ax.scatter([s.achieved_bits], [y], c="tab:red", s=60, zorder=3)
        ax.annotate(
            s.name, (s.achieved_bits, y), textcoords="offset points", xytext=(6, 6), fontsize=8
        )
    ax.set_xlabel("effective bits over eligible LM weights (lower = smaller)")
    ax.set_ylabel("mean KL(BF16 || quantized) per token")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _scatter(ax: Any, points: Sequence[TrialResult], label: str, **style: Any) -> None:
    if points:
        ax.scatter(
            [r.achieved_bits for r in points],
            [max(r.metrics["kl_mean"], 1e-12) for r in points],
            label=label,
            **style,
        )

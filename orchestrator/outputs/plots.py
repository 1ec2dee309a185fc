"""pareto.png (every trial with its error bar, the front, the three schemes and the controls
measured at their shares, on the selection objective's KL) and sensitivity.png (the scores as
decoder block x group kind)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from orchestrator.core.objectives import KL_MEAN, Objective
from orchestrator.core.records import KINDS, NamedScheme, ScoreTable, TrialResult
from orchestrator.outputs.files import atomic_path

_CONTROL_MARKERS = {"random": "x", "inverse": "v", "ends_fixed": "^", "attn_bf16": "d"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_png(
    results: Sequence[TrialResult],
    front: Sequence[str],
    schemes: Sequence[NamedScheme],
    path: Path,
    title: str,
    objective: Objective = KL_MEAN,
) -> None:
    plt = _pyplot()
    done = [
        r for r in results if r.status == "FINISHED" and math.isfinite(objective.value(r.metrics))
    ]
    ok = [r for r in done if r.kind == "trial"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for method, marker in (("gradient", "o"), ("kl_div", "s")):
        _scatter(
            ax,
            [r for r in ok if r.method == method],
            f"trials ({method} scores)",
            objective,
            marker=marker,
            c="0.6",
            ms=4,
        )
    for name, marker in _CONTROL_MARKERS.items():
        pts = [r for r in done if r.kind == "control" and r.control.split(":")[0] == name]
        _scatter(
            ax, pts, f"control: {name}", objective, marker=marker, c="tab:orange", ms=5, alpha=0.8
        )
    by_hash = {r.plan_hash: r for r in ok}
    f = sorted((by_hash[h] for h in front if h in by_hash), key=lambda r: r.achieved_bits)
    if f:
        ax.plot(
            [r.achieved_bits for r in f],
            [max(objective.value(r.metrics), 1e-12) for r in f],
            "-",
            c="tab:blue",
            lw=1.5,
            label="Pareto front",
        )
    for s in schemes:
        y = max(objective.value(s.metrics), 1e-12)
        ax.scatter([s.achieved_bits], [y], c="tab:red", s=60, zorder=3)
        ax.annotate(
            s.name, (s.achieved_bits, y), textcoords="offset points", xytext=(6, 6), fontsize=8
        )
    ax.set_xlabel("effective bits over eligible LM weights (lower = smaller)")
    where = "image answer token" if objective.prefix else "token"
    ax.set_ylabel(f"mean KL(BF16 || quantized)\nper {where}, 95% CI")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix[1:])
    plt.close(fig)


def _scatter(
    ax: Any, points: Sequence[TrialResult], label: str, objective: Objective, **style: Any
) -> None:
    """Points with their bootstrap interval as a vertical bar (where the trial has one)."""
    if not points:
        return
    ys = [max(objective.value(r.metrics), 1e-12) for r in points]
    cis = [objective.ci(r.metrics) or (y, y) for r, y in zip(points, ys, strict=True)]
    low = [y - max(lo, 1e-12) for (lo, _), y in zip(cis, ys, strict=True)]
    high = [max(hi, y) - y for (_, hi), y in zip(cis, ys, strict=True)]
    ax.errorbar(
        [r.achieved_bits for r in points],
        ys,
        yerr=[low, high],
        fmt=style.pop("marker"),
        label=label,
        elinewidth=0.6,
        capsize=1.5,
        ls="none",
        color=style.pop("c"),
        **style,
    )


def sensitivity_png(tables: Iterable[ScoreTable], path: Path, title: str) -> None:
    """One heat map per scoring setup: decoder block (rows) x group kind (columns), log10 score
    normalised per setup, so the blocks and kinds a method finds sensitive stand out."""
    import numpy as np

    tables = sorted(tables, key=lambda t: (t.method, t.fp8_recipe))
    if not tables:
        return
    plt = _pyplot()
    blocks = max(t.num_blocks for t in tables)
    fig, axes = plt.subplots(
        1, len(tables), figsize=(2.2 + 2.4 * len(tables), 1.2 + 0.22 * blocks), dpi=120
    )
    for ax, t in zip(np.atleast_1d(axes), tables, strict=True):
        grid = np.full((t.num_blocks, len(KINDS)), np.nan)
        for g in t.groups:
            grid[g.block, KINDS.index(g.kind)] = g.score
        positive = grid[np.isfinite(grid) & (grid > 0)]
        floor = positive.min() if positive.size else 1.0
        shown = np.log10(np.where(np.isfinite(grid), np.maximum(grid, floor), np.nan))
        im = ax.imshow(shown, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_xticks(range(len(KINDS)), KINDS, fontsize=7)
        ax.set_yticks(range(t.num_blocks), [str(b) for b in range(t.num_blocks)], fontsize=6)
        ax.set_ylabel("decoder block", fontsize=8)
        ax.set_title(f"{t.method} ({t.fp8_recipe.removesuffix('_CFG')})", fontsize=8)
        fig.colorbar(im, ax=ax, label="log10 score", shrink=0.8)
    fig.suptitle(f"{title}: FP8 sensitivity per group", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix[1:])
    plt.close(fig)

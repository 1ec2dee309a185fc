"""pareto.png and sensitivity.png: the two pictures a user reads before any table.

pareto.png answers "how much KL does each FP8 share cost, and are the published schemes better
than a choice made without the scores?". The x axis is the FP8 share of the eligible LM weights,
the names' own unit, with effective bits (16 - 8 x share) on a top axis; the y axis is the
selection objective's mean KL(BF16 || quantized) in nats per target token (the worker's per-token
KL of log-softmaxes, natural log), on a log scale when the points span a decade. Scored trials are
coloured by scoring method; the front and its knee (selection's own rule, re-applied to the front
the selection returned) are drawn over them; each control is drawn just right of the scheme whose
share it was planned for (its own share is that one to within a group), in that scheme's colour
and joined to it, so the vertical gap (a ratio, on a log axis) is what the verdicts test.

sensitivity.png shows what the plans are made from: ModelOpt AutoQuantize's per-group score
(higher = FP8 hurts that group more), decoder block x group kind, one panel per scoring method,
with each scheme's FP8 groups outlined in the scheme's colour and line style.

Each figure is built by one function and saved by :func:`save`, so tests read the matplotlib
objects without a file.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.core.objectives import KL_MEAN, Objective
from orchestrator.core.planning import plan_for
from orchestrator.core.records import (
    KINDS,
    NamedScheme,
    Point,
    ScoreTable,
    TrialResult,
    table_key,
)
from orchestrator.core.selection import knee
from orchestrator.outputs.files import atomic_path

# one marker per control kind (all random seeds share one), in the order drawn right of a scheme
CONTROL_MARKERS = {
    "modelopt": "P",
    "random": "x",
    "inverse": "v",
    "ends_fixed": "^",
    "attn_bf16": "D",
}
METHOD_COLOURS = {"gradient": "tab:blue", "kl_div": "tab:green"}
# a scheme's colour and outline style, by its place in the catalog: the same in both figures
SCHEME_STYLES = (("crimson", "-"), ("darkorange", "--"), ("darkviolet", ":"))
# what each AutoQuantize method adds up per score batch (model/scoring.py)
METHOD_MEANING = {
    "gradient": "Taylor estimate of the loss increase",
    "kl_div": "KL of the outputs with this group in FP8",
}
KNEE_LABEL = "knee of the front"
CONTROLS_NOTE = (
    "Each control is planned for its scheme's\nFP8 share and drawn just right of it,\n"
    "joined to it in the scheme's colour\n(the verdicts compare the two KLs)."
)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> None:
    """Write ``fig`` atomically in the format ``path``'s suffix names, then free it."""
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix[1:])
    plt.close(fig)


def pareto_png(
    results: Sequence[TrialResult],
    front: Sequence[str],
    schemes: Sequence[NamedScheme],
    path: Path,
    title: str,
    objective: Objective = KL_MEAN,
) -> None:
    save(pareto_figure(results, front, schemes, title, objective), path)


def sensitivity_png(
    tables: Iterable[ScoreTable], path: Path, title: str, schemes: Sequence[NamedScheme] = ()
) -> None:
    fig = sensitivity_figure(tables, title, schemes)
    if fig is not None:
        save(fig, path)


def scheme_style(i: int) -> tuple[str, str]:
    return SCHEME_STYLES[i % len(SCHEME_STYLES)]


def _share(r: TrialResult | NamedScheme) -> float:
    return 100.0 * r.fp8_fraction


def pareto_figure(
    results: Sequence[TrialResult],
    front: Sequence[str],
    schemes: Sequence[NamedScheme],
    title: str,
    objective: Objective = KL_MEAN,
) -> Any:
    """Every finished trial with its 95% interval, the front, its knee, the schemes and their
    controls, on FP8 share (%) x the objective's KL."""
    plt = _pyplot()
    done = [
        r for r in results if r.status == "FINISHED" and math.isfinite(objective.value(r.metrics))
    ]
    frame = _Frame.of(done, schemes, objective)
    fig, ax = plt.subplots(figsize=(9.5, 5.2), dpi=120)
    trials = [r for r in done if r.kind == "trial"]
    _trials(ax, trials, frame)
    _front_and_knee(ax, trials, front, frame)
    tied = _schemes_and_controls(ax, schemes, [r for r in done if r.kind == "control"], frame)
    _pareto_axes(ax, frame)
    fig.suptitle(title, fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: _legend_rank(labels[i]))
    ax.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0.0,
        markerscale=0.8,
    )
    if tied:
        ax.text(1.01, 0.0, CONTROLS_NOTE, transform=ax.transAxes, fontsize=7, va="bottom")
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class _Frame:
    """What every layer of pareto.png places its points with: the objective, a log axis when the
    KLs span a decade (a zero KL then sits at ``floor``), and the share range (for the dodge)."""

    objective: Objective
    log: bool
    floor: float
    right: float  # the largest share shown, %
    span: float  # the share range shown, % (at least 20)

    @classmethod
    def of(
        cls, done: Sequence[TrialResult], schemes: Sequence[NamedScheme], objective: Objective
    ) -> _Frame:
        points: list[TrialResult | NamedScheme] = [*done, *schemes]
        positive = [y for y in (objective.value(r.metrics) for r in points) if y > 0]
        log = bool(positive) and max(positive) >= 10 * min(positive)
        shares = [_share(r) for r in points]
        right = max(shares, default=100.0)
        span = max(right - min(shares, default=0.0), 20.0)
        return cls(objective, log, min(positive) / 2 if log else 0.0, right, span)

    def y(self, r: TrialResult | NamedScheme) -> float:
        return max(self.objective.value(r.metrics), self.floor)

    def near_right(self, share: float, fraction: float) -> bool:
        """Whether a label to the right of ``share`` would run into the legend."""
        return share > self.right - fraction * self.span


def _trials(ax: Any, trials: Sequence[TrialResult], frame: _Frame) -> None:
    """The scored trials, one colour per scoring method."""
    methods = sorted({r.method for r in trials}, key=lambda m: (m not in METHOD_COLOURS, m))
    for i, method in enumerate(methods):
        pts = [r for r in trials if r.method == method]
        _errorbar(
            ax,
            pts,
            [_share(r) for r in pts],
            frame,
            fmt="o",
            color=METHOD_COLOURS.get(method, f"C{i + 4}"),
            ms=3.5,
            alpha=0.55,
            label=f"trial, {method} scores",
        )


def _front_and_knee(
    ax: Any, trials: Sequence[TrialResult], front: Sequence[str], frame: _Frame
) -> None:
    """The front through the measurements selection kept, and its knee by selection's rule."""
    best = _best_per_plan(trials, frame.objective)
    on_front = [best[h] for h in front if h in best]
    if not on_front:
        return
    ax.plot(
        [_share(r) for r in on_front],
        [frame.y(r) for r in on_front],
        "-",
        c="0.15",
        lw=1.2,
        label="Pareto front",
        zorder=2,
    )
    k = knee(on_front, frame.objective)
    if k is None:
        return
    kx, ky = _share(k), frame.y(k)
    ax.scatter(
        [kx], [ky], s=230, facecolors="none", edgecolors="black", lw=1.6, zorder=5, label=KNEE_LABEL
    )
    right_end = frame.near_right(kx, 0.3)
    ax.annotate(
        f"knee: {kx:.0f}% FP8, {k.achieved_bits:.2f} bits",
        (kx, ky),
        textcoords="offset points",
        xytext=(8 if right_end else 12, -30),
        ha="center" if right_end else "left",
        fontsize=8,
        arrowprops={"arrowstyle": "-", "color": "black", "lw": 0.8},
    )


def _schemes_and_controls(
    ax: Any, schemes: Sequence[NamedScheme], controls: Sequence[TrialResult], frame: _Frame
) -> set[int]:
    """Each scheme as a star in its colour, and each control measured at its share (the point
    ``Point.control_at`` gives) dodged to its right, one slot per control kind, joined to it.
    Controls of no published scheme (a re-selection that bound other trials) stay grey at their
    own share. Returns the indices of the controls tied to a scheme."""
    step = 0.022 * frame.span
    tied: set[int] = set()
    for i, s in enumerate(schemes):
        colour, _ = scheme_style(i)
        sx, sy = _share(s), frame.y(s)
        ax.scatter(
            [sx],
            [sy],
            marker="*",
            s=210,
            c=colour,
            edgecolors="black",
            lw=0.6,
            zorder=6,
            label=f"{s.name} ({sx:.0f}% FP8) + its controls",
        )
        right_end = frame.near_right(sx, 0.15)
        ax.annotate(
            s.name,
            (sx, sy),
            textcoords="offset points",
            xytext=(-9 if right_end else 9, -12),
            ha="right" if right_end else "left",
            fontsize=8,
            color=colour,
            bbox={"fc": "white", "ec": "none", "alpha": 0.8},
        )
        for slot, kind in enumerate(CONTROL_MARKERS, start=1):
            mine = [
                j
                for j, r in enumerate(controls)
                if j not in tied
                and _kind(r) == kind
                and Point.of(r) == Point.control_at(s, r.control)
            ]
            tied.update(mine)
            x = sx + slot * step
            for j in mine:
                ax.plot([sx, x], [sy, frame.y(controls[j])], ":", c=colour, lw=0.8, zorder=3)
            pts = [controls[j] for j in mine]
            _errorbar(ax, pts, [x] * len(pts), frame, fmt=CONTROL_MARKERS[kind], color=colour, ms=5)
    for kind, marker in CONTROL_MARKERS.items():
        loose = [r for j, r in enumerate(controls) if j not in tied and _kind(r) == kind]
        _errorbar(ax, loose, [_share(r) for r in loose], frame, fmt=marker, color="0.45", ms=5)
        if any(_kind(r) == kind for r in controls):
            ax.plot([], [], marker, c="0.2", ls="none", label=f"control: {kind}")
    return tied


def _pareto_axes(ax: Any, frame: _Frame) -> None:
    """FP8 share below, effective bits above (``planning.bits_for_fp8_share``, on arrays and
    past 0-100 % where the axis runs), KL in nats with its direction."""
    sec = ax.secondary_xaxis("top", functions=(lambda x: 16 - 0.08 * x, lambda b: (16 - b) / 0.08))
    sec.set_xlabel("effective bits over eligible LM weights (16 - 8 x share)", fontsize=9)
    ax.set_xlabel("FP8 share of eligible LM weights (%)  -  more FP8 = smaller model", fontsize=9)
    where = "image answer token" if frame.objective.modality else "token"
    ax.set_ylabel(
        f"mean KL(BF16 || quantized), nats per {where}\nbars: 95% CI; lower = closer to BF16",
        fontsize=9,
    )
    if frame.log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)


def _legend_rank(label: str) -> int:
    """Trials, the front and its knee, the schemes, then the control kinds."""
    for rank, start in enumerate(("trial", "Pareto", KNEE_LABEL, "control")):
        if label.startswith(start):
            return rank if start != "control" else 4
    return 3


def _kind(r: TrialResult) -> str:
    return r.control.split(":")[0]


def _best_per_plan(trials: Sequence[TrialResult], objective: Objective) -> dict[str, TrialResult]:
    """The measurement selection keeps for a plan measured more than once: least KL, then fewest
    bits, then hash (``selection._unique_plans``), so the front and the knee drawn are its own."""
    best: dict[str, TrialResult] = {}
    for r in sorted(
        trials, key=lambda r: (objective.value(r.metrics), r.achieved_bits, r.plan_hash)
    ):
        best.setdefault(r.plan_hash, r)
    return best


def _errorbar(
    ax: Any, points: Sequence[TrialResult], xs: Sequence[float], frame: _Frame, **style: Any
) -> None:
    """Points at ``xs`` with their bootstrap interval as a vertical bar (where the trial has
    one); a KL below the frame's floor (zero, on a log axis) sits on it."""
    if not points:
        return
    ys = [frame.y(r) for r in points]
    cis = [frame.objective.ci(r.metrics) or (y, y) for r, y in zip(points, ys, strict=True)]
    low = [max(y - max(lo, frame.floor), 0.0) for (lo, _), y in zip(cis, ys, strict=True)]
    high = [max(hi - y, 0.0) for (_, hi), y in zip(cis, ys, strict=True)]
    ax.errorbar(xs, ys, yerr=[low, high], elinewidth=0.6, capsize=1.5, ls="none", **style)


def sensitivity_figure(
    tables: Iterable[ScoreTable], title: str, schemes: Sequence[NamedScheme] = ()
) -> Any | None:
    """One heat map per scoring setup: decoder block (rows) x group kind (columns), log10 of the
    AutoQuantize score, each scheme's FP8 groups (its plan's) outlined; None without a table."""
    import numpy as np

    tables = sorted(tables, key=lambda t: (t.method, t.fp8_recipe))
    if not tables:
        return None
    plt = _pyplot()
    by_key = {table_key(t.method, t.fp8_recipe): t for t in tables}
    # (catalog place, scheme, its FP8 groups), largest set first: drawn outermost, so the sets
    # nested in it stay visible inside
    outlined = sorted(
        (
            (i, s, frozenset(plan_for(Point.of(s), by_key).fp8_groups))
            for i, s in enumerate(schemes)
            if table_key(s.method, s.fp8_recipe) in by_key
        ),
        key=lambda o: (-len(o[2]), o[0]),
    )
    blocks = max(t.num_blocks for t in tables)
    height = 1.9 + 0.24 * blocks
    fig, axes = plt.subplots(1, len(tables), figsize=(2.6 + 2.9 * len(tables), height), dpi=120)
    for ax, t in zip(np.atleast_1d(axes), tables, strict=True):
        _heat_map(fig, ax, t)
        for depth, (i, s, groups) in enumerate(outlined):
            _outline(ax, t, groups, i, s.name, inset=0.05 + 0.11 * depth)
    fig.suptitle(
        f"{title}: FP8 sensitivity per group (ModelOpt AutoQuantize score, one per method)",
        fontsize=9,
    )
    if not outlined:
        fig.tight_layout()
        return fig
    by_place = sorted(outlined, key=lambda o: o[0])
    fig.legend(
        [_outline_patch(i) for i, _, _ in by_place],
        [
            f"{s.name}: {len(groups)} groups in FP8 ({_share(s):.0f}% of eligible LM weights)"
            for _, s, groups in by_place
        ],
        loc="lower center",
        fontsize=7,
        frameon=False,
    )
    fig.tight_layout(rect=(0, (0.05 + 0.16 * len(outlined)) / height, 1, 1))
    return fig


def _heat_map(fig: Any, ax: Any, t: ScoreTable) -> None:
    """log10 of each group's score (a zero at the least positive one), darker = more sensitive."""
    import numpy as np

    grid = np.full((t.num_blocks, len(KINDS)), np.nan)
    for g in t.groups:
        grid[g.block, KINDS.index(g.kind)] = g.score
    positive = grid[np.isfinite(grid) & (grid > 0)]
    floor = positive.min() if positive.size else 1.0
    shown = np.log10(np.where(np.isfinite(grid), np.maximum(grid, floor), np.nan))
    lo, hi = (np.nanmin(shown), np.nanmax(shown)) if np.isfinite(shown).any() else (0.0, 1.0)
    # the top of the grey scale held back, so a coloured outline reads on the darkest cell
    im = ax.imshow(
        shown,
        aspect="auto",
        cmap="Greys",
        interpolation="nearest",
        vmin=lo,
        vmax=hi + 0.35 * (hi - lo),
    )
    ax.set_xticks(range(len(KINDS)), KINDS, fontsize=7)
    ax.set_yticks(range(t.num_blocks), [str(b) for b in range(t.num_blocks)], fontsize=6)
    ax.set_ylabel("decoder block", fontsize=8)
    meaning = METHOD_MEANING.get(t.method, "")
    ax.set_title(
        f"{t.method} scores ({t.fp8_recipe.removesuffix('_CFG')})"
        + (f"\n{meaning}" if meaning else ""),
        fontsize=8,
    )
    bar = fig.colorbar(im, ax=ax, shrink=0.85)
    bar.set_label("log10 score: higher = more sensitive to FP8", fontsize=7)
    bar.ax.tick_params(labelsize=6)


def _outline(
    ax: Any, t: ScoreTable, groups: Collection[str], place: int, name: str, inset: float
) -> None:
    """One rectangle per FP8 group of a scheme, ``inset`` into its cell; ``gid`` names the
    scheme."""
    cells = {g.name: (g.block, KINDS.index(g.kind)) for g in t.groups}
    for group in sorted(set(groups) & set(cells)):
        row, col = cells[group]
        patch = _outline_patch(place, (col - 0.5 + inset, row - 0.5 + inset), 1 - 2 * inset)
        patch.set_gid(f"fp8:{name}")
        ax.add_patch(patch)


def _outline_patch(place: int, corner: tuple[float, float] = (0, 0), size: float = 1) -> Any:
    from matplotlib.patches import Rectangle

    colour, style = scheme_style(place)
    return Rectangle(corner, size, size, fill=False, edgecolor=colour, ls=style, lw=1.3)

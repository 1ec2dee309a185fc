"""Pick three Pareto-representative schemes from finished trials and name them from the catalog.

Objectives, both minimised: achieved effective bits (compression) and mean KL to BF16 (quality
loss). Only finished trials with finite metrics and at least one FP8 module count; points above the
quality cap (``max_kl``) are dropped before the front is built.

Roles, on the front normalised to [0, 1] on each axis:

* aggressive: fewest bits;
* conservative: least KL;
* balanced: the knee, the point farthest from the line joining those two extremes.

Ties break on (KL, bits, plan hash), so the same trials always give the same schemes. A catalog
name promises an FP8 share (``fp8_fraction`` band): when the role's pick falls outside its name's
band, the front point inside the band nearest to the pick is published instead; with none on the
front, the best (least KL) feasible point inside the band; the rationale says which happened. When
no feasible point fits a name, or the front has fewer than three points, :class:`SelectionError`
says which and why (the sweep exits 3). Pure module: numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from orchestrator.config import Catalog, CatalogScheme
from orchestrator.records import NamedScheme, TrialResult


class SelectionError(RuntimeError):
    """Fewer than three feasible Pareto points, or a catalog name no point can honestly carry."""


@dataclass(frozen=True)
class Selection:
    schemes: tuple[NamedScheme, ...]
    front: tuple[str, ...]  # plan hashes on the front, fewest bits first
    notes: tuple[str, ...]


def _sort_key(r: TrialResult) -> tuple[float, float, str]:
    return (r.metrics["kl_mean"], r.achieved_bits, r.plan_hash)


def feasible(results: Sequence[TrialResult], max_kl: float | None) -> list[TrialResult]:
    """Finished trials with finite metrics, some FP8, and KL within the cap."""
    out = []
    for r in results:
        if r.status != "FINISHED" or r.kind != "trial" or r.fp8_fraction <= 0:
            continue
        kl = r.metrics.get("kl_mean", math.nan)
        if not (math.isfinite(kl) and math.isfinite(r.achieved_bits)):
            continue
        if max_kl is not None and kl > max_kl:
            continue
        out.append(r)
    return out


def pareto_front(points: np.ndarray) -> np.ndarray:
    """Indices of non-dominated rows of an (n, 2) array, both columns minimised."""
    n = len(points)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        le = np.all(points <= points[i], axis=1)
        lt = np.any(points < points[i], axis=1)
        if np.any(le & lt):
            keep[i] = False
    return np.flatnonzero(keep)


def _unique_plans(results: Sequence[TrialResult]) -> list[TrialResult]:
    best: dict[str, TrialResult] = {}
    for r in sorted(results, key=_sort_key):
        best.setdefault(r.plan_hash, r)
    return sorted(best.values(), key=lambda r: (r.achieved_bits, *_sort_key(r)))


def _normalise(front: Sequence[TrialResult]) -> np.ndarray:
    xy = np.array([[r.achieved_bits, r.metrics["kl_mean"]] for r in front], dtype=float)
    lo, span = xy.min(axis=0), np.ptp(xy, axis=0)
    return (xy - lo) / np.where(span > 0, span, 1.0)


def role_picks(front: Sequence[TrialResult]) -> dict[str, int]:
    """Index into ``front`` (sorted fewest bits first) of each role's pick."""
    keys = [_sort_key(r) for r in front]
    aggressive = min(range(len(front)), key=lambda i: (front[i].achieved_bits, keys[i]))
    conservative = min(range(len(front)), key=lambda i: keys[i])
    xy = _normalise(front)
    a, c = xy[aggressive], xy[conservative]
    line = c - a
    norm = float(np.hypot(*line))
    if norm == 0:
        dist = np.zeros(len(front))
    else:
        dist = np.abs(line[0] * (xy[:, 1] - a[1]) - line[1] * (xy[:, 0] - a[0])) / norm
    balanced = min(range(len(front)), key=lambda i: (-round(float(dist[i]), 12), keys[i]))
    return {"aggressive": aggressive, "conservative": conservative, "balanced": balanced}


def _in_band(r: TrialResult, s: CatalogScheme) -> bool:
    return s.fp8_fraction.min - 1e-9 <= r.fp8_fraction <= s.fp8_fraction.max + 1e-9


def _bind(
    scheme: CatalogScheme,
    pick: int,
    front: Sequence[TrialResult],
    pool: Sequence[TrialResult],
) -> tuple[TrialResult, str]:
    band = f"{scheme.fp8_fraction.min:.0%}-{scheme.fp8_fraction.max:.0%} FP8"
    chosen = front[pick]
    if _in_band(chosen, scheme):
        return chosen, f"the {scheme.role} point of the front"
    xy = _normalise(front)
    fits = [i for i, r in enumerate(front) if _in_band(r, scheme)]
    if fits:
        i = min(fits, key=lambda i: (float(np.hypot(*(xy[i] - xy[pick]))), _sort_key(front[i])))
        return front[i], (
            f"the {scheme.role} pick ({chosen.fp8_fraction:.0%} FP8) is outside the name's {band}; "
            "this is the nearest front point inside it"
        )
    fits_pool = sorted((r for r in pool if _in_band(r, scheme)), key=_sort_key)
    if fits_pool:
        return fits_pool[0], (
            f"no front point has {band}; this is the least-KL feasible point that does "
            "(dominated on the front)"
        )
    raise SelectionError(
        f"no feasible trial has {band} for '{scheme.name}'; add grid points at "
        f"effective_bits ~ {16 - 8 * (scheme.fp8_fraction.min + scheme.fp8_fraction.max) / 2:.1f} "
        "with enough coverage, or relax selection.max_kl"
    )


def _rationale(r: TrialResult, scheme: CatalogScheme, how: str) -> str:
    m = r.metrics
    return (
        f"{scheme.name} ({scheme.role}): {how}. {r.fp8_fraction:.0%} of eligible LM weights in FP8 "
        f"({r.achieved_bits:.2f} effective bits, asked {r.effective_bits:g}, coverage {r.coverage:g}, "
        f"{r.method} scores); KL {m['kl_mean']:.3g}, top-1 agreement "
        f"{m.get('top1_agreement', math.nan):.4f}."
    )


def select(
    results: Sequence[TrialResult], catalog: Catalog, max_kl: float | None = None
) -> Selection:
    pool = _unique_plans(feasible(results, max_kl))
    if not pool:
        raise SelectionError(
            "no feasible trial: every trial failed, had no FP8 module, or exceeded max_kl"
        )
    xy = np.array([[r.achieved_bits, r.metrics["kl_mean"]] for r in pool], dtype=float)
    front = [pool[i] for i in sorted(pareto_front(xy), key=lambda i: (xy[i, 0], xy[i, 1]))]
    notes = []
    if len(front) < 3:
        raise SelectionError(
            f"only {len(front)} feasible Pareto point(s) ({', '.join(r.plan_hash for r in front)}) "
            f"out of {len(pool)} feasible plan(s): the other points are dominated or were "
            "dropped (failed, all-BF16, above max_kl); widen the grid"
        )
    picks = role_picks(front)
    if len({picks[k] for k in picks}) < 3:
        notes.append("degenerate front: two roles share one point before the catalog bands apply")
    schemes = []
    for s in catalog.schemes:
        r, how = _bind(s, picks[s.role], front, pool)
        schemes.append(
            NamedScheme(
                name=s.name,
                role=s.role,
                plan_hash=r.plan_hash,
                method=r.method,
                fp8_recipe=r.fp8_recipe,
                effective_bits=r.effective_bits,
                coverage=r.coverage,
                achieved_bits=r.achieved_bits,
                fp8_fraction=r.fp8_fraction,
                metrics=dict(r.metrics),
                mlflow_run_id=r.mlflow_run_id,
                rationale=_rationale(r, s, how),
            )
        )
    if len({s.plan_hash for s in schemes}) < 3:
        notes.append("two names share one plan: the catalog bands overlap on this front")
    return Selection(tuple(schemes), tuple(r.plan_hash for r in front), tuple(notes))

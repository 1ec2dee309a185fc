"""Name three schemes from finished trials by the FP8 share each name promises; report the knee.

Objectives, both minimised: achieved effective bits (compression) and mean KL to BF16 (quality
loss): over all target tokens (``kl_mean``, the default) or over image answers only
(``image_kl_mean``; ``orchestrator.core.objectives``). Only finished scored trials with finite
metrics and at least one FP8 module count (controls never do); points above the quality cap
(``max_kl``, on the same KL) are dropped before the front is built. Every
scored strategy, method and coverage competes on one front, so the point published at a share is
the best plan the sweep measured there, whichever way it was made.

A catalog name promises an FP8 share (``fp8_share``: nominal +- tolerance of the eligible LM
weights). Per name:

1. the front point whose share is nearest the nominal share, within the tolerance (lower KL, then
   the plan hash, breaks ties);
2. with no front point inside, the least-KL feasible point inside (the rationale says so);
3. with none, :class:`SelectionError` says why and what to change: only what the grid lacks, else
   what kept out the trials in the band, else the band (the sweep exits 3; :func:`unbound`).

Roles (conservative, balanced, aggressive) are descriptions of the names. The knee of the front,
the point farthest from the line joining its two extremes on the front normalised to [0, 1] per
axis, is reported beside the schemes so a user sees where the curve bends. Pure module: numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from orchestrator.core.config import Catalog, CatalogScheme, SearchConfig
from orchestrator.core.objectives import KL_MEAN, REPORT, Objective
from orchestrator.core.points import grid_lacks
from orchestrator.core.records import NamedScheme, TrialResult


class SelectionError(RuntimeError):
    """No feasible trial, or a catalog name no measured point can honestly carry."""


SWEEP_RELAX = (
    "python -m orchestrator.select --output <this sweep's folder> --max-kl <higher> re-selects "
    "without rerunning"
)


@dataclass(frozen=True)
class CapAdvice:
    """How the user set ``selection.max_kl`` and how to relax it, for exit 3's advice when the cap
    keeps a name out.

    ``given`` is the flag as the user typed it (``--max-kl 1e-09``, ``--set
    selection.max_kl=1e-9``) or where the value was written; ``relax`` is the command that
    re-selects with another cap. The default is the sweep's: its config's ``selection.max_kl``,
    relaxed by ``select``, since a sweep rerun with another cap is another config hash, which its
    ``--output`` refuses.
    """

    given: str = "selection.max_kl"
    relax: str = SWEEP_RELAX


SWEEP_CAP = CapAdvice()


def _over_cap(max_kl: float | None, advice: CapAdvice, least: str = "") -> str:
    """What the cap is, where it was set and how to relax it, for an exit-3 message; ``least``
    adds the least KL measured."""
    return f"exceed max_kl={max_kl:g} ({advice.given}{least}); relax it: {advice.relax}"


@dataclass(frozen=True)
class Selection:
    schemes: tuple[NamedScheme, ...]
    front: tuple[str, ...]  # plan hashes on the front, fewest bits first
    notes: tuple[str, ...]
    knee: TrialResult | None = None  # where the front bends (None with fewer than 3 points)
    objective: Objective = KL_MEAN  # the KL the front and the picks were made on


def _sort_key(r: TrialResult, obj: Objective) -> tuple[float, float, str]:
    return (obj.value(r.metrics), r.achieved_bits, r.plan_hash)


def feasible(
    results: Sequence[TrialResult], max_kl: float | None, obj: Objective = KL_MEAN
) -> list[TrialResult]:
    """Finished trials with finite metrics, some FP8, and KL within the cap."""
    out = []
    for r in results:
        if r.status != "FINISHED" or r.kind != "trial" or r.fp8_fraction <= 0:
            continue
        kl = obj.value(r.metrics)
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


def _unique_plans(results: Sequence[TrialResult], obj: Objective) -> list[TrialResult]:
    best: dict[str, TrialResult] = {}
    for r in sorted(results, key=lambda r: _sort_key(r, obj)):
        best.setdefault(r.plan_hash, r)
    return sorted(best.values(), key=lambda r: (r.achieved_bits, *_sort_key(r, obj)))


def _normalise(front: Sequence[TrialResult], obj: Objective) -> np.ndarray:
    xy = np.array([[r.achieved_bits, obj.value(r.metrics)] for r in front], dtype=float)
    lo, span = xy.min(axis=0), np.ptp(xy, axis=0)
    scaled: np.ndarray = (xy - lo) / np.where(span > 0, span, 1.0)  # numpy types this Any
    return scaled


def knee(front: Sequence[TrialResult], obj: Objective = KL_MEAN) -> TrialResult | None:
    """The front point farthest from the line joining fewest bits and least KL (normalised axes);
    None when the front has fewer than three points, where no bend can be told."""
    if len(front) < 3:
        return None
    keys = [_sort_key(r, obj) for r in front]
    fewest = min(range(len(front)), key=lambda i: (front[i].achieved_bits, keys[i]))
    least = min(range(len(front)), key=lambda i: keys[i])
    xy = _normalise(front, obj)
    a, c = xy[fewest], xy[least]
    line = c - a
    norm = float(np.hypot(*line))
    if norm == 0:
        return None
    dist = np.abs(line[0] * (xy[:, 1] - a[1]) - line[1] * (xy[:, 0] - a[0])) / norm
    return front[min(range(len(front)), key=lambda i: (-round(float(dist[i]), 12), keys[i]))]


def bind(
    scheme: CatalogScheme,
    front: Sequence[TrialResult],
    pool: Sequence[TrialResult],
    obj: Objective = KL_MEAN,
) -> tuple[TrialResult, str] | None:
    """The point a name is published on, and how it was chosen (for the rationale); None when no
    feasible point has the name's share."""
    band = scheme.fp8_share
    nearest = sorted(
        (r for r in front if band.contains(r.fp8_fraction)),
        key=lambda r: (abs(r.fp8_fraction - band.nominal), *_sort_key(r, obj)),
    )
    if nearest:
        return nearest[0], f"the front point nearest {band.nominal:.0%} FP8"
    inside = sorted(
        (r for r in pool if band.contains(r.fp8_fraction)), key=lambda r: _sort_key(r, obj)
    )
    if inside:
        return inside[0], (
            f"no front point has {band}; this is the least-{obj.label} measured point that "
            "does (dominated on the front)"
        )
    return None


def unbound(
    scheme: CatalogScheme,
    results: Sequence[TrialResult],
    max_kl: float | None,
    obj: Objective = KL_MEAN,
    grid: SearchConfig | None = None,
    *,
    cap_advice: CapAdvice = SWEEP_CAP,
) -> str:
    """Why no feasible trial has a name's share, and what would change that.

    Advice names only what is not already so: a budget or coverage the grid (``grid``; without it,
    what the trials asked for) lacks; what kept out each trial whose plan is in the band (failed,
    no finite KL, over ``max_kl``, named and relaxed as ``cap_advice`` says, no FP8); and, when
    the grid asks for the share but every plan lands outside the band (plans take whole module
    groups), the band itself.
    """
    band = scheme.fp8_share
    trials = [r for r in results if r.kind == "trial"]
    bits = grid.effective_bits if grid is not None else [r.effective_bits for r in trials]
    covs = grid.coverage if grid is not None else [r.coverage for r in trials]
    lacks = grid_lacks(band, bits, covs)
    advice = [f"add {' and '.join(lacks)} to the grid"] if lacks else []
    inside = [r for r in trials if band.contains(r.fp8_fraction)]
    done = [r for r in inside if r.status == "FINISHED"]
    finite = [r for r in done if math.isfinite(obj.value(r.metrics))]
    over = [
        obj.value(r.metrics) for r in finite if max_kl is not None and obj.value(r.metrics) > max_kl
    ]
    least = f"; least {obj.metric} there {min(over):.3g}" if over else ""
    kept_out = (
        (len(inside) - len(done), "failed (see trials.parquet; a rerun on this --output retries)"),
        (len(done) - len(finite), f"have no finite {obj.metric}"),
        (sum(r.fp8_fraction <= 0 for r in finite), "hold no FP8 module"),
        (len(over), _over_cap(max_kl, cap_advice, least) if over else ""),
    )
    advice += [f"{n} trial(s) in the band {why}" for n, why in kept_out if n]
    if not inside and not lacks:
        shares = [r.fp8_fraction for r in trials]
        near = [
            max((f for f in shares if f < band.nominal), default=None),
            min((f for f in shares if f > band.nominal), default=None),
        ]
        seen = " and ".join(f"{f:.1%}" for f in near if f is not None)
        advice.append(
            "the grid asks for it, but no plan lands in the band"
            + (f" (nearest: {seen} FP8)" if seen else "")
            + f"; a plan takes whole module groups, so widen '{scheme.name}' fp8_share.tolerance "
            "in selection.catalog"
        )
    return f"no feasible trial has {band} for '{scheme.name}'; " + "; ".join(advice)


def _none_feasible(
    results: Sequence[TrialResult], max_kl: float | None, obj: Objective, cap_advice: CapAdvice
) -> str:
    """Why no trial is feasible: each reason with its count, the cap with the least KL measured."""
    trials = [r for r in results if r.kind == "trial"]
    done = [r for r in trials if r.status == "FINISHED"]
    finite = [r for r in done if math.isfinite(obj.value(r.metrics))]
    fp8 = [r for r in finite if r.fp8_fraction > 0]
    over = [r for r in fp8 if max_kl is not None and obj.value(r.metrics) > max_kl]
    reasons = [
        (len(trials) - len(done), "failed (see trials.parquet; a rerun on this --output retries)"),
        (len(done) - len(finite), f"have no finite {obj.metric}"),
        (len(finite) - len(fp8), "hold no FP8 module"),
    ]
    said = [f"{n} {why}" for n, why in reasons if n]
    if over:
        least = f"; least {obj.metric} measured {min(obj.value(r.metrics) for r in over):.3g}"
        said.append(f"{len(over)} {_over_cap(max_kl, cap_advice, least)}")
    return f"no feasible trial among {len(trials)}: " + ("; ".join(said) or "no trial ran")


def _rationale(r: TrialResult, scheme: CatalogScheme, how: str, obj: Objective) -> str:
    """Why the name sits on this point, and its numbers: the report set's (the published ones)
    when the trial measured one, the selection set's (which chose it) beside them."""
    m = r.metrics
    chosen_on = f" (chosen on {obj.label}: {obj.value(m):.3g})" if obj.modality else ""
    chosen = f"KL {m['kl_mean']:.3g}, top-1 agreement {m.get('top1_agreement', math.nan):.4f}"
    if f"{REPORT}kl_mean" in m:
        numbers = (
            f"on the report set KL {m[REPORT + 'kl_mean']:.3g}, top-1 agreement "
            f"{m.get(REPORT + 'top1_agreement', math.nan):.4f} (on the selection set it was "
            f"chosen on: {chosen})"
        )
    else:
        numbers = f"{chosen} (selection set)"
    return (
        f"{scheme.name} ({scheme.role}): {how}{chosen_on}. {r.fp8_fraction:.1%} of eligible LM "
        f"weights in FP8 ({r.achieved_bits:.2f} effective bits, asked {r.effective_bits:g}, "
        f"coverage {r.coverage:g}, strategy {r.strategy}, {r.method} scores); {numbers}."
    )


def front_of(
    results: Sequence[TrialResult], max_kl: float | None, obj: Objective = KL_MEAN
) -> tuple[list[TrialResult], list[TrialResult]]:
    """(pool of distinct feasible plans, its Pareto front fewest bits first)."""
    pool = _unique_plans(feasible(results, max_kl, obj), obj)
    xy = np.array([[r.achieved_bits, obj.value(r.metrics)] for r in pool], dtype=float)
    idx = pareto_front(xy) if len(pool) else np.array([], dtype=int)
    return pool, [pool[i] for i in sorted(idx, key=lambda i: (xy[i, 0], xy[i, 1]))]


def select(
    results: Sequence[TrialResult],
    catalog: Catalog,
    max_kl: float | None = None,
    objective: Objective = KL_MEAN,
    grid: SearchConfig | None = None,
    *,
    cap_advice: CapAdvice = SWEEP_CAP,
) -> Selection:
    """The three names bound to measured points; ``grid`` (the sweep's search section) lets the
    error for an unbound name say what the grid lacks rather than what the trials asked for, and
    ``cap_advice`` names where ``max_kl`` was set and how to relax it when the cap keeps one out."""
    pool, front = front_of(results, max_kl, objective)
    if not pool:
        raise SelectionError(_none_feasible(results, max_kl, objective, cap_advice))
    schemes = []
    for s in catalog.schemes:
        picked = bind(s, front, pool, objective)
        if picked is None:
            raise SelectionError(
                unbound(s, results, max_kl, objective, grid, cap_advice=cap_advice)
            )
        r, how = picked
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
                rationale=_rationale(r, s, how, objective),
                strategy=r.strategy,
            )
        )
    notes = []
    if len({s.plan_hash for s in schemes}) < len(schemes):
        notes.append("two names share one plan: their share bands overlap on this front")
    return Selection(
        tuple(schemes),
        tuple(r.plan_hash for r in front),
        tuple(notes),
        knee(front, objective),
        objective,
    )

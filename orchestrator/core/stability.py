"""How stable the three names are when calibration, scoring and selection see other text.

``scripts/stability.py`` runs the same sweep k times, each on another draw of the calibration,
scoring and selection windows (``data.draw``; the report set stays, so every KL below is measured
on the same documents), and hands each run's published schemes here. Per name: the FP8 share of
each run, how much the module sets overlap (Jaccard |A n B| / |A u B| over every pair of runs:
1 when every run picks the same modules) and the spread of the report-set KL (lowest, highest,
and (highest - lowest) / mean). Pure module: the standard library only.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations


@dataclass(frozen=True)
class Published:
    """One run's scheme: its modules, its FP8 share and its KL on the report set."""

    modules: frozenset[str]
    fp8_fraction: float
    kl: float


@dataclass(frozen=True)
class NameStability:
    name: str
    runs: int
    fp8_fractions: tuple[float, ...]
    jaccard_mean: float
    jaccard_min: float
    same_plan_runs: int  # runs whose module set equals the first run's
    kl_mean: float
    kl_min: float
    kl_max: float
    kl_spread: float  # (max - min) / mean

    def to_dict(self) -> dict[str, object]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """|a n b| / |a u b|; two empty sets are the same set (1)."""
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def name_stability(name: str, runs: Sequence[Published]) -> NameStability:
    if not runs:
        raise ValueError(f"{name}: no run published it")
    pairs = [jaccard(a.modules, b.modules) for a, b in combinations(runs, 2)] or [1.0]
    kls = [r.kl for r in runs]
    mean = statistics.fmean(kls)
    return NameStability(
        name=name,
        runs=len(runs),
        fp8_fractions=tuple(r.fp8_fraction for r in runs),
        jaccard_mean=statistics.fmean(pairs),
        jaccard_min=min(pairs),
        same_plan_runs=sum(r.modules == runs[0].modules for r in runs),
        kl_mean=mean,
        kl_min=min(kls),
        kl_max=max(kls),
        kl_spread=(max(kls) - min(kls)) / mean if mean else 0.0,
    )


def stability(runs: Sequence[Mapping[str, Published]]) -> list[NameStability]:
    """Per name published by every run (in the first run's order), its stability over the runs;
    a name some run did not publish is left out (the caller says which)."""
    if not runs:
        return []
    names = [n for n in runs[0] if all(n in r for r in runs)]
    return [name_stability(n, [r[n] for r in runs]) for n in names]

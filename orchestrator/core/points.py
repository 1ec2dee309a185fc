"""Which points a sweep runs, and in which round. Pure: score tables and config in, points out.

Round 1, the grid: every (scoring method, FP8 recipe) setup x effective bits x coverage x scored
strategy, resolved to its plan; a plan reached from several points is measured once (the first
point in a fixed order keeps it), so the grid's size says little about its cost.

Round 2, the paired round: once the names are bound, every control is planned at each published
scheme's exact FP8 share (with that scheme's scores, for the control that reads them backwards),
and the plans no trial has measured yet become points of their own. They are measured on the same
sequences as the scheme, which is what makes the comparison paired.

A point is a plain dict (``POINT_KEYS`` plus its ``plan_hash``): it travels through Ray Tune's
grid and back unchanged.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from orchestrator.core.config import Catalog, SearchConfig
from orchestrator.core.planning import (
    bits_for_fp8_share,
    control_plan,
    fp8_share_for_bits,
    make_plan,
)
from orchestrator.core.records import NamedScheme, ScoreTable

POINT_KEYS = ("method", "fp8_recipe", "effective_bits", "coverage", "strategy", "control")


def table_key(method: str, recipe: str) -> str:
    return f"{method}|{recipe}"


def point(
    method: str,
    recipe: str,
    bits: float,
    coverage: float,
    strategy: str = "solve",
    control: str = "",
) -> dict[str, Any]:
    return {
        "method": method,
        "fp8_recipe": recipe,
        "effective_bits": bits,
        "coverage": coverage,
        "strategy": "" if control else strategy,
        "control": control,
    }


def grid_points(
    search: SearchConfig, tables: Sequence[ScoreTable]
) -> tuple[list[dict[str, Any]], int]:
    """(one point per distinct plan of the grid, the grid's size)."""
    seen: set[str] = set()
    points = []
    total = 0
    for table in sorted(tables, key=lambda t: (t.method, t.fp8_recipe)):
        for strategy in search.strategies:
            for bits in sorted(search.effective_bits, reverse=True):
                for cov in sorted(search.coverage, reverse=True):
                    total += 1
                    h = make_plan(table, bits, cov, strategy).plan_hash
                    if h not in seen:
                        seen.add(h)
                        p = point(table.method, table.fp8_recipe, bits, cov, strategy)
                        points.append({**p, "plan_hash": h})
    return points, total


def control_points(
    tables: Mapping[str, ScoreTable],
    schemes: Iterable[NamedScheme],
    specs: Sequence[str],
    measured: Collection[str],
) -> list[dict[str, Any]]:
    """Each control at each scheme's exact share, for the plans nothing has measured yet."""
    seen = set(measured)
    out = []
    for s in schemes:
        table = tables[table_key(s.method, s.fp8_recipe)]
        for spec in specs:
            plan = control_plan(table, spec, s.achieved_bits)
            if plan is None or plan.plan_hash in seen:
                continue
            seen.add(plan.plan_hash)
            p = point(s.method, s.fp8_recipe, s.achieved_bits, 1.0, control=spec)
            out.append({**p, "plan_hash": plan.plan_hash})
    return out


def unreachable_names(search: SearchConfig, catalog: Catalog) -> list[str]:
    """One line per catalog name that no grid point can reach; empty when every name can."""
    problems = []
    for s in catalog.schemes:
        band = s.fp8_share
        bits = [b for b in search.effective_bits if band.contains(fp8_share_for_bits(b))]
        covs = [c for c in search.coverage if c >= band.nominal - band.tolerance - 1e-9]
        if bits and covs:
            continue
        want = bits_for_fp8_share(band.nominal)
        problems.append(
            f"search.effective_bits={search.effective_bits} with search.coverage="
            f"{search.coverage} cannot reach {s.name} ({band}); add effective_bits {want:g}"
            + ("" if covs else f" and a coverage >= {band.nominal - band.tolerance:g}")
        )
    return problems

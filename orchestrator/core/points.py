"""Which points a sweep runs, and in which round. Pure: score tables and config in, points out.

Round 1, the grid: every (scoring method, FP8 recipe) setup x effective bits x coverage x scored
strategy, resolved to its plan; a plan reached from several points is measured once (the first
point in a fixed order keeps it), so the grid's size says little about its cost.

Round 2, the paired round: once the names are bound, every control is planned at each published
scheme's FP8 share (as near as the control's groups can make it; with that scheme's scores, for
the control that reads them backwards), and the plans no trial has measured yet become points of
their own. They are measured on the same sequences as the scheme, which is what makes the
comparison paired.

A point is a frozen ``Point`` (``orchestrator.core.records``); ``planning.plan_for`` gives its plan,
and Ray Tune carries its dict form through the grid and back.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from orchestrator.core.config import Catalog, SearchConfig, ShareBand
from orchestrator.core.planning import (
    Unreachable,
    bits_for_fp8_share,
    fp8_share_for_bits,
    plan_for,
)
from orchestrator.core.records import NamedScheme, Point, ScoreTable, table_key


def _grid(search: SearchConfig, table: ScoreTable) -> Iterable[Point]:
    """The grid's points of one setup, in the fixed order that decides which point keeps a plan."""
    for strategy in search.strategies:
        for bits in sorted(search.effective_bits, reverse=True):
            for cov in sorted(search.coverage, reverse=True):
                yield Point(
                    method=table.method,
                    fp8_recipe=table.fp8_recipe,
                    effective_bits=bits,
                    coverage=cov,
                    strategy=strategy,
                )


def grid_points(search: SearchConfig, tables: Mapping[str, ScoreTable]) -> tuple[list[Point], int]:
    """(one point per distinct plan of the grid, the grid's size)."""
    seen: set[str] = set()
    points = []
    total = 0
    for table in sorted(tables.values(), key=lambda t: (t.method, t.fp8_recipe)):
        for p in _grid(search, table):
            total += 1
            h = plan_for(p, tables).plan_hash
            if h not in seen:
                seen.add(h)
                points.append(p)
    return points, total


def grid_plans(search: SearchConfig, table: ScoreTable) -> tuple[frozenset[str], ...]:
    """The FP8 groups of every grid point's plan of one setup, in grid order: what the adaptive
    scoring budget (``core/budget.py``) watches for changes."""
    tables = {table_key(table.method, table.fp8_recipe): table}
    return tuple(frozenset(plan_for(p, tables).fp8_groups) for p in _grid(search, table))


def control_points(
    tables: Mapping[str, ScoreTable],
    schemes: Iterable[NamedScheme],
    specs: Sequence[str],
    measured: Collection[str],
) -> list[Point]:
    """Each control at each scheme's share, for the plans nothing has measured yet."""
    seen = set(measured)
    out = []
    for s in schemes:
        for spec in specs:
            p = Point.control_at(s, spec)
            try:
                h = plan_for(p, tables).plan_hash
            except Unreachable:
                continue
            if h not in seen:
                seen.add(h)
                out.append(p)
    return out


def unreachable_names(search: SearchConfig, catalog: Catalog) -> list[str]:
    """One line per catalog name that no grid point can reach; empty when every name can."""
    problems = []
    for s in catalog.schemes:
        lacks = grid_lacks(s.fp8_share, search.effective_bits, search.coverage)
        if lacks:
            problems.append(
                f"search.effective_bits={search.effective_bits} with search.coverage="
                f"{search.coverage} cannot reach {s.name} ({s.fp8_share}); "
                f"add {' and '.join(lacks)}"
            )
    return problems


def grid_lacks(
    band: ShareBand, effective_bits: Collection[float], coverage: Collection[float]
) -> list[str]:
    """What a grid must add to reach ``band``: a budget inside it, a coverage that leaves room for
    it, both or neither (empty). Names only what is missing, so advice never repeats the grid."""
    out = []
    if not any(band.contains(fp8_share_for_bits(b)) for b in effective_bits):
        out.append(f"effective_bits {bits_for_fp8_share(band.nominal):g}")
    floor = band.nominal - band.tolerance
    if not any(c >= floor - 1e-9 for c in coverage):
        out.append(f"a coverage >= {max(floor, 0.0):g}")
    return out

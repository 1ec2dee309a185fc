"""ModelOpt's own AutoQuantize solve at a published scheme's share: the ``modelopt`` control.

The sweep re-solves every budget itself (``orchestrator.core.planning``: an exact knapsack for
``gradient``, ModelOpt's ascending-score prefix for ``kl_div``), so a new budget costs microseconds.
This control asks ModelOpt instead, which is what a user of ModelOpt alone would deploy: the search
state saved with each score table (raw per-group scores and costs) goes to
``mtq.get_auto_quantize_config`` with an ``effective_bits`` constraint, and the weight quantizers it
enables are the plan. Nothing is rescaled: ``gradient`` scores of about 1e-8 reach ModelOpt's CBC
solve as they are, and whatever it returns is measured and compared.

The budget. ModelOpt reads effective bits over its cost denominator: a plan fits when its summed
cost (a group's weights times its format's compression, 0.5 for FP8, 1 for none) is at most
``denominator * bits / 16``. The project reads them over the eligible LM weights
(``planning.fp8_share_for_bits``). The sweep keeps every other module out of the cost
(``scoring.run_auto_quantize``), so the denominator is the eligible weights and the two scales
coincide; the budget is still computed from the state, as the smallest value that, in ModelOpt's
own floating point, admits exactly the scheme's FP8 weights (a rounding ulp would otherwise cost
a group), and both numbers are recorded.

The sweep calls :func:`with_modelopt_solves` once per run, after the names are bound and before
the paired round; the group names land in the score table's meta (``planning.with_modelopt_solve``)
where pure code (the trials, ``select``) reads them without ModelOpt.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from orchestrator.core.planning import (
    MODELOPT,
    fp8_share_for_bits,
    modelopt_solve,
    with_modelopt_solve,
)
from orchestrator.core.records import NamedScheme, Point, ScoreTable, table_key
from orchestrator.model.scoring import cache_path, state_from_json
from orchestrator.outputs.console import log_wrapped
from orchestrator.outputs.tables import read_search_state

log = logging.getLogger(__name__)

_NO_QUANT = "NONE"


def _group_stats(state: Mapping[str, Any], table: ScoreTable) -> list[Mapping[str, Any]]:
    """The search state's entries of the table's groups (the eligible ones; disabled modules
    have entries too, with no FP8 choice)."""
    eligible = {m for g in table.groups for m in g.modules}
    return [s for s in state["candidate_stats"].values() if set(s["module_names"]) & eligible]


def modelopt_budget(state: Mapping[str, Any], table: ScoreTable, effective_bits: float) -> float:
    """The ``effective_bits`` to give ModelOpt for the FP8 share of ``effective_bits`` on the
    project's scale: the smallest value whose ``denominator * (bits / 16)`` (ModelOpt's product)
    admits that share's FP8 weights."""
    stats = state["candidate_stats"]
    denominator = float(
        state.get("cost_denominator")
        or sum(s.get("uncompressed_cost", max(s["costs"])) for s in stats.values())
    )
    saving = 0.0  # what every eligible group in FP8 takes off the cost
    for s in _group_stats(state, table):
        costs = dict(zip(s["formats"], s["costs"], strict=True))
        saving += costs[_NO_QUANT] - min(c for f, c in costs.items() if f != _NO_QUANT)
    total = table.eligible_params
    fp8_params = round(fp8_share_for_bits(effective_bits) * total)
    target = denominator - saving * fp8_params / total
    bits = 16.0 * target / denominator
    while denominator * (bits / 16.0) < target:
        bits = math.nextafter(bits, math.inf)
    return bits


def modelopt_groups(
    state: Mapping[str, Any], table: ScoreTable, effective_bits: float
) -> tuple[list[str], float]:
    """(the groups ModelOpt's own solve puts in FP8 for the share of ``effective_bits``, the
    effective bits ModelOpt was given), from the search state ``scoring.state_to_json`` saved."""
    import modelopt.torch.quantization as mtq

    bits = modelopt_budget(state, table, effective_bits)
    with warnings.catch_warnings():  # "returned config uses algorithm='max'": we read modules
        warnings.simplefilter("ignore")
        cfg = mtq.get_auto_quantize_config(state_from_json(state), {"effective_bits": bits})
    enabled = {
        e["quantizer_name"].removesuffix(".weight_quantizer")
        for e in cfg["quant_cfg"]
        if e.get("enable", True) and e["quantizer_name"].endswith(".weight_quantizer")
    }
    by_module = {m: g for g in table.groups for m in g.modules}
    stray = sorted(enabled - set(by_module))
    split = sorted(
        g.name
        for g in {by_module[m] for m in enabled - set(stray)}
        if not set(g.modules) <= enabled
    )
    if stray or split:
        raise RuntimeError(
            f"ModelOpt's solve at {bits:g} bits enables modules outside the eligible groups "
            f"{stray[:3]} or splits groups {split[:3]}"
        )
    return sorted({by_module[m].name for m in enabled}), bits


def with_modelopt_solves(
    tables: Mapping[str, ScoreTable], schemes: Iterable[NamedScheme], cache_dir: Path
) -> dict[str, ScoreTable]:
    """``tables`` with ModelOpt's own solve stored at each scheme's share, in the scheme's own
    (method, recipe) table, from that table's search state in the score cache."""
    out = dict(tables)
    states: dict[str, dict[str, Any]] = {}
    for s in schemes:
        key = table_key(s.method, s.fp8_recipe)
        bits = Point.control_at(s, MODELOPT).effective_bits
        table = out[key]
        if modelopt_solve(table, bits) is not None:
            continue
        if key not in states:
            states[key] = read_search_state(cache_path(cache_dir, table.key))
        t0 = time.perf_counter()
        groups, given = modelopt_groups(states[key], table, bits)
        out[key] = with_modelopt_solve(table, bits, groups, given)
        log_wrapped(
            log,
            f"ModelOpt's own solve for {s.name} ({s.method} scores, {s.fp8_fraction:.1%} FP8): "
            f"effective_bits {given:.6g} to ModelOpt, {len(groups)} of {len(table.groups)} "
            f"groups in FP8, {time.perf_counter() - t0:.2f}s",
        )
    return out

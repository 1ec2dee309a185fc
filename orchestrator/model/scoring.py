"""AutoQuantize sensitivity scoring, run once per setup and cached by a content hash.

One ``mtq.auto_quantize`` call with FP8 as the only format ranks every eligible group of the
language model. The vision tower and ``lm_head`` are kept out of the search (``disabled_layers``)
*and* out of the cost (``excluded_module_name_patterns``); otherwise their weights would join the
effective-bits denominator and every budget would mean something else. The result is a
:class:`ScoreTable` saved as Parquet with ModelOpt's search state (JSON) in its metadata, under a
key that hashes the model, profile, data, method, steps, the adaptive budget's rule, FP8 recipe and
library versions: a second request with the same key reads the file and never rescores; a truncated
file or one holding another key is recomputed.

The sweep scores a setup in one or more shards (:func:`score_shard`, one per GPU): every shard
calibrates on the same batches (without their padding) and scores its own share, and
:func:`merge_shards` adds the per-batch sums up; :func:`score` is the same search in one piece, with
its cache. With the adaptive budget (``core/budget.py``) the shards come chunk by chunk, and the
driver stops sending chunks once the plans they decide stop changing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orchestrator.core.budget import BudgetRule
from orchestrator.core.records import ScoreGroup, ScoreTable, stable_hash
from orchestrator.model.batches import Batch, target_ids, target_logits, unpadded
from orchestrator.model.batches import batches as make_batches
from orchestrator.model.data import TokenSet
from orchestrator.model.families import ModelProfile
from orchestrator.model.loading import lm_param_count, model_param_count
from orchestrator.model.scoring_forward import ForwardStep, scoring_step
from orchestrator.outputs.tables import CorruptTable, read_scores, write_scores
from orchestrator.runtime.host import library_versions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoringSetup:
    """Everything that decides a score table; its hash is the cache key.

    ``reuse_prefix`` (kl_div: start each quantized forward at its first quantized block, see
    :mod:`orchestrator.model.scoring_forward`) is how the table is computed, not what it holds: the
    same blocks run the same kernels on the same inputs, so the scores are the same bits, and
    it stays out of the key (a table scored either way serves both).
    """

    model_source: str
    model_revision: str | None
    profile: str
    score_data_hash: str
    method: str
    fp8_recipe: str
    num_calib_steps: int
    num_score_steps: int
    reuse_prefix: bool = True
    # the adaptive budget (``core/budget.py``): batches per chunk, chunks without a plan change
    # whose regret exceeds ``tolerance`` before scoring stops; patience 0 scores all
    chunk: int = 4
    patience: int = 0
    tolerance: float = 0.0

    def rule(self) -> BudgetRule:
        return BudgetRule(self.num_score_steps, self.chunk, self.patience, self.tolerance)

    def key(self) -> str:
        rule = ("reuse_prefix", "chunk", "patience", "tolerance")
        what = {k: v for k, v in self.__dict__.items() if k not in rule}
        return stable_hash({**what, "budget": self.rule().key(), "versions": library_versions()})


def cache_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / f"scores-{key}.parquet"


def load_cached(cache_dir: Path, setup: ScoringSetup) -> ScoreTable | None:
    """The stored table for this setup, or None when absent or unusable (then it is recomputed)."""
    path = cache_path(cache_dir, setup.key())
    if not path.exists():
        return None
    try:
        return read_scores(path, expect_key=setup.key())
    except CorruptTable as e:
        log.warning("score cache %s is unusable (%s); rescoring", path, e)
        return None


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), input_ids[:, 1:].reshape(-1)
    )


def _loss_func(output: torch.Tensor, batch: Batch) -> torch.Tensor:
    if batch.targets is None:
        return next_token_loss(output, batch.input_ids)
    return nn.functional.cross_entropy(output.float(), target_ids(batch))


def _on_targets(step: ForwardStep) -> ForwardStep:
    """The forward step on a :class:`Batch`'s model inputs (the same dict every time a batch comes
    round, which prefix reuse keys on); logits of the target tokens only when the batch has image
    rows, so AutoQuantize's KL and loss see neither padding nor prompt tokens."""

    def forward(model: nn.Module, batch: Batch) -> torch.Tensor:
        logits = step(model, batch.inputs)
        return logits if batch.targets is None else target_logits(logits, batch)

    return forward


class PhasedBatches:
    """AutoQuantize's data loader: calibration batches on its first pass, score batches after.

    ``mtq.auto_quantize`` (0.47) reads its loader from the start once to calibrate (the first
    ``num_calib_steps`` batches, one pass for the one FP8 format) and once to score (the first
    ``num_score_steps``). The calibration pass gets the first score batches without their padding
    (:func:`~orchestrator.model.batches.unpadded`; a text-only set's are the score batches
    themselves),
    with ``num_calib_steps`` their count. A shard must calibrate exactly like the unsharded run,
    so that its per-batch scores are the unsharded run's, and score only its own batches;
    ``tests/integration/test_scoring.py`` checks that the shards' sums equal one unsharded run.
    """

    def __init__(self, calib: Sequence[Any], score: Sequence[Any]) -> None:
        self.calib, self.score, self.passes = list(calib), list(score), 0

    def __iter__(self) -> Any:
        phase = self.calib if self.passes == 0 else self.score
        self.passes += 1
        return iter(phase)


def shard_indices(num_score_steps: int, shards: int) -> list[list[int]]:
    """The score batches split into ``shards`` contiguous, nearly equal, non-empty pieces."""
    shards = max(1, min(shards, num_score_steps))
    base, extra = divmod(num_score_steps, shards)
    out, start = [], 0
    for i in range(shards):
        size = base + (1 if i < extra else 0)
        out.append(list(range(start, start + size)))
        start += size
    return out


def merge_shards(parts: Sequence[tuple[ScoreTable, Mapping[str, Any]]]) -> tuple[ScoreTable, dict]:
    """One table and search state from per-shard ones: AutoQuantize scores are sums over batches.

    Both methods add one term per score batch (``gradient``: the Taylor estimate, ``kl_div``: the
    KL of that batch), so the shards' scores add up to the unsharded run's, up to rounding.
    """
    tables = [t for t, _ in parts]
    first, state0 = parts[0]
    for t, st in parts[1:]:
        if [g.modules for g in t.groups] != [g.modules for g in first.groups] or set(
            st["candidate_stats"]
        ) != set(state0["candidate_stats"]):
            raise RuntimeError("score shards disagree on the groups they scored")
    groups = tuple(
        replace(g, score=sum(t.groups[i].score for t in tables)) for i, g in enumerate(first.groups)
    )
    stats = {
        name: {
            **s,
            "scores": [
                sum(st["candidate_stats"][name]["scores"][j] for _, st in parts)
                for j in range(len(s["scores"]))
            ],
        }
        for name, s in state0["candidate_stats"].items()
    }
    meta = {
        **{k: v for k, v in first.meta.items() if k != "score_batches"},
        "seconds": sum(float(t.meta.get("seconds", 0.0)) for t in tables),
        "shards": len(parts),
        "shard_seconds": [float(t.meta.get("seconds", 0.0)) for t in tables],
        "shard_batches": [list(t.meta.get("score_batches", [])) for t in tables],
    }
    return replace(first, groups=groups, meta=meta), {**state0, "candidate_stats": stats}


def run_auto_quantize(
    model: nn.Module,
    profile: ModelProfile,
    data: TokenSet,
    setup: ScoringSetup,
    device: str,
    effective_bits: float = 16.0,
    score_indices: Sequence[int] | None = None,
) -> dict[str, Any]:
    """One AutoQuantize search on ``model`` (modified in place); returns ModelOpt's search state.

    Scoring asks for 16 bits (no budget) and re-solves every budget later in ``planning``; a lower
    ``effective_bits`` is the plain one-run-per-budget use of ModelOpt that the benchmark times.
    ``score_indices`` scores only those batches (one shard), after calibrating on the same
    ``num_calib_steps`` first batches as an unsharded run, without their padding.
    """
    import modelopt.torch.quantization as mtq

    batches = make_batches(data, device)
    calib = [part for b in batches[: setup.num_calib_steps] for part in unpadded(b)]
    score_steps = setup.num_score_steps
    if score_indices is not None:
        batches = [batches[i] for i in score_indices]
        score_steps = len(score_indices)
    excluded = list(profile.family.never_quantize)
    extra = {"loss_func": _loss_func} if setup.method == "gradient" else {}
    budget = {"effective_bits": effective_bits}
    label = f"{setup.method}/{setup.fp8_recipe}"
    if score_indices is not None:
        label += f" batches {score_indices[0]}-{score_indices[-1]}"
    with scoring_step(model, setup.method, setup.reuse_prefix, label, score_steps) as step:
        _, state = mtq.auto_quantize(
            model,
            constraints={**budget, "cost": {"excluded_module_name_patterns": excluded}},
            quantization_formats=[setup.fp8_recipe],
            data_loader=PhasedBatches(calib, batches),
            forward_step=_on_targets(step),
            disabled_layers=excluded,
            num_calib_steps=len(calib),
            num_score_steps=score_steps,
            method=setup.method,
            verbose=False,
            **extra,
        )
    return state


def state_to_json(state: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of ModelOpt's search state needed to re-solve a budget, as plain JSON."""
    stats = {}
    for name, s in state["candidate_stats"].items():
        stats[name] = {
            "formats": [str(f).split("(")[0] for f in s["formats"]],
            "scores": [float(x) for x in s["scores"]],
            "costs": [float(x) for x in s["costs"]],
            "module_names": list(s["module_names"]),
            "quantizer_attrs": {
                k: list(v) for k, v in dict(s.get("quantizer_attrs") or {}).items()
            },
            "cost_weight": float(s.get("cost_weight", 1.0)),
            "uncompressed_cost": float(s.get("uncompressed_cost", max(s["costs"]))),
            "allow_no_quant": bool(s.get("allow_no_quant", True)),
            "is_fixed": bool(s.get("is_fixed", False)),
        }
    return {
        "method": state["method"],
        "cost_model": state.get("cost_model", "weight"),
        "cost": dict(state.get("cost") or {}),
        "cost_denominator": state.get("cost_denominator"),
        "disabled_layers": list(state.get("disabled_layers") or []),
        "candidate_stats": stats,
    }


def state_from_json(state: Mapping[str, Any]) -> dict[str, Any]:
    """Rebuild a search state that ``mtq.get_auto_quantize_config`` accepts."""
    from modelopt.torch.quantization.algorithms import QuantRecipe

    def recipe(name: str) -> Any:
        return QuantRecipe(None if name == "NONE" else name)

    stats = {
        name: {**s, "formats": [recipe(f) for f in s["formats"]]}
        for name, s in state["candidate_stats"].items()
    }
    return {**state, "candidate_stats": stats, "fixed_quantization_config": None}


def table_from_state(
    state: Mapping[str, Any],
    model: nn.Module,
    profile: ModelProfile,
    setup: ScoringSetup,
    meta: dict,
) -> ScoreTable:
    """Per-group FP8 scores of the eligible groups, in the profile's group naming."""
    eligible = {m.name: m for m in profile.eligible_modules(model)}
    groups = []
    for stat in state["candidate_stats"].values():
        modules = [m for m in stat["module_names"] if m in eligible]
        if not modules:
            continue
        if len(modules) != len(stat["module_names"]):
            raise RuntimeError(f"AutoQuantize group {stat['module_names']} mixes eligible modules")
        fp8 = [i for i, f in enumerate(stat["formats"]) if f != "NONE"]
        if len(fp8) != 1:
            raise RuntimeError(
                f"group {modules} has formats {stat['formats']}, expected FP8 + NONE"
            )
        first = eligible[modules[0]]
        groups.append(
            ScoreGroup(
                name=first.group,
                modules=tuple(sorted(modules)),
                block=first.block,
                kind=first.kind,
                params=sum(eligible[m].params for m in modules),
                score=float(stat["scores"][fp8[0]]),
            )
        )
    missing = set(eligible) - {m for g in groups for m in g.modules}
    if missing:
        raise RuntimeError(f"AutoQuantize did not score eligible modules {sorted(missing)[:3]}")
    groups.sort(key=lambda g: (g.block, g.kind, g.name))
    return ScoreTable(
        key=setup.key(),
        method=setup.method,
        fp8_recipe=setup.fp8_recipe,
        groups=tuple(groups),
        num_blocks=len({g.block for g in groups}),
        model_params=model_param_count(model),
        lm_params=lm_param_count(model),
        meta=meta,
    )


def _meta(setup: ScoringSetup) -> dict[str, Any]:
    return {
        "score_data_hash": setup.score_data_hash,
        "num_score_steps": setup.num_score_steps,
        "num_calib_steps": setup.num_calib_steps,
        "model_source": setup.model_source,
        "versions": library_versions(),
    }


def save(table: ScoreTable, state: Mapping[str, Any], cache_dir: Path) -> None:
    write_scores(table, cache_path(cache_dir, table.key), search_state=state)


def score(
    model: nn.Module,
    profile: ModelProfile,
    data: TokenSet,
    setup: ScoringSetup,
    cache_dir: Path,
    device: str = "cpu",
) -> ScoreTable:
    """The cached table for ``setup``, or one fresh AutoQuantize run (which modifies ``model``)."""
    cached = load_cached(cache_dir, setup)
    if cached is not None:
        log.info("score cache hit %s", setup.key())
        return cached
    t0 = time.perf_counter()
    state = state_to_json(run_auto_quantize(model, profile, data, setup, device))
    seconds = time.perf_counter() - t0
    table = table_from_state(state, model, profile, setup, {**_meta(setup), "seconds": seconds})
    save(table, state, cache_dir)
    log.info("scored %d groups with %s in %.1fs", len(table.groups), setup.method, seconds)
    return table


def score_shard(
    model: nn.Module,
    profile: ModelProfile,
    data: TokenSet,
    setup: ScoringSetup,
    indices: Sequence[int],
    device: str = "cpu",
) -> tuple[ScoreTable, dict[str, Any]]:
    """One shard's table and search state (not cached: :func:`merge_shards` makes the table)."""
    t0 = time.perf_counter()
    state = state_to_json(
        run_auto_quantize(model, profile, data, setup, device, score_indices=indices)
    )
    meta = {**_meta(setup), "seconds": time.perf_counter() - t0, "score_batches": list(indices)}
    return table_from_state(state, model, profile, setup, meta), state

"""A finished sweep's folder read back as the rows a person reads: the one reader of its keys.

docs/SCHEMES.md's tables are generated from a sweep's folder (``scripts/schemes_doc.py``), so
they must read what the sweep wrote and nothing else: schemes.yaml (schemes, controls, verdicts,
knee, correlations, the verdict rule, the numerics label), trials.parquet (the scored points
beside each scheme, the controls' top-1) and config.yaml (the grid). Every key is read here and
only here, each one optional: a folder written before a key existed, or after a new one was added,
still reads, and a value it lacks comes back as ``None`` (the table then says "not recorded")
rather than as an error. Two keys are expected to change shape: ``numerics`` (absent before the
label) and the evaluation set each number comes from (a ``set`` key once the evaluation is split
into a selection and a report set; metrics keyed by set read as the report set's). Nothing here
computes a number: the tables quote the sweep.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator.core.numerics import UNRECORDED
from orchestrator.core.records import TrialResult
from orchestrator.outputs.tables import load_results

REPORT_SET = "report"  # the set a verdict is judged on, preferred where metrics are keyed by set


class NotASweep(ValueError):
    """The folder holds no readable schemes.yaml: nothing to report."""


Interval = tuple[float, float]


@dataclass(frozen=True)
class Point:
    """One measured plan: the best point of a scored (method, strategy) at a scheme's share."""

    method: str
    strategy: str
    coverage: float
    share: float
    kl: float
    kl_ci: Interval | None
    top1: float | None
    published: bool


@dataclass(frozen=True)
class Control:
    """A control's row at a scheme's share, as schemes.yaml has it (random: over its seeds)."""

    control: str
    verdict: str
    share: float | None = None
    share_range: Interval | None = None  # random: the seeds' lowest and highest share
    share_diff: float | None = None  # from the scheme's share (the farthest seed for random)
    modelopt_bits: float | None = None  # the budget ModelOpt's own solve was asked
    kl: float | None = None
    kl_ci: Interval | None = None
    top1: float | None = None  # from trials.parquet, by plan hash
    ratio: float | None = None  # scheme KL / control KL
    ratio_ci: Interval | None = None
    p_holm: float | None = None
    same_plan_as: tuple[str, ...] = ()
    seeds: int | None = None
    seed_ratio: Interval | None = None  # the seeds' own ratios: lowest, highest
    rank: int | None = None  # the scheme's rank among the seeds (1 = less KL than every seed)
    set: str | None = None


@dataclass(frozen=True)
class Scheme:
    name: str
    share: float | None
    bits: float | None
    method: str
    strategy: str
    coverage: float | None
    kl: float | None
    kl_ci: Interval | None
    top1: float | None
    top1_ci: Interval | None
    set: str | None
    points: tuple[Point, ...]  # scored points at the scheme's share, the published one marked
    controls: tuple[Control, ...]  # ModelOpt's own plan first, then as schemes.yaml lists them


@dataclass(frozen=True)
class Report:
    folder: str
    sweep: str
    config_hash: str
    numerics: str
    objective: str | None
    sets: tuple[str, ...]  # the evaluation sets the numbers name; () when the sweep has one
    eval_sequences: int | None
    eval_tokens: int | None
    scored_plans: int
    control_plans: int
    grid: Mapping[str, Sequence[Any]]  # config.yaml's scoring methods and search axes
    rule: Mapping[str, Any]  # verdict_rule: margin, bounds, level, correction, comparisons
    knee: Mapping[str, Any] | None
    spearman: Mapping[str, float]
    spearman_within_share: Mapping[str, float]
    schemes: tuple[Scheme, ...]


def _mapping(d: Any, key: str) -> Mapping[str, Any]:
    v = d.get(key) if isinstance(d, Mapping) else None
    return v if isinstance(v, Mapping) else {}


def _num(d: Mapping[str, Any], key: str) -> float | None:
    v = d.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _pair(v: Any) -> Interval | None:
    if isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 2:
        lo, hi = v
        if all(isinstance(x, int | float) for x in (lo, hi)):
            return float(lo), float(hi)
    return None


def _numbers(d: Mapping[str, Any]) -> dict[str, float]:
    return {str(k): v for k in d if (v := _num(d, k)) is not None}


def _ci(d: Mapping[str, Any], metric: str) -> Interval | None:
    lo, hi = _num(d, f"{metric}_ci_low"), _num(d, f"{metric}_ci_high")
    return (lo, hi) if lo is not None and hi is not None else None


def _by_set(d: Mapping[str, Any]) -> tuple[Mapping[str, Any], str | None]:
    """Metrics as one flat mapping and the set they come from: flat metrics say it in ``set``;
    metrics keyed by set read as the report set's (else the first set's)."""
    if "kl_mean" in d or not any(isinstance(v, Mapping) for v in d.values()):
        s = d.get("set")
        return d, s if isinstance(s, str) else None
    for name in (REPORT_SET, *d):
        if isinstance(d.get(name), Mapping):
            return d[name], name
    return {}, None  # unreachable: some value is a mapping


def _control(row: Mapping[str, Any], top1: Mapping[str, float]) -> Control:
    row, set_ = _by_set(row)
    if isinstance(row.get("measured_on"), str):
        set_ = str(row["measured_on"])
    spread = _mapping(row, "seed_kl_ratio")
    lo, hi = _num(spread, "min"), _num(spread, "max")
    seeds = _num(row, "seeds")
    rank = _num(row, "scheme_rank")
    plan = row.get("plan_hash")
    return Control(
        control=str(row.get("control", "?")),
        verdict=str(row.get("verdict", "not recorded")),
        share=_num(row, "fp8_fraction"),
        share_range=_pair(row.get("fp8_fraction_range")),
        share_diff=_num(row, "fp8_fraction_diff"),
        modelopt_bits=_num(row, "modelopt_effective_bits"),
        kl=_num(row, "kl_mean"),
        kl_ci=_pair(row.get("kl_ci")),
        # a row with no KL of its own (same plan, not measured) shows no top-1 either
        top1=top1.get(plan)
        if isinstance(plan, str) and "kl_mean" in row and seeds is None
        else None,
        ratio=_num(row, "kl_ratio"),
        ratio_ci=_pair(row.get("kl_ratio_ci")),
        p_holm=_num(row, "p_holm"),
        same_plan_as=tuple(str(x) for x in row.get("same_plan_as") or ()),
        seeds=int(seeds) if seeds is not None else None,
        seed_ratio=(lo, hi) if lo is not None and hi is not None else None,
        rank=int(rank) if rank is not None else None,
        set=set_,
    )


def _part(entry: Mapping[str, Any]) -> str:
    """The trials' metric prefix of the set the scheme's numbers come from (``metrics_set``)."""
    return "report_" if entry.get("metrics_set") == REPORT_SET else ""


def _points(entry: Mapping[str, Any], results: Sequence[TrialResult]) -> tuple[Point, ...]:
    """Per scored (method, strategy), its least-KL point within the name's share tolerance, on
    the set the scheme's numbers come from."""
    band = _mapping(entry, "fp8_share")
    nominal, tolerance = _num(band, "nominal"), _num(band, "tolerance")
    if nominal is None or tolerance is None:
        return ()
    p = _part(entry)
    best: dict[tuple[str, str], TrialResult] = {}
    for r in sorted(results, key=lambda r: r.metrics.get(f"{p}kl_mean", float("inf"))):
        if r.kind == "trial" and f"{p}kl_mean" in r.metrics:
            if abs(r.fp8_fraction - nominal) <= tolerance:
                best.setdefault((r.method, r.strategy), r)
    return tuple(
        Point(
            method=method,
            strategy=strategy,
            coverage=r.coverage,
            share=r.fp8_fraction,
            kl=r.metrics[f"{p}kl_mean"],
            kl_ci=_ci(r.metrics, f"{p}kl"),
            top1=r.metrics.get(f"{p}top1_agreement"),
            published=r.plan_hash == entry.get("plan_hash"),
        )
        for (method, strategy), r in sorted(best.items())
    )


def _scheme(entry: Mapping[str, Any], results: Sequence[TrialResult]) -> Scheme:
    metrics, set_ = _by_set(_mapping(entry, "metrics"))
    if isinstance(entry.get("metrics_set"), str):
        set_ = str(entry["metrics_set"])
    key = f"{_part(entry)}top1_agreement"
    top1 = {r.plan_hash: r.metrics[key] for r in results if key in r.metrics}
    rows = [_control(row, top1) for row in entry.get("controls") or () if isinstance(row, Mapping)]
    # ModelOpt's own plan is the first control (issue 26), whatever order a file lists them in
    rows.sort(key=lambda c: c.control != "modelopt")
    return Scheme(
        name=str(entry.get("name", "?")),
        share=_num(entry, "fp8_fraction"),
        bits=_num(entry, "achieved_effective_bits") or _num(entry, "effective_bits"),
        method=str(entry.get("method", "")),
        strategy=str(entry.get("strategy", "")),
        coverage=_num(entry, "coverage"),
        kl=_num(metrics, "kl_mean"),
        kl_ci=_ci(metrics, "kl"),
        top1=_num(metrics, "top1_agreement"),
        top1_ci=_ci(metrics, "top1"),
        set=set_,
        points=_points(entry, results),
        controls=tuple(rows),
    )


def _read_yaml(path: Path) -> Mapping[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return doc if isinstance(doc, Mapping) else {}


def read_report(output: Path, folder: str | None = None) -> Report:
    """The report of the sweep in ``output``; ``folder`` is how the tables name it (default: the
    path as given). Raises NotASweep when schemes.yaml is missing or unreadable."""
    doc = _read_yaml(output / "schemes.yaml")
    if not isinstance(doc.get("schemes"), list):
        raise NotASweep(f"{output} holds no readable schemes.yaml with a schemes list")
    results = [r for r in _trials(output) if r.status == "FINISHED"]
    schemes = tuple(_scheme(e, results) for e in doc["schemes"] if isinstance(e, Mapping))
    first = _by_set(_mapping(doc["schemes"][0], "metrics"))[0] if doc["schemes"] else {}
    sets = {s.set for s in schemes} | {c.set for s in schemes for c in s.controls}
    numerics = doc.get("numerics") or next(
        (e.get("numerics") for e in doc["schemes"] if isinstance(e, Mapping) and e.get("numerics")),
        UNRECORDED,
    )
    config = _read_yaml(output / "config.yaml")
    grid = {
        "methods": _mapping(config, "scoring").get("methods") or [],
        **{
            k: _mapping(config, "search").get(k) or []
            for k in ("effective_bits", "coverage", "strategies")
        },
    }
    eval_tokens = _num(first, "eval_tokens")
    # the selection set's metrics count their sequences; the report set's are on the entry
    eval_sequences = _num(first, "eval_sequences")
    if eval_sequences is None and doc["schemes"] and isinstance(doc["schemes"][0], Mapping):
        eval_sequences = _num(doc["schemes"][0], "report_sequences")
    return Report(
        folder=folder if folder is not None else str(output),
        sweep=str(doc.get("sweep", "?")),
        config_hash=str(doc.get("config_hash", "not recorded")),
        numerics=str(numerics),
        objective=str(doc["objective"]) if doc.get("objective") else None,
        sets=tuple(sorted(s for s in sets if s)),
        eval_sequences=int(eval_sequences) if eval_sequences is not None else None,
        eval_tokens=int(eval_tokens) if eval_tokens is not None else None,
        scored_plans=len({r.plan_hash for r in results if r.kind == "trial"}),
        control_plans=len({r.plan_hash for r in results if r.kind == "control"}),
        grid=grid,
        rule=_mapping(doc, "verdict_rule"),
        knee=_mapping(doc, "knee") or None,
        spearman=_numbers(_mapping(doc, "score_kl_spearman")),
        spearman_within_share=_numbers(_mapping(doc, "score_kl_spearman_within_share")),
        schemes=schemes,
    )


def _trials(output: Path) -> list[TrialResult]:
    """trials.parquet's rows; none when the folder lacks it (the tables then show no points)."""
    return load_results(output) if (output / "trials.parquet").exists() else []

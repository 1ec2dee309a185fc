"""Frozen records that flow between the stages, each with a plain-dict round trip.

Every stage hands the next one a record, never a live object: that is what lets a score table cross
the Ray object store, a point ride through Ray Tune, a plan travel to a worker on another node, and
`orchestrator.select` re-run on an old sweep without a GPU. Pure module: stdlib only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

KINDS = ("qkv", "o", "gate_up", "down")


def stable_hash(payload: Any, length: int = 16) -> str:
    """sha256 of canonical JSON: the same content gives the same key on every host and Python."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def stable_seed(*parts: Any) -> int:
    """A 32-bit random seed from content (a sweep seed, plan hashes, names), never from order."""
    return int(stable_hash(list(parts)), 16) % (2**32)


@dataclass(frozen=True)
class ScoreGroup:
    """One AutoQuantize decision: modules that must share a format (q/k/v, gate/up) and their
    score."""

    name: str
    modules: tuple[str, ...]
    block: int
    kind: str
    params: int
    score: float


@dataclass(frozen=True)
class ScoreTable:
    """Per-group FP8 sensitivity of one model under one scoring setup, plus what is needed to
    re-solve."""

    key: str
    method: str
    fp8_recipe: str
    groups: tuple[ScoreGroup, ...]
    num_blocks: int
    model_params: int
    lm_params: int
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def eligible_params(self) -> int:
        return sum(g.params for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["groups"] = [asdict(g) for g in self.groups]
        d["meta"] = dict(self.meta)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScoreTable:
        groups = tuple(ScoreGroup(**{**g, "modules": tuple(g["modules"])}) for g in d["groups"])
        return cls(**{**d, "groups": groups, "meta": dict(d.get("meta", {}))})


def table_key(method: str, recipe: str) -> str:
    """How a sweep keys its score tables: one per (scoring method, FP8 recipe) setup."""
    return f"{method}|{recipe}"


@dataclass(frozen=True)
class Plan:
    """The exact module set in FP8 for one point of the space, and what it achieves."""

    plan_hash: str
    fp8_recipe: str
    fp8_modules: tuple[str, ...]
    fp8_groups: tuple[str, ...]
    target_bits: float
    coverage: float
    achieved_bits: float
    fp8_fraction: float
    budget_met: bool
    allowed_blocks: tuple[int, ...]
    lm_bytes: int
    model_bytes: int
    score_sum: float
    strategy: str = "solve"  # "solve", "ends_bf16:N", "mlp_only"; "control" for a control's plan

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        return cls(
            **{
                **d,
                "fp8_modules": tuple(d["fp8_modules"]),
                "fp8_groups": tuple(d["fp8_groups"]),
                "allowed_blocks": tuple(d["allowed_blocks"]),
            }
        )


def plan_hash(fp8_modules: Sequence[str], fp8_recipe: str) -> str:
    """Two specs that resolve to the same module set (and recipe) share one hash, so one trial."""
    return stable_hash({"modules": sorted(fp8_modules), "recipe": fp8_recipe})


@dataclass(frozen=True)
class TrialResult:
    """What one trial measured; `status` is FINISHED or FAILED (then `error` says why)."""

    plan_hash: str
    method: str
    fp8_recipe: str
    effective_bits: float
    coverage: float
    achieved_bits: float
    fp8_fraction: float
    status: str
    metrics: Mapping[str, float]
    mlflow_run_id: str = ""
    error: str = ""
    kind: str = "trial"  # "trial" (a scored strategy: may be published) or "control"
    strategy: str = "solve"  # of a trial: "solve", "ends_bf16:N", "mlp_only"
    control: str = ""  # of a control: "random:S", "inverse", "ends_fixed:N", "attn_bf16"
    # per evaluation sequence: summed KL ("kl"), top-1 agreements ("agree"), scored tokens
    # ("tokens"); what the error bars and the paired comparisons are computed from
    per_sequence: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    # the dtype and fused-layer scales the worker measured with (core/numerics.py); "" for a
    # trial recorded before the label existed
    numerics: str = ""

    @property
    def label(self) -> str:
        """How progress lines and tables name the point: its strategy, or ``control <spec>``."""
        return f"control {self.control}" if self.kind == "control" else self.strategy

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["metrics"] = dict(self.metrics)
        d["per_sequence"] = {k: list(v) for k, v in self.per_sequence.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrialResult:
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        seq = {k: tuple(float(x) for x in v) for k, v in (d.get("per_sequence") or {}).items()}
        return cls(**{**fields, "metrics": dict(d.get("metrics") or {}), "per_sequence": seq})


@dataclass(frozen=True)
class NamedScheme:
    """A published scheme: a catalog name bound to one finished trial, with the reason it was
    chosen."""

    name: str
    role: str
    plan_hash: str
    method: str
    fp8_recipe: str
    effective_bits: float
    coverage: float
    achieved_bits: float
    fp8_fraction: float
    metrics: Mapping[str, float]
    mlflow_run_id: str
    rationale: str
    strategy: str = "solve"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["metrics"] = dict(self.metrics)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NamedScheme:
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**{**fields, "metrics": dict(d.get("metrics") or {})})


@dataclass(frozen=True, kw_only=True)
class Point:
    """One point of the space: a scoring setup, a budget, a coverage, and either a scored
    strategy or a control. What a trial plans (``planning.plan_for``); Ray Tune carries its
    ``to_dict`` form, whose keys are the child run's parameters.

    The strategy has one rule, kept here: a scored point always names one (``"solve"`` when left
    empty), a control never does (``""``), so two spellings of one point are one point.
    """

    method: str
    fp8_recipe: str
    effective_bits: float
    coverage: float
    strategy: str = "solve"  # "solve", "ends_bf16:N", "mlp_only"; "" for a control
    control: str = ""  # "random:S", "inverse", "ends_fixed:N", "attn_bf16"; "" for a scored point

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategy", "" if self.control else self.strategy or "solve")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Point:
        """A point from its dict form, or from an Optuna sample (the same keys but ``control``)."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @classmethod
    def of(cls, r: TrialResult | NamedScheme) -> Point:
        """The point a measured trial or a published scheme (always a scored one) came from."""
        return cls(
            method=r.method,
            fp8_recipe=r.fp8_recipe,
            effective_bits=r.effective_bits,
            coverage=r.coverage,
            strategy=r.strategy,
            control=r.control if isinstance(r, TrialResult) else "",
        )

    @classmethod
    def control_at(cls, scheme: NamedScheme, spec: str) -> Point:
        """Control ``spec`` at a published scheme's share (its plan lands as near it as its
        groups can), on the scheme's scores (the paired round measures it; the verdicts compare
        the two)."""
        return cls(
            method=scheme.method,
            fp8_recipe=scheme.fp8_recipe,
            effective_bits=scheme.achieved_bits,
            coverage=1.0,
            control=spec,
        )

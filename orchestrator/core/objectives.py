"""What selection minimises beside the bits, and where each part of a trial's record holds it.

``kl_mean`` is the mean KL over every target token of the evaluation set: text windows and the
answer tokens of image+text rows weigh the same per token, so text dominates a mixed set (a
window has ~10x the targets of an answer). ``image_kl_mean`` is the mean over the answer tokens of
image+text rows only: the choice for a model deployed on image chats. Each objective names its
mean, its bootstrap interval and its per-sequence sums, so the front, the knee, the paired
comparisons, the plots and the summary all read the same numbers.

Each is measured on two sets (``orchestrator.model.data``): the selection set, on which the front
and the names are chosen (``part`` ""), and the report set, on which schemes.yaml's numbers and
verdicts are measured (``part`` :data:`REPORT`: its metrics and sums carry the prefix
``report_``, its sums are per document). :meth:`Objective.judged` is the one the verdicts use.
Pure module: stdlib only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

OBJECTIVES = ("kl_mean", "image_kl_mean")
REPORT = "report_"  # the report set's metrics and per-document sums
SETS = {"": "selection", REPORT: "report"}


@dataclass(frozen=True)
class Objective:
    metric: str = "kl_mean"
    part: str = ""  # "" the selection set, REPORT the report set

    def __post_init__(self) -> None:
        if self.metric not in OBJECTIVES:
            raise ValueError(f"objective {self.metric!r}: use one of {', '.join(OBJECTIVES)}")

    @property
    def prefix(self) -> str:
        """The metrics' and per-sequence sums' prefix: "" (all targets) or "image_", after the
        set's ("report_" on the report set)."""
        return self.part + self.metric.removesuffix("kl_mean")

    @property
    def modality(self) -> str:
        """ "" (all targets) or "image_": the prefix without the set's."""
        return self.metric.removesuffix("kl_mean")

    @property
    def set_name(self) -> str:
        return SETS[self.part]

    def judged(self, sums: Iterable[Mapping[str, Any]]) -> Objective:
        """The objective on the report set when any of these per-sequence sums has it, else on
        the selection set (a sweep run with ``data.report_batches: 0``, or from before)."""
        on_report = replace(self, part=REPORT)
        if any(on_report.per_sequence(s) for s in sums):
            return on_report
        return replace(self, part="")

    @property
    def label(self) -> str:
        return "KL on image answers" if self.modality else "KL"

    def value(self, metrics: Mapping[str, Any]) -> float:
        return float(metrics.get(self.part + self.metric, math.nan))

    def ci(self, metrics: Mapping[str, Any]) -> tuple[float, float] | None:
        low, high = f"{self.prefix}kl_ci_low", f"{self.prefix}kl_ci_high"
        return (float(metrics[low]), float(metrics[high])) if low in metrics else None

    def per_sequence(self, sums: Mapping[str, Any]) -> tuple[list[float], list[float]] | None:
        """(summed KL, target tokens) per sequence of this objective's rows; None if not kept."""
        kl, tokens = sums.get(f"{self.prefix}kl"), sums.get(f"{self.prefix}tokens")
        return (list(kl), list(tokens)) if kl and tokens else None


KL_MEAN = Objective()  # the default: every target token


def missing_rows(objective: Objective, setting: str, has_image_rows: bool) -> str | None:
    """Why ``objective`` cannot rank an evaluation set, or None when it can: the image answers'
    KL needs image+text evaluation rows. The driver asks from the data settings before anything
    starts; ``select`` and ``compare_sweeps`` ask of the finished trials' per-sequence sums.
    ``setting`` names where the objective came from (``selection.objective``, ``--objective``)."""
    if not objective.modality or has_image_rows:
        return None
    return (
        f"{setting}={objective.metric!r}: the evaluation set has no image+text rows; use kl_mean, "
        "or sweep with data.image_source (or an image+text data.source) and "
        "data.eval_image_fraction > 0"
    )

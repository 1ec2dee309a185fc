"""Hand-made records for the pure tests."""

from __future__ import annotations

from orchestrator.core.records import ScoreGroup, ScoreTable, TrialResult

SIZES = {"qkv": 8, "o": 4, "gate_up": 16, "down": 8}  # per block: 36 units


def table(
    scores: dict[tuple[int, str], float], method: str = "gradient", blocks: int = 4
) -> ScoreTable:
    groups = []
    for b in range(blocks):
        for kind, size in SIZES.items():
            name = f"model.layers.{b}.{kind}"
            groups.append(
                ScoreGroup(
                    name, (f"{name}.proj",), b, kind, size * 1000, scores.get((b, kind), 1.0)
                )
            )
    return ScoreTable(
        key="k",
        method=method,
        fp8_recipe="FP8_DEFAULT_CFG",
        groups=tuple(groups),
        num_blocks=blocks,
        model_params=300_000,
        lm_params=200_000,
    )


def result(
    h: str,
    bits: float,
    kl: float,
    frac: float | None = None,
    status: str = "FINISHED",
    method: str = "kl_div",
    coverage: float = 1.0,
) -> TrialResult:
    frac = (16 - bits) / 8 if frac is None else frac
    return TrialResult(
        plan_hash=h,
        method=method,
        fp8_recipe="FP8_DEFAULT_CFG",
        effective_bits=bits,
        coverage=coverage,
        achieved_bits=bits,
        fp8_fraction=frac,
        status=status,
        metrics={"kl_mean": kl, "top1_agreement": 1 - kl} if status == "FINISHED" else {},
    )

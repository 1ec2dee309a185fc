"""The console's own phrasing, shared by the progress lines and the summary: lines that fit a
120-column terminal, numbers a reader can compare at a glance, and estimates from what was
measured. Pure text, so the tests can pin it without a sweep."""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

WIDTH = 120  # the widest console line, time prefix included (``HH:MM:SS [worker 0] ``)
MESSAGE_WIDTH = WIDTH - len("00:00:00 ")


def sci(value: float) -> str:
    """``2.66e-4``: three digits and a short exponent, as the KL is shown everywhere else."""
    if not math.isfinite(value) or value <= 0:
        return f"{value:.3g}"
    exp = math.floor(math.log10(value))
    return f"{value / 10.0**exp:.2f}e{exp}"


def kl_with_ci(mean: float, low: float, high: float) -> str:
    """``3.27e-4 [3.17, 3.38]``: the interval in the mean's power of ten, so three numbers of
    the same scale read as one."""
    if not all(math.isfinite(v) for v in (mean, low, high)) or mean <= 0:
        return f"{mean:.3g} [{low:.3g}, {high:.3g}]"
    exp = math.floor(math.log10(mean))
    scale = 10.0**exp
    return f"{mean / scale:.2f}e{exp} [{low / scale:.2f}, {high / scale:.2f}]"


def point_label(point: Any) -> str:
    """What a trial measured, short: ``gradient solve b=12 c=1`` or ``control random:3 b=14
    (gradient)`` for a control, which takes the share of that method's plan."""
    if point.control:
        return f"control {point.control} b={point.effective_bits:g} ({point.method})"
    return f"{point.method} {point.strategy} b={point.effective_bits:g} c={point.coverage:g}"


def eta_seconds(trial_seconds: Sequence[float], remaining: int, concurrent: int) -> float | None:
    """Time left from the measured trials: their median duration (the first trials carry the
    workers' warm-up) times the trials left, over the trials that run at once. ``None`` until a
    trial has measured anything (a reused result takes no time and says nothing about the next)."""
    measured = [t for t in trial_seconds if t > 0 and math.isfinite(t)]
    if not measured:
        return None
    return statistics.median(measured) * remaining / max(concurrent, 1)


def trial_line(
    done: int,
    total: int,
    status: str,
    point: Any,
    result: Mapping[str, Any],
    elapsed: float,
    eta: float | None,
) -> str:
    """One finished trial: count, what it measured, its FP8 share (the schemes are named by
    it) and bits, KL with its interval, and the time so far with the time left."""
    nan = float("nan")
    what = f"{done}/{total} {point_label(point)}"
    if status != "done":
        body = f"{what}: {status}"
    else:
        kl = kl_with_ci(
            result.get("kl_mean", nan), result.get("kl_ci_low", nan), result.get("kl_ci_high", nan)
        )
        body = (
            f"{what}: FP8 {result.get('fp8_fraction', nan):.1%} "
            f"({result.get('achieved_bits', nan):.2f} bits), KL {kl}"
        )
    left = "no ETA yet" if eta is None else f"ETA {eta:.0f}s"  # none before a measured trial
    return f"{body} | {elapsed:.0f}s, {left}"


def wrap(text: str, width: int = MESSAGE_WIDTH, indent: str = "  ") -> list[str]:
    """A long sentence as whole-word lines of at most ``width``; the lines after the first are
    indented, so each reads as part of the one before."""
    body = text.lstrip(" ")
    lines: list[str] = []
    line = text[: len(text) - len(body)]  # the text's own indent stays on its first line
    for word in body.split(" "):
        if line.strip() and len(f"{line} {word}") > width:
            lines.append(line)
            line = indent + word
        else:
            line = f"{line} {word}" if line.strip() else line + word
    lines.append(line)
    return lines


def duration(seconds: float) -> str:
    """``4 min 12 s`` for a person; seconds alone under a minute."""
    s = round(seconds)
    return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


def log_wrapped(
    logger: logging.Logger, text: str, width: int = MESSAGE_WIDTH, level: int = logging.INFO
) -> None:
    """A long message (INFO unless ``level`` says otherwise) as several records of whole words,
    each within the console's width after its time prefix; the continuation records are
    indented."""
    for line in wrap(text, width):
        logger.log(level, "%s", line)

"""The trials a sweep's schemes were chosen without, said in one line and in ``schemes.yaml``.

Every trial a sweep runs is one the selection needs: a grid point may sit on the front (a failed
one's KL is unknown, so nothing rules it out) and a control is run only for a published scheme's
verdict. So a trial that ended FAILED, after Tune's retries (``search.max_failures``) for its own
errors, leaves the schemes chosen from an incomplete front. The sweep still publishes what it can
(the other trials are good), but says so: ``schemes.yaml`` lists the missing plans, the console
names them in one line, and the exit status is ``cli.ExitCode.MISSING_TRIALS`` (4). Running the
same command again retries exactly those trials; the finished ones are kept.

A worker lost under a trial does not fail it (``search.pool``), so only a plan's own errors, a
trial process that died each time, or workers that did not come back end here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator.core.records import TrialResult


def missing(results: Sequence[TrialResult]) -> list[TrialResult]:
    """The trials that did not finish, in the sweep's order."""
    return [r for r in results if r.status != "FINISHED"]


def describe(r: TrialResult) -> str:
    """A missing trial as the progress lines name its point, with its plan."""
    return f"b={r.effective_bits:g} c={r.coverage:g} {r.method} {r.label} (plan {r.plan_hash[:8]})"


def missing_entries(results: Sequence[TrialResult]) -> list[dict[str, Any]]:
    """``schemes.yaml``'s ``missing_plans``: what each missing trial was and why it failed."""
    return [
        {"plan_hash": r.plan_hash, "point": describe(r), "error": r.error} for r in missing(results)
    ]


RETRY = "run the same command again to retry them (finished trials are kept)"


def missing_line(results: Sequence[TrialResult], retry: str = RETRY) -> str | None:
    """The one line for the user, or None when every trial finished."""
    gone = missing(results)
    if not gone:
        return None
    return (
        f"the schemes were chosen without {len(gone)} trial(s) that failed: "
        f"{', '.join(describe(r) for r in gone)}; {retry}"
    )

"""Stop a Tune run at the first write the storage refused for good (a full disk, an I/O error).

Left alone, Tune carries on past such a write: the trial whose checkpoint or MLflow run could not
be written fails, its retry fails the same way, then the next trial, one by one, each spending
its failure budget on the disk rather than on the plan. The driver learns of the failure from the
owner heartbeat (``outputs/ownership.py``, off the main thread) or from a failed trial's error
text; either way :mod:`orchestrator.outputs.storage` keeps it, and at the next step of Tune's
loop this callback raises it in the main thread. ``Tuner.fit`` ends there: the running trials are
stopped unfinished, so the same command, run again with space, resumes them (``resume_errored``
runs the failed ones again too), and the sweep exits 5 with the one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune

from orchestrator.outputs import storage

_ERROR_TAIL = 1 << 16  # bytes of a trial's error file read: its last error is at the end


class StopOnWriteFailure(tune.Callback):
    """Raises :class:`~orchestrator.outputs.storage.WriteFailed` once one is known; ``folder``
    is where the trials write (named in the one line when only an error's text tells)."""

    def __init__(self, folder: Path) -> None:
        self.folder = str(folder)  # plain data: Tune pickles its callbacks with the experiment

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        found = storage.reported()
        if found is not None:
            raise found

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._check(trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._check(trial)

    def _check(self, trial: Any) -> None:
        phrase = storage.phrase_in(_error_text(trial))
        if phrase is not None:
            storage.report(storage.failure(self.folder, phrase))


def _error_text(trial: Any) -> str:
    """The end of the error file Tune wrote for the trial (empty when it could not write it)."""
    path = trial.error_file
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(f.tell() - _ERROR_TAIL, 0))
            return f.read().decode(errors="replace")
    except (OSError, TypeError):
        return ""

"""The checked inputs of one sweep: what ``checks.check_inputs`` returns and every stage reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator.core.config import Catalog, SweepConfig
from orchestrator.core.memory import WorkerNeed


@dataclass(frozen=True)
class Inputs:
    cfg: SweepConfig  # file paths made absolute
    config_hash: str  # of the config as written, so a sweep resumes from any working directory
    output: Path
    tracking_uri: str
    address: str | None
    catalog: Catalog  # read before Ray starts: nothing is read from the package afterwards
    profile: str
    need: WorkerNeed  # the memory plan: what one worker needs (orchestrator/core/memory.py)
    verbose: bool = False  # libraries' output on the console instead of in logs/

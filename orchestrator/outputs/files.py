"""Files of ``--output`` written atomically (a temporary file renamed into place), and
``sweep.json``, the record that binds a folder to its sweep."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, payload: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_sweep_json(output: Path) -> dict[str, Any] | None:
    path = output / "sweep.json"
    return json.loads(path.read_text()) if path.exists() else None

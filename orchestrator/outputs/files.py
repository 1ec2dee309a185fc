"""Files of ``--output`` written atomically (a temporary file renamed into place), and
``sweep.json``, the record that binds a folder to its sweep.

Every file here is written through :func:`atomic_path`, so a reader (a resume, ``select``, a
second host on shared storage) sees the old file or the new one, never half of one, and a crash
or a failed write leaves no temporary file behind.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_SERIAL = itertools.count()  # per process: two writers of one file in one process differ too


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A hidden temporary name beside ``path`` to write to, renamed over ``path`` when the block
    ends and removed when it raises; for writers that want a path (pyarrow, matplotlib).

    The name (``.<name>.<pid>.<serial>.tmp``) is unique per process and per call, so concurrent
    writers of one file, in threads or processes, never write into each other's temporary file;
    the last rename wins whole.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_SERIAL)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: Path, payload: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_sweep_json(output: Path) -> dict[str, Any] | None:
    path = output / "sweep.json"
    return json.loads(path.read_text()) if path.exists() else None

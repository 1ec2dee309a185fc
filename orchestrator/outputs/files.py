"""Files of ``--output`` written atomically (a temporary file renamed into place), and
``sweep.json``, the record that binds a folder to its sweep.

Every file here is written through :func:`atomic_path`, so a reader (a resume, ``select``, a
second host on shared storage) sees the old file or the new one, never half of one, and a crash
or a failed write leaves no temporary file behind. A write the storage refuses for good (a full
disk, an I/O error) raises :class:`~orchestrator.outputs.storage.WriteFailed`, naming the file
and the space left.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from orchestrator.core.config import ConfigError
from orchestrator.outputs import storage

_SERIAL = itertools.count()  # per process: two writers of one file in one process differ too


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A hidden temporary name beside ``path`` to write to, renamed over ``path`` when the block
    ends and removed when it raises; for writers that want a path (pyarrow, matplotlib).

    The name (``.<name>.<pid>.<serial>.tmp``) is unique per process and per call, so concurrent
    writers of one file, in threads or processes, never write into each other's temporary file;
    the last rename wins whole.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_SERIAL)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except Exception as e:
        found = storage.find(e, path)
        if found is None or found is e:
            raise
        raise found from e
    finally:
        with suppress(OSError):  # a file system that refused the write may refuse this too
            tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: Path, payload: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


SWEEP_JSON = "sweep.json"
SEAL = "sha256"  # sweep.json's own content hash, over the rest of the record


def write_sweep_json(output: Path, record: Mapping[str, Any]) -> None:
    """The folder's sweep record, sealed with its own hash: a record changed since (cut short,
    edited by hand) is refused rather than trusted."""
    doc = {k: v for k, v in record.items() if k != SEAL}
    write_json(output / SWEEP_JSON, {**doc, SEAL: _seal(doc)})


def _seal(doc: Mapping[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != SEAL}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_sweep_json(output: Path) -> dict[str, Any] | None:
    """The folder's sweep record, None when there is none; one that is not a JSON object (cut
    short or edited by hand: the sweep writes it atomically), or that does not match its seal,
    is bad input, named with the file. Records written before the seal have none."""
    path = output / SWEEP_JSON
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(
            f"--output {output}: sweep.json is unreadable ({e.__class__.__name__}: {e}); "
            "restore it from a copy, or use another --output"
        ) from None
    if not isinstance(doc, dict):
        raise ConfigError(
            f"--output {output}: sweep.json holds a {type(doc).__name__}, not the sweep's record "
            "(a JSON object); restore it from a copy, or use another --output"
        )
    if SEAL in doc and doc[SEAL] != _seal(doc):
        raise ConfigError(
            f"--output {output}: sweep.json does not match its own sha256 (damaged or edited "
            "since the sweep wrote it); restore it from a copy, or use another --output"
        )
    return doc

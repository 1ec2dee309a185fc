"""Content hashes of the files a sweep reads back, so a damaged one is never used.

``select``, ``export``, ``compare_sweeps`` and a resume read ``config.yaml``, ``scores.parquet``
(and ``scores/``), ``trials.parquet``, ``schemes.yaml`` and ``plans/`` back. A Parquet file cut
short fails to open, but one cut at a row group, or a YAML or JSON file cut at a line, reads as
a smaller valid file and would be used silently. So each is hashed (sha256) when the sweep writes
it, the hashes are kept in ``sweep.json`` (itself sealed, ``files.write_sweep_json``), and a
reader checks the files it reads against them: a mismatch is refused with one line and exit 2
(the file cannot be trusted; the sweep's own command rebuilds it), and a resume, which rewrites
them all, says which it is rebuilding. A file with no recorded hash (a sweep from before the
record) is read as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.core.config import ConfigError
from orchestrator.outputs.files import read_sweep_json, write_sweep_json

FILES = "files_sha256"  # sweep.json's key: {path relative to --output: sha256}
REBUILD = "run the sweep again with the same command (it resumes and rewrites it), or restore it"


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hashed(output: Path, paths: Iterable[str], into: Mapping[str, str]) -> dict[str, str]:
    """``into`` with the hashes of ``paths`` (relative to ``output``) as they are now; a path
    that no longer exists (a schemes.yaml a failed selection removed) loses its entry."""
    out = dict(into)
    for rel in paths:
        path = output / rel
        if path.is_file():
            out[rel] = digest(path)
        else:
            out.pop(rel, None)
    return out


def record(output: Path, paths: Iterable[str]) -> None:
    """Hash ``paths``, just written by the folder's owner, into its ``sweep.json``."""
    doc = read_sweep_json(output) or {}
    write_sweep_json(output, {**doc, FILES: hashed(output, paths, doc.get(FILES) or {})})


def published(
    entries: Sequence[Mapping[str, Any]], knee: Mapping[str, Any] | None = None
) -> list[str]:
    """What a selection writes and a reader reads back: the trials, the schemes, their plans and
    the knee's plan."""
    return ["trials.parquet", "schemes.yaml", *plan_files(entries, knee)]


def plan_files(
    entries: Sequence[Mapping[str, Any]], knee: Mapping[str, Any] | None = None
) -> list[str]:
    """The plan files schemes.yaml names, once each in order: the schemes' and the knee's
    (``export --scheme knee`` reads it; often one of the schemes' own)."""
    named = [*entries, *([knee] if knee else [])]
    return list(dict.fromkeys(str(e["modules"]) for e in named if e.get("modules")))


def changed(
    output: Path, sweep: Mapping[str, Any], paths: Iterable[str] | None = None
) -> list[str]:
    """The recorded files among ``paths`` (default: all recorded) whose content differs now."""
    recorded: Mapping[str, str] = sweep.get(FILES) or {}
    names = recorded if paths is None else [p for p in paths if p in recorded]
    return [p for p in names if (output / p).is_file() and digest(output / p) != recorded[p]]


def refuse_changed(
    output: Path, sweep: Mapping[str, Any], paths: Iterable[str], flag: str = "--output"
) -> None:
    """Bad input (exit 2) when a file about to be read differs from what the sweep wrote;
    ``flag`` names the folder as the user gave it."""
    bad = changed(output, sweep, paths)
    if bad:
        raise ConfigError(
            f"{flag} {output}: {', '.join(bad)} changed since the sweep wrote it (sha256 differs "
            f"from sweep.json's record: cut short, damaged or edited); {REBUILD} from a copy"
        )


def inside(output: Path, rel: str, what: str) -> Path:
    """``output / rel``, refused when ``rel`` (read from a file of the folder) leads outside it."""
    path = (output / rel).resolve()
    if not path.is_relative_to(output.resolve()):
        raise ConfigError(f"--output {output}: {what} {rel!r} lies outside the folder")
    return path

"""Tracking URIs without importing MLflow: which store a sweep folder writes to, and that folder's
own store kept inside the folder when the folder is copied or moved.

A folder's own store (``sqlite:///<output>/mlflow.db``, the default) is never written into
``sweep.json``: it is derived from ``--output`` each time, so a copy or a moved folder writes to
the store it holds, not to the original's. Only a URI the user gave (``--tracking-uri``,
``MLFLOW_TRACKING_URI``: a tracking server, a shared database) is recorded, and a resume uses it
again. MLflow itself writes absolute artifact locations into the store;
:func:`follow_folder` points them back into the folder that holds the store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

OWN_STORE = "mlflow.db"
ARTIFACTS = "mlartifacts"  # the own store's artifact root, beside it in the folder


def default_tracking_uri(output: Path) -> str:
    return f"sqlite:///{(output / OWN_STORE).resolve()}"


def absolute_uri(uri: str) -> str:
    """A relative ``sqlite:///name.db`` made absolute: the sweep and its trials run in other
    folders."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and uri != prefix + ":memory:":
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def recorded_uri(record: Mapping[str, Any]) -> str | None:
    """The tracking URI a ``sweep.json`` binds its sweep to: one the user gave, or None for the
    folder's own store. Records written before 2026-12-08 spelled the own store out as an
    absolute path (the folder's, then: their ``ray_storage_path``'s parent); that is the own
    store too."""
    uri = record.get("tracking_uri")
    if not uri:
        return None
    ray_storage = record.get("ray_storage_path")
    if ray_storage and Path(ray_storage).is_absolute():
        if uri == f"sqlite:///{Path(ray_storage).parent / OWN_STORE}":
            return None
    return str(uri)


def folder_uri(record: Mapping[str, Any], output: Path) -> str:
    """The store a finished sweep in ``output`` wrote to, wherever the folder is now."""
    return recorded_uri(record) or default_tracking_uri(output)


# Where MLflow's sqlite store keeps absolute artifact locations (experiments, runs, models).
_LOCATIONS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
)


def follow_folder(output: Path) -> Path | None:
    """Point the folder's own store's artifact locations into ``output``; returns the folder they
    named (the original, when ``output`` is a copy or was moved), None when nothing changed.

    MLflow records each experiment's and run's artifact location as an absolute path. In a copy
    they still name the original's ``mlartifacts/``, and a resumed sweep would write its parent
    run's outputs there; rewritten here, before MLflow opens the store, they name the copy's."""
    db = output / OWN_STORE
    if not db.is_file():
        return None
    new = output.resolve()
    con = sqlite3.connect(db)
    try:
        with con:  # one transaction: every location moves, or none
            old = _written_in(con)
            if old is None or old == new:
                return None
            for table, column in _LOCATIONS:
                if _has_table(con, table):
                    for before, after in ((old.as_uri(), new.as_uri()), (str(old), str(new))):
                        _replace_prefix(con, table, column, before + "/", after + "/")
    finally:
        con.close()
    return old


def _written_in(con: sqlite3.Connection) -> Path | None:
    """The folder the store was written in: the one holding its experiments' ``mlartifacts``."""
    marker = f"/{ARTIFACTS}/"
    for (location,) in con.execute("SELECT artifact_location FROM experiments"):
        if location and marker in location:
            root = location[: location.index(marker)]
            return Path(unquote(urlparse(root).path) if root.startswith("file:") else root)
    return None


def _has_table(con: sqlite3.Connection, table: str) -> bool:
    query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    return con.execute(query, (table,)).fetchone() is not None


def _replace_prefix(
    con: sqlite3.Connection, table: str, column: str, before: str, after: str
) -> None:
    con.execute(
        f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE substr({column}, 1, ?) = ?",
        (after, len(before) + 1, len(before), before),
    )

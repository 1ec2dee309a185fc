"""Tracking URIs without importing MLflow: an output folder's own store, relative sqlite paths
made absolute."""

from __future__ import annotations

from pathlib import Path


def default_tracking_uri(output: Path) -> str:
    return f"sqlite:///{(output / 'mlflow.db').resolve()}"


def absolute_uri(uri: str) -> str:
    """A relative ``sqlite:///name.db`` made absolute: the sweep and its trials run in other
    folders."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and uri != prefix + ":memory:":
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri

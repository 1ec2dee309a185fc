"""Checkpoints of the published schemes: ``python -m orchestrator.export``.

checkpoint (a scheme applied to a fresh BF16 model, calibrated, written; ``load_exported``),
formats (the ModelOpt and compressed-tensors layouts), check (pure: does a folder load as planned,
as each loader reads it), ``__main__`` (the command line).

May import: ``orchestrator.core``, ``runtime``, ``outputs``, ``model``, ``tracking`` (to tag the
scheme's run); ``check`` imports nothing heavy (``tests/unit/test_layers.py``).
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """``orchestrator.export.load_exported`` without importing torch with the package."""
    if name == "load_exported":
        from orchestrator.export.checkpoint import load_exported

        return load_exported
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Process set-up that local Ray workers depend on."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.unit


def test_checkout_root_goes_on_pythonpath_for_local_ray_workers(monkeypatch) -> None:
    """Workers inherit the environment, not sys.path, and the driver leaves the checkout."""
    from orchestrator.config import PROJECT_ROOT
    from orchestrator.runtime import export_package_path

    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    export_package_path()
    export_package_path()  # idempotent

    parts = os.environ["PYTHONPATH"].split(os.pathsep)
    assert parts == [str(PROJECT_ROOT.resolve()), "/somewhere/else"]

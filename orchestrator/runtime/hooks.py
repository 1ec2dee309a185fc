"""The test suite's one way into a running sweep: the reliability tests' faults.

``FP8_SWEEP_TEST_HOOKS`` names a module (the tests set it to ``tests.faults``) whose
``evaluate(point, plan, measure)`` wraps each trial's measurement and whose
``worker_evaluates(fp8_modules)`` runs in the worker before each evaluation. Only tests set it;
unset, nothing is imported and a sweep runs as if this module did not exist. Faults are kept out of
the config, so they never change a config hash, an MLflow param or ``config.yaml``.

Ray's processes see the variable through the environment: local workers inherit the driver's (with
the checkout on ``PYTHONPATH``, ``search.ray_env.export_package_path``), a Ray Job passes it in its
runtime environment.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

HOOKS_ENV = "FP8_SWEEP_TEST_HOOKS"


def fault_hooks() -> Any | None:
    """The tests' hook module, or None (always, outside the test suite)."""
    name = os.environ.get(HOOKS_ENV)
    return importlib.import_module(name) if name else None

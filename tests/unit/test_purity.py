"""Pure modules import no torch, ray or mlflow: planning and selection stay testable in ms."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit
PURE = [
    "records",
    "config",
    "planning",
    "selection",
    "tables",
    "outputs",
    "select",
    "export_check",
    "ownership",
    "memory",
    "objectives",
    "compare_sweeps",
]


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_heavy_framework(module):
    code = (
        f"import sys, orchestrator.{module}; "
        "bad = [m for m in ('torch', 'ray', 'mlflow', 'transformers', 'modelopt') "
        "if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""

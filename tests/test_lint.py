"""The house rules a tool can check, run with the tests so CI (`.ci/run`) keeps them: `ruff check`
on the code, the tests and the scripts, and `mypy` as pyproject.toml configures it (the package,
the pure core strictly). Each runs as its own process from the repository root with this
interpreter, so it sees the installed extras exactly as the tests do.

Marked ``lint``, not ``unit``: mypy takes about half a minute on a cold cache, so the fast loop
(`pytest -m unit`) leaves it out and plain `pytest` runs it.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.lint


def run_tool(module: str, *args: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed; pip install -e '.[dev]' brings it")
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{' '.join((module, *args))}:\n{proc.stdout}{proc.stderr}"


def test_ruff_check_is_clean():
    run_tool("ruff", "check", "orchestrator", "tests", "scripts")


def test_mypy_is_clean():
    run_tool("mypy")

"""The package's import rules, as each subpackage's ``__init__`` states them.

Two checks. Statically, every ``orchestrator`` import in every module (function-local ones too;
type-only imports under ``if TYPE_CHECKING:`` excepted, they never run) must target a layer the
importing layer may use, third-party frameworks only from their one home, and no module imports
an entry point. Dynamically, importing each light module in a fresh interpreter must not pull in a
heavy framework: what a static check cannot see (a framework reached through another package).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PKG = Path(__file__).resolve().parents[2] / "orchestrator"

# layer -> the orchestrator layers it may import (itself always)
MAY_IMPORT = {
    "core": set(),
    "outputs": {"core"},
    "runtime": {"core", "outputs"},
    "model": {"core", "runtime", "outputs"},
    "tracking": {"core", "runtime", "outputs"},
    "search": {"core", "runtime", "outputs", "model", "tracking"},
    "export": {"core", "runtime", "outputs", "model", "tracking"},
    "checks": {"core", "runtime", "outputs", "model", "tracking", "search"},
    "cli": {"core", "runtime", "outputs"},
}
ENTRY_POINTS = {"sweep", "select", "compare_sweeps", "export.__main__"}
# framework -> the layers that may import it (anywhere in the module, function-local included)
FRAMEWORK_HOMES = {
    "ray": {"search"},
    "mlflow": {"tracking"},
    "torch": {"model", "export", "runtime"},  # runtime: only inside a function (host.py)
    "transformers": {"model", "export"},
    "modelopt": {"model", "export"},
}
HEAVY = ("torch", "ray", "mlflow", "transformers", "modelopt")


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    return ".".join(p for p in rel.parts if p != "__init__")


def layer_of(module: str) -> str:
    return module.split(".")[0] if module else ""


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import that runs, TYPE_CHECKING blocks skipped."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for b in node.body for n in ast.walk(b)}
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "orchestrator":
                out += [(node.lineno, f"orchestrator.{a.name}") for a in node.names]
            else:
                out += [(node.lineno, node.module)]
                # `from orchestrator.search import pool` names a module
                out += [
                    (node.lineno, f"{node.module}.{a.name}")
                    for a in node.names
                    if (PKG.parent / f"{node.module}.{a.name}".replace(".", "/")).with_suffix(
                        ".py"
                    ).exists()
                ]
    return out


MODULES = sorted(PKG.rglob("*.py"))


def test_every_module_has_a_layer():
    layers = {layer_of(module_name(p)) for p in MODULES} - {""}
    assert layers <= set(MAY_IMPORT) | {e.split(".")[0] for e in ENTRY_POINTS}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p) or "orchestrator")
def test_imports_follow_the_layer_rules(path):
    me = module_name(path)
    layer = layer_of(me)
    bad = []
    for line, target in imports(path):
        top = target.split(".")[0]
        if top == "orchestrator":
            inner = target.removeprefix("orchestrator").lstrip(".")
            if inner in ENTRY_POINTS and inner != me:
                bad.append(f"line {line}: imports the entry point {target}")
            other = layer_of(inner)
            if me in ENTRY_POINTS or not other or other == layer or inner in ENTRY_POINTS:
                continue
            if other not in MAY_IMPORT.get(layer, set()):
                bad.append(f"line {line}: {layer} may not import {target}")
        elif top in FRAMEWORK_HOMES and me not in ENTRY_POINTS:
            if layer not in FRAMEWORK_HOMES[top]:
                bad.append(f"line {line}: only {sorted(FRAMEWORK_HOMES[top])} import {top}")
    assert not bad, f"{me}: " + "; ".join(bad)


LIGHT = [
    module_name(p)
    for p in MODULES
    if layer_of(module_name(p)) in {"core", "outputs", "runtime"}
] + ["export.check", "tracking.uri", "select", "compare_sweeps", "checks", "sweep"]


@pytest.mark.parametrize("module", sorted(set(LIGHT) - {""}))
def test_light_modules_import_no_heavy_framework(module):
    code = (
        f"import sys, orchestrator.{module}; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("model", ("ray", "mlflow")), ("tracking", ("torch", "ray")), ("search", ("mlflow",))],
)
def test_each_side_imports_only_its_own_framework(package, forbidden):
    """A model module never brings Ray or MLflow, tracking never torch or Ray, and the Ray side
    reaches MLflow only inside a trial (so Ray's environment is set before MLflow's import)."""
    mods = [module_name(p) for p in (PKG / package).glob("*.py")]
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}: importlib.import_module('orchestrator.' + m)\n"
        f"print(','.join(m for m in {forbidden!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""

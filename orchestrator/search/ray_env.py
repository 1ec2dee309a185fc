"""What Ray reads from the environment, set before Ray is imported: token auth for a local
instance, quiet log forwarding, and this package on the workers' ``PYTHONPATH``."""

from __future__ import annotations

import os
import secrets
import site
from pathlib import Path

from orchestrator.core.config import PROJECT_ROOT


def ray_environment(address: str | None, verbose: bool = False) -> None:
    """What Ray reads from the environment when it is imported, set before it is (explicit
    settings in the environment win).

    * A local instance the sweep starts (no ``--address``, no ``RAY_ADDRESS``) gets token auth with
      a token of its own, in the environment only. Left unset, Ray 2.60 turns token auth on and
      saves a new token to ``~/.ray/auth_token``, which then turns it on for every cluster the user
      starts later (and unauthenticated joins to those fail).
    * Tune leaves SIGINT alone (always: see below).
    * Unless ``verbose``: forwarded worker lines come as they are written, without Ray's
      ``(pid=...)`` prefix (a worker's records name the worker themselves) and without batching
      lines that differ only in their numbers (which would hold a progress line back for
      seconds); Tune's legacy reporter, silent at ``verbose=0``, replaces the new one, which
      prints its experiment table and a TensorBoard hint even then.
    """
    # SIGINT stays with the entry point's handler (runtime/stops.py), which asks Tune to stop
    # (through the handler Tune keeps on SIGUSR1) and then exits 130; Tune's own SIGINT handler
    # would end the round quietly and the sweep would go on to publish from it
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    local = not address and not os.environ.get("RAY_ADDRESS")
    if local and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    if not verbose:
        for key in ("RAY_DEDUP_LOGS", "RAY_AIR_NEW_OUTPUT"):
            os.environ.setdefault(key, "0")
        os.environ.setdefault("RAY_DISABLE_WORKER_LOG_PREFIX", "1")


def export_package_path() -> None:
    """Put this package's root on ``PYTHONPATH`` so local Ray workers import it from a checkout.

    Workers of a local Ray instance inherit the driver's environment, not its ``sys.path``; the
    driver leaves its working directory for the output folder before Ray starts, so a checkout run
    as ``python -m orchestrator.sweep`` without installing would be invisible to them. An installed
    package (site-packages) needs nothing.
    """
    root = PROJECT_ROOT.resolve()
    sites = {Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()]}
    if root in sites:
        return
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(root) not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(root), *parts])

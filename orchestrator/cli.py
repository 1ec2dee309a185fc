"""The command line every entry point shares: one exit-code table, one parser, one way bad input
ends a command.

A user who mistypes a flag, a value, a config key or a path gets the same answer from ``sweep``,
``select``, ``compare_sweeps`` and ``export``: one line on stderr, ``error: <what is wrong and
what to do>``, and exit 2, with no traceback (the message says all) and before any Ray, MLflow or
model work. Each entry point's ``main`` is wrapped in :func:`command`, builds its flags on
:class:`Parser` and calls ``runtime.logs.setup_logging`` once its flags are parsed.

Imports only ``core``, ``runtime`` and ``outputs``, so a bad flag is answered without loading
torch, Ray or MLflow (``tests/unit/test_cli.py``).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from enum import IntEnum
from typing import NoReturn, ParamSpec

from orchestrator.core.config import ConfigError, DataError
from orchestrator.outputs.ownership import OutputInUse

P = ParamSpec("P")

# Raised by the input checks, and only for input the user can fix; the message is the whole answer.
BAD_INPUT = (ConfigError, DataError, OutputInUse)


class ExitCode(IntEnum):
    """What a command's exit status means; each entry point's docstring says which it can return.
    A driver stopped by SIGTERM exits 128 + 15 (``outputs/ownership.py``)."""

    OK = 0
    ERROR = 1  # the sweep failed (logged with its traceback); an exported folder fails its check
    BAD_INPUT = 2  # flags, config, model, data, output folder (or one in use): one line on stderr
    NO_FRONT = 3  # a catalog name no measured point can carry (sweep, select): names the budget


class Parser(argparse.ArgumentParser):
    """``python -m <module>``'s flags, described by the first paragraph of its docstring; a bad
    flag or value is bad input like any other: one line, exit 2 (argparse prints the usage too)."""

    def __init__(self, module: str, doc: str | None) -> None:
        super().__init__(prog=f"python -m {module}", description=(doc or "").split("\n\n")[0])

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.BAD_INPUT, f"error: {message} (see --help)\n")


def command(main: Callable[P, int]) -> Callable[P, int]:
    """An entry point's ``main``: bad input raised anywhere in it (:data:`BAD_INPUT`) ends the
    command with ``error: <message>`` on stderr and exit 2."""

    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except BAD_INPUT as e:
            print(f"error: {e}", file=sys.stderr)
            return ExitCode.BAD_INPUT

    return run

"""The command line every entry point shares: one exit-code table, one parser, one way bad input
ends a command.

A user who mistypes a flag, a value, a config key or a path gets the same answer from ``sweep``,
``select``, ``compare_sweeps`` and ``export``: one line on stderr, ``error: <what is wrong and
what to do>``, and exit 2, with no traceback (the message says all) and before any Ray, MLflow or
model work. Each entry point's ``main`` is wrapped in :func:`command`, builds its flags on
:class:`Parser` and calls ``runtime.logs.setup_logging`` once its flags are parsed.

Every entry point speaks one grammar (:class:`Parser`): ``--output`` is the sweep's folder,
``--set KEY=VALUE`` overrides a config key (each command takes the keys that matter to it and
refuses others, naming what it takes), ``--verbose`` shows what the libraries print. A command's
own flags (``select --max-kl``) are spellings of config keys (``selection.max_kl``), so both work
and a message names the one the user typed.

SIGTERM and SIGINT stop every command the same way (``runtime/stops.py``): exit 143 or 130,
with ``finally`` blocks run (``--output`` released, Ray shut down) and no traceback.

Imports only ``core``, ``runtime`` and ``outputs``, so a bad flag is answered without loading
torch, Ray or MLflow (``tests/unit/test_cli.py``).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Mapping
from enum import IntEnum
from pathlib import Path
from typing import Any, NoReturn, ParamSpec

from orchestrator.core.config import ConfigError, DataError, Override, parse_overrides
from orchestrator.outputs.ownership import OutputInUse
from orchestrator.outputs.storage import WriteFailed
from orchestrator.runtime import stops

P = ParamSpec("P")

# Raised by the input checks, and only for input the user can fix; the message is the whole answer.
BAD_INPUT = (ConfigError, DataError, OutputInUse)


class ExitCode(IntEnum):
    """What a command's exit status means; each entry point's docstring says which it can return,
    and the README's one table all of them. A command stopped by SIGTERM or SIGINT exits 128 + the
    signal, 143 or 130 (``runtime/stops.py``)."""

    OK = 0
    ERROR = 1  # the sweep failed (logged with its traceback); an exported folder fails its check
    BAD_INPUT = 2  # flags, config, model, data, output folder (or one in use): one line on stderr
    NO_FRONT = 3  # a catalog name no measured point can carry (sweep, select): says what to change
    MISSING_TRIALS = 4  # schemes chosen without some trials (failed): one line names their plans
    WRITE_FAILED = 5  # storage refused a write (full disk, I/O error): one line; a rerun resumes
    STOPPED_SIGINT = 130  # 128 + SIGINT: Ctrl+C
    STOPPED_SIGTERM = 143  # 128 + SIGTERM: a job runner's stop


# What ``--set`` takes in a sweep, shown by its --help; each example is one kind of value.
SWEEP_SET_EXAMPLES = {
    "seed=7": "a value",
    "scoring.num_score_steps=8": "a nested key: section.field",
    "search.coverage=[0.5,1.0]": "a list (YAML)",
    "'search.strategies=[solve, ends_bf16:1]'": "quote a value with spaces",
    "'controls={random_seeds: 1, inverse: false}'": "several fields of one section",
}
VERBOSE_HELP = "show what the libraries print (default: only this tool's lines)"


class Parser(argparse.ArgumentParser):
    """``python -m <module>``'s flags, described by the first paragraph of its docstring; a bad
    flag or value is bad input like any other: one line, exit 2 (argparse prints the usage too).

    Every command gets ``--output`` (``output``: its help), ``--set`` and ``--verbose`` here.
    ``set_keys`` maps each config key the command's ``--set`` takes to an example value; None
    takes the whole sweep config (the sweep). :meth:`overrides` checks the keys.
    """

    def __init__(
        self,
        module: str,
        doc: str | None,
        output: str,
        set_keys: Mapping[str, str] | None = None,
        verbose: str = VERBOSE_HELP,
    ) -> None:
        super().__init__(
            prog=f"python -m {module}",
            description=(doc or "").split("\n\n")[0],
            epilog=_set_epilog(set_keys),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        self.command = module.rsplit(".", 1)[-1]
        self.set_keys = set_keys
        self.add_argument("--output", type=Path, metavar="DIR", help=output)
        takes = "any config key" if set_keys is None else ", ".join(set_keys) or "no key"
        self.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"override a config key, repeatable ({takes}; syntax below)",
        )
        self.add_argument("--verbose", action="store_true", help=verbose)

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.BAD_INPUT, f"error: {message} (see --help)\n")

    def overrides(self, args: argparse.Namespace, **flags: Any) -> list[Override]:
        """``--set``'s pairs, each key one this command takes, and the command's own flags that
        spell a config key (``max_kl=args.max_kl`` for ``selection.max_kl``; None: not given).
        A key set both ways is refused: which one wins would be a guess."""
        given = parse_overrides(args.set)
        if self.set_keys is not None:
            takes = f"--set {', '.join(self.set_keys)} only" if self.set_keys else "no --set key"
            for o in given:
                if o.key not in self.set_keys:
                    raise ConfigError(f"{o.given}: {self.command} takes {takes}")
        out = []
        for key, value in flags.items():
            if value is None:
                continue
            dotted = next(k for k in self.set_keys or () if k.endswith(f".{key}"))
            flag = f"--{key.replace('_', '-')} {value}"
            clash = [o.given for o in given if o.key == dotted]
            if clash:
                raise ConfigError(f"{flag} and {clash[0]} both set {dotted}; give one")
            out.append(Override(dotted, str(value) if isinstance(value, Path) else value, flag))
        return out + given


def _set_epilog(set_keys: Mapping[str, str] | None) -> str:
    """``--set``'s syntax with this command's examples: every kind of value for the sweep, each
    key it takes for the others."""
    head = "--set KEY=VALUE overrides one config key; KEY is dotted (section.field), VALUE is YAML:"
    if set_keys is not None and not set_keys:
        return "--set: this command takes no config key (the sweep's config.yaml decides)"
    examples = (
        SWEEP_SET_EXAMPLES if set_keys is None else {f"{k}={v}": "" for k, v in set_keys.items()}
    )
    width = max(len(e) for e in examples)
    rows = [f"  --set {e:<{width}}  {what}".rstrip() for e, what in examples.items()]
    return "\n".join([head, *rows])


def command(main: Callable[P, int]) -> Callable[P, int]:
    """An entry point's ``main``: bad input raised anywhere in it (:data:`BAD_INPUT`) ends the
    command with ``error: <message>`` on stderr and exit 2, a write the storage refused
    (:class:`WriteFailed`) with its one line and exit 5; SIGTERM or SIGINT with one line,
    ``stopped by SIGTERM``, and 128 + the signal."""

    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        restore = stops.install()
        try:
            return main(*args, **kwargs)
        except BAD_INPUT as e:
            print(f"error: {e}", file=sys.stderr)
            return ExitCode.BAD_INPUT
        except WriteFailed as e:
            print(f"error: {e}", file=sys.stderr)
            return ExitCode.WRITE_FAILED
        except KeyboardInterrupt:
            print(f"stopped by {stops.name()}", file=sys.stderr)
            return stops.exit_code()
        finally:
            restore()

    return run

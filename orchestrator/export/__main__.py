"""``python -m orchestrator.export``: write published schemes as checkpoints that load where used.

    python -m orchestrator.export --output runs/demo-tiny --scheme fp8_autoquant_top50 --dest ckpt/
    python -m orchestrator.export --output runs/demo --all --dest ct --format compressed-tensors
    python -m orchestrator.export --check ckpt/          # exit 1 with the reasons if it fails
    python -m orchestrator.export --measure ckpt/        # reload, measure KL against the label

Every export reloads what it wrote through the loader available here, measures it against the BF16
base model on the sweep's judging set and writes that into ``scheme.json`` as ``artifact``; a KL
outside the trial's 95 % interval fails the export (``orchestrator/export/artifact.py``).
What ModelOpt and transformers print goes to a log file that is named only when the export fails
(``--verbose``: on the console).
Exit codes: 0 every folder written (or checked) passes the check, 1 one fails, 2 bad input, 5
``--dest``'s disk is full (one line; nothing is left there).
``--set`` takes no config key here: a checkpoint is the scheme as the sweep measured it, built
from the sweep's own ``config.yaml``; the flag exists so that every entry point reads alike.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from orchestrator import cli
from orchestrator.export.check import check_export
from orchestrator.export.checkpoint import (
    FORMATS,
    ExportCheckError,
    check_dest,
    export_scheme,
    find_scheme,
    scheme_names,
)
from orchestrator.outputs.ownership import in_use_line, live_owner
from orchestrator.runtime.logs import divert_output, setup_logging

# named, not __name__: run as ``python -m`` that is "__main__", which the console leaves out
# (runtime/logs.py shows the orchestrator's loggers only)
log = logging.getLogger("orchestrator.export")


@cli.command  # bad input: one line on stderr, exit 2
def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 when every folder written (or checked) passes the check, 1 when one fails, 2 on bad
    input."""
    args = _parse(argv)
    setup_logging(args.verbose)
    if args.check is not None:
        return _report(args.check, check_export(args.check))
    if args.measure is not None:
        from orchestrator.export.artifact import remeasure

        folder = args.measure
        problems = _quietly(args.verbose, lambda: remeasure(folder))
        return _report(folder, problems, "measures inside its label's interval")
    output = args.output.resolve()
    owner = live_owner(output)
    if owner is not None:  # export only reads --output, so it may; say what it reads
        advice = "exporting the schemes.yaml it holds now, which the sweep may still replace"
        log.warning("%s", in_use_line(output, owner, advice))
    names = scheme_names(output) if args.all else [find_scheme(output, args.scheme)["name"]]
    dests = {n: check_dest(args.dest / n if args.all else args.dest) for n in names}

    def export_all() -> list[str]:
        try:
            for i, (name, dest) in enumerate(dests.items(), 1):  # each checked before any load
                log.info(
                    "exporting %s as %s (%d of %d): load, calibrate, write, check",
                    name,
                    args.format,
                    i,
                    len(dests),
                )
                export_scheme(output, name, dest, args.format)
        except ExportCheckError as e:
            return e.problems
        return []

    problems = _quietly(args.verbose, export_all)
    return _report(args.dest, problems) if problems else cli.ExitCode.OK


def parser() -> cli.Parser:
    p = cli.Parser(
        "orchestrator.export",
        __doc__,
        output="a finished sweep's output folder",
        set_keys={},
        verbose="show what ModelOpt and transformers print",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--scheme", help="a name from its schemes.yaml, or knee for the knee of the front"
    )
    which.add_argument("--all", action="store_true", help="every scheme, each to DEST/<name>")
    p.add_argument("--dest", type=Path, help="folder for the checkpoint")
    p.add_argument("--format", choices=FORMATS, default="modelopt", help="checkpoint layout")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--check", type=Path, metavar="DIR", help="only check an exported folder")
    only.add_argument(
        "--measure",
        type=Path,
        metavar="DIR",
        help="only measure an exported folder's KL again, against its label",
    )
    return p


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    p.overrides(args)  # refuses every key, naming none allowed
    folder = args.check if args.check is not None else args.measure
    if folder is None:
        missing = [f"--{k}" for k in ("output", "dest") if getattr(args, k) is None]
        if not (args.scheme or args.all):
            missing.append("--scheme or --all")
        if missing:
            p.error(f"missing {', '.join(missing)} (or use --check DIR)")
    elif not folder.is_dir():
        flag = "--check" if args.check is not None else "--measure"
        p.error(f"{flag} {folder}: not a folder")
    elif args.measure is not None and not (folder / "scheme.json").is_file():
        p.error(f"--measure {folder}: no scheme.json; not an export of this project")
    return args


def _quietly(verbose: bool, work: Callable[[], list[str]]) -> list[str]:
    """``work``'s problems, with what ModelOpt, transformers and compressed-tensors print (load
    reports, progress bars, warnings) kept off the console (``--verbose`` shows it) in a log file,
    removed when the work passes and named when it does not (``runtime/logs.divert_output``)."""
    if verbose:
        return work()
    fd, name = tempfile.mkstemp(prefix="orchestrator-export-", suffix=".log")
    os.close(fd)
    kept = Path(name)
    restore = divert_output(kept)
    # divert_output leaves ``sys.stdout`` on the console (a sweep's driver prints Ray's worker
    # lines there); here ``print`` (ModelOpt's) goes to the file with descriptor 1
    console, sys.stdout = sys.stdout, sys.__stdout__ or sys.stdout
    problems: list[str] | None = None
    try:
        problems = work()
    finally:
        sys.stdout = console
        restore()  # before any line of the outcome, so it reaches the console
        if problems == []:
            kept.unlink(missing_ok=True)
        else:
            log.info("what ModelOpt and transformers printed: %s", kept)
    return problems


def _report(folder: Path, problems: Sequence[str], passed: str = "passes the export check") -> int:
    for line in problems:
        print(f"check failed: {line}", file=sys.stderr)
    if not problems:
        log.info("%s %s", folder, passed)
    return cli.ExitCode.ERROR if problems else cli.ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())

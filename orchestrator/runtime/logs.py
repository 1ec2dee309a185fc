"""Logging: the console shows the sweep's own records; what Ray, Tune, ModelOpt and transformers
print goes to ``<output>/logs/`` (the driver's file, one per worker) unless ``--verbose``."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ConsoleFormatter(logging.Formatter):
    """The console's short prefix: the time, the level only when it is not INFO, and the worker's
    label; the logger's name stays in the log files, so a line keeps its width for the message."""

    def __init__(self, label: str = "") -> None:
        super().__init__(datefmt="%H:%M:%S")
        self.label = f" [{label}]" if label else ""

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        level = "" if record.levelno == logging.INFO else f" {record.levelname}"
        line = f"{self.formatTime(record, self.datefmt)}{level}{self.label} {record.message}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


# Ray, Tune, MLflow and friends log at INFO what a user of the sweep need not see even in a file.
_NOISY = ("alembic", "urllib3", "filelock", "ray.tune", "mlflow")


# ``extra=`` of a record for the log file alone (a traceback the console sums up in one line)
FILE_ONLY = {"console": False}


def _is_ours(record: logging.LogRecord) -> bool:
    if not getattr(record, "console", True):
        return False
    return record.name == "orchestrator" or record.name.startswith("orchestrator.")


def setup_logging(verbose: bool = False, level: int = logging.INFO) -> None:
    """The console (stdout) shows the sweep's own records; ``verbose`` shows every library's too.

    Python warnings become log records (``py.warnings``), so a library's ``UserWarning`` stays off
    the console with the rest of its output.
    """
    console = logging.StreamHandler(sys.stdout)
    if verbose:  # other libraries' records too: their names say whose they are
        console.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
    else:
        console.setFormatter(ConsoleFormatter())
        console.addFilter(_is_ours)
    logging.basicConfig(level=level, handlers=[console], force=True)
    logging.captureWarnings(True)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def divert_output(log_file: Path) -> Callable[[], None]:
    """While Ray runs in this (driver) process, all but the sweep's records go to ``log_file``;
    returns the function that undoes it.

    Ray's C++ core, Tune's prints, MLflow and transformers write to the process's stdout/stderr
    file descriptors, or to Python streams bound to them long before: descriptors 1 and 2 are
    pointed at ``log_file``. ``sys.stdout`` and the console handler keep the terminal (a copy of
    descriptor 1), and so do the worker lines Ray forwards to ``sys.stdout`` (workers write only
    the sweep's records there: :func:`route_worker_output`); what Ray forwards to ``sys.stderr``
    lands in the file. Every log record also goes to the file, so it tells the whole story.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = os.dup(1), os.dup(2)
    console = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    root = logging.getLogger()
    handlers = [h for h in root.handlers if type(h) is logging.StreamHandler]
    streams = [h.setStream(console) for h in handlers]
    file_handler = logging.FileHandler(log_file, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
    root.addHandler(file_handler)
    stdout, sys.stdout = sys.stdout, console

    def restore() -> None:
        sys.stdout = stdout
        for h, s in zip(handlers, streams, strict=True):
            h.setStream(s)
        root.removeHandler(file_handler)
        file_handler.close()
        console.close()
        sys.stderr.flush()
        for target, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, target)
            os.close(copy)

    return restore


_ROUTED = False


def route_worker_output(log_file: str | None, label: str, verbose: bool = False) -> None:
    """In a Ray worker process (once): the sweep's records on stdout, the rest to a file or stderr.

    Ray forwards a worker's stdout and stderr to the driver, which shows stdout on the console
    and keeps stderr in its log file (:func:`divert_output`). So stdout carries only records of the
    ``orchestrator`` loggers, labelled (``[worker 0]``); with ``log_file`` the process's
    descriptors 1 and 2 (ModelOpt's prints and progress bars, warnings, transformers) go to that
    file, which also receives every record. ``verbose`` leaves the streams alone and shows every
    record.
    """
    global _ROUTED
    if _ROUTED:
        return
    _ROUTED = True
    fmt = logging.Formatter(
        f"%(asctime)s %(levelname)s %(name)s [{label}]: %(message)s", datefmt="%H:%M:%S"
    )
    console = logging.StreamHandler(sys.stdout)
    if not verbose:
        sys.stdout.flush()
        console = logging.StreamHandler(os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8"))
        console.addFilter(_is_ours)
        if log_file:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
    console.setFormatter(fmt if verbose else ConsoleFormatter(label))
    handlers: list[logging.Handler] = [console]
    if not verbose:
        rest = logging.StreamHandler(sys.stderr)
        rest.setFormatter(fmt)
        handlers.append(rest)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)
    logging.captureWarnings(True)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)

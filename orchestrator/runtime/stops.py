"""SIGTERM and SIGINT: a command stops cleanly and exits 128 + the signal (143, 130).

Job runners (Kubernetes, Slurm, ``ray job stop``) send SIGTERM and then wait; Ctrl+C sends SIGINT.
Either way a command should stop soon, keep what it finished, release ``--output``, shut Ray down,
and exit with the status a job runner reads as "stopped by that signal".

Why the handler raises ``KeyboardInterrupt`` and not ``SystemExit`` (Python's and Ray's driver
handlers exit): a signal is handled wherever the main thread is, and in a sweep that is mostly
inside Ray's C++ core (``ray.get``, ``ray.wait``). Ray turns a ``SystemExit`` raised there into an
"unexpected system exit" (``SystemExit(1)``), after which its core worker aborts the interpreter
at exit: status 134 instead of 143. A ``KeyboardInterrupt`` passes through Ray's calls unchanged;
the entry point (``cli.command``, the sweep's ``main``) turns it into 128 + the signal received.

A stage that can stop more gently registers how (:func:`gently`): the Tune round asks Tune to end
its loop, which saves the experiment's state with every trial finished so far (an abrupt stop
loses the last seconds of it, and a resume would run those trials again); the stage then calls
:func:`raise_if_stopped`. A second signal stops at once.

``ray.init`` installs its own SIGTERM handler in the driver; :func:`take_back` re-installs this
one once Ray is up.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_received: list[int] = []  # the signals received while installed, in order
_gentle: list[Callable[[], bool]] = []  # innermost last; True: it will stop, do not raise
_installed = False


def install() -> Callable[[], None]:
    """Handle SIGTERM and SIGINT in this (main) thread until the returned function restores the
    previous handlers; a no-op outside the main thread, where Python cannot set handlers."""
    global _installed
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _received.clear()
    _installed = True
    for s in SIGNALS:
        signal.signal(s, _on_signal)

    def restore() -> None:
        global _installed
        _installed = False
        for s, handler in previous.items():
            signal.signal(s, handler)

    return restore


def take_back() -> None:
    """Re-install the handlers after a library replaced them (``ray.init`` sets SIGTERM's)."""
    if _installed and threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, _on_signal)


def received() -> int | None:
    """The first signal received since :func:`install`, or None."""
    return _received[0] if _received else None


def exit_code() -> int:
    """128 + the signal received (130 for a bare ``KeyboardInterrupt``: Ctrl+C without us)."""
    return 128 + (received() or signal.SIGINT)


def name() -> str:
    return signal.Signals(received() or signal.SIGINT).name


@contextmanager
def gently(stop: Callable[[], bool]) -> Iterator[None]:
    """While inside, the first signal calls ``stop`` instead of raising; ``stop`` returns False
    when it cannot stop gently now (then the handler raises as usual)."""
    _gentle.append(stop)
    try:
        yield
    finally:
        _gentle.remove(stop)


def raise_if_stopped() -> None:
    """After a gentle stop: unwind as the handler would have."""
    if _received:
        raise KeyboardInterrupt


def _on_signal(signum: int, frame: FrameType | None) -> None:
    first = not _received
    _received.append(signum)
    if first and _gentle and _gentle[-1]():
        return
    raise KeyboardInterrupt

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

The clean stop is bounded (:data:`GRACE_SECONDS`). A SIGTERM sent to the whole process group
(Slurm's ``scancel``, systemd) also stops the local Ray instance's own processes, and then Ray's
calls in the driver wait a minute for them before Ray ends the process with status 1, the folder
still held. So once the grace has passed, a watchdog runs what must not be skipped
(:func:`on_overrun`: the folder's release), says so in one line and exits 128 + the signal.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Job runners wait 30 s by default before SIGKILL (Kubernetes, Slurm's KillWait); a clean stop
# takes a few seconds (Tune saves its state, Ray shuts down)
GRACE_SECONDS = 20.0

_received: list[int] = []  # the signals received while installed, in order
_gentle: list[Callable[[], bool]] = []  # innermost last; True: it will stop, do not raise
_overrun: list[Callable[[], None]] = []  # what the watchdog runs before it exits
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


@contextmanager
def on_overrun(action: Callable[[], None]) -> Iterator[None]:
    """While inside, a stop that overruns its grace runs ``action`` before the process exits
    (it runs on the watchdog's thread, beside a main thread stuck in Ray)."""
    _overrun.append(action)
    try:
        yield
    finally:
        _overrun.remove(action)


def raise_if_stopped() -> None:
    """After a gentle stop: unwind as the handler would have."""
    if _received:
        raise KeyboardInterrupt


def _on_signal(signum: int, frame: FrameType | None) -> None:
    first = not _received
    _received.append(signum)
    if first:
        watchdog = threading.Thread(target=_watchdog, args=(signum,), name="stop", daemon=True)
        watchdog.start()  # armed until the process exits
        if _gentle and _gentle[-1]():
            return
    raise KeyboardInterrupt


def _watchdog(signum: int, grace: float | None = None) -> None:
    """Exit 128 + ``signum`` if the process is still here ``grace`` seconds after the signal."""
    time.sleep(GRACE_SECONDS if grace is None else grace)
    for action in list(_overrun):
        try:
            action()
        except Exception:  # noqa: BLE001 - exiting regardless; the others still run
            pass
    try:
        log.error(
            "stopped by %s: the clean stop took over %.0fs (Ray's own processes may have been "
            "stopped too); exiting now",
            signal.Signals(signum).name,
            GRACE_SECONDS,
        )
        for h in logging.getLogger().handlers:
            h.flush()
        sys.stdout.flush()
    finally:
        os._exit(128 + signum)

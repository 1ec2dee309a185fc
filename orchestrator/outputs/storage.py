"""A write the storage refuses for good: a full disk, a quota, an I/O error, a read-only mount.

Retrying such a write only repeats the error (a full disk stays full while the sweep runs), and
carrying on past it loses results one trial at a time. So every layer turns it into one error,
:class:`WriteFailed`, which says what could not be written, where (the file system's mount point)
and how much space is free there, and the sweep stops on the first one with exit 5
(``cli.ExitCode.WRITE_FAILED``); the same command run again, once there is space, resumes.

The error reaches the driver in three shapes: an ``OSError`` with its errno (this process's own
writes), a library's text (SQLite's "database or disk is full" through MLflow, pyarrow's or Ray's
messages from other processes), or a :class:`WriteFailed` raised here. :func:`find` reads all
three. A failure seen off the main thread (the owner heartbeat, a trial's error) is kept by
:func:`report` until the main thread's next check (:func:`reported`).
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

# errno -> the words used when only the number is known; retrying any of these cannot help
UNRECOVERABLE = {
    errno.ENOSPC: "No space left on device",
    errno.EDQUOT: "Disk quota exceeded",
    errno.EIO: "Input/output error",
    errno.EROFS: "Read-only file system",
}
# what other processes' libraries say for the same errors (SQLite, pyarrow, Ray's wrapped OSError)
PHRASES = (
    "database or disk is full",
    "disk I/O error",
    *UNRECOVERABLE.values(),
)


class WriteFailed(RuntimeError):
    """One line: what could not be written, why, and the free space where it lies.

    Built from plain values (``what``, ``reason``, ``where``, ``free``) so that it pickles: a
    trial raises it in another process and Ray carries it to the driver.
    """

    def __init__(self, what: str, reason: str, where: str, free: int | None) -> None:
        super().__init__(what, reason, where, free)
        self.what, self.reason, self.where, self.free = what, reason, where, free

    def __str__(self) -> str:
        space = "free space unknown" if self.free is None else f"{_size(self.free)} free"
        return (
            f"cannot write {self.what}: {self.reason} ({space} on {self.where}); free space "
            "or fix the storage, then run the same command again: it resumes where it stopped"
        )


def failure(path: Path | str, reason: str) -> WriteFailed:
    """The error for a write of ``path`` refused with ``reason``, measured on its file system."""
    here = _existing(Path(path))
    return WriteFailed(str(path), reason, str(mount_point(here)), free_bytes(here))


def from_os_error(e: OSError, path: Path | str | None = None) -> WriteFailed | None:
    """``e`` as a :class:`WriteFailed` when its errno is one no retry can fix, else None."""
    if e.errno not in UNRECOVERABLE:
        return None
    what = path if path is not None else e.filename
    return failure(what if what is not None else ".", e.strerror or UNRECOVERABLE[e.errno])


def find(exc: BaseException, path: Path | str) -> WriteFailed | None:
    """The storage failure behind ``exc`` (its causes and context included), or None.

    ``path`` names what was being written when the error itself does not (a library's text)."""
    for e in _chain(exc):
        if isinstance(e, WriteFailed):
            return e
        if isinstance(e, OSError):
            found = from_os_error(e, e.filename or path)
            if found is not None:
                return found
    phrase = phrase_in(_text(exc))
    return failure(path, phrase) if phrase else None


def refused_for_good(exc: BaseException) -> bool:
    """Whether ``exc`` is a storage failure no retry can fix (what :func:`find` would find)."""
    return (
        any(
            isinstance(e, WriteFailed) or (isinstance(e, OSError) and e.errno in UNRECOVERABLE)
            for e in _chain(exc)
        )
        or phrase_in(_text(exc)) is not None
    )


def phrase_in(text: str) -> str | None:
    """The storage error a library's message names, if it names one."""
    low = text.lower()
    return next((p for p in PHRASES if p.lower() in low), None)


def _text(exc: BaseException) -> str:
    """Every message along the chain: Ray and Tune wrap the original error in their own."""
    return "\n".join(f"{e.__class__.__name__}: {e}" for e in _chain(exc))


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and all(e is not o for o in out):
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on ``path``'s file system."""
    try:
        st = os.statvfs(_existing(path))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def mount_point(path: Path) -> Path:
    here = _existing(path).resolve()
    while not os.path.ismount(here) and here != here.parent:
        here = here.parent
    return here


def _existing(path: Path) -> Path:
    return next((p for p in (path, *path.parents) if p.exists()), Path("/"))


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


_lock = threading.Lock()
_first: WriteFailed | None = None


def report(found: WriteFailed) -> None:
    """Keep the first failure seen off the main thread, for the main thread to stop on (and to
    say, once: the one line is the entry point's)."""
    global _first
    with _lock:
        if _first is None:
            _first = found


def reported() -> WriteFailed | None:
    """The first failure :func:`report` kept, if any."""
    return _first

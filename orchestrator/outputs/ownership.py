"""One driver per ``--output``: the owner record that a second driver refuses to run beside.

Two drivers on one folder restore the same Tune experiment, run every trial twice and overwrite
each other's files. So the driver that starts or resumes a sweep takes the folder first, before
Ray, MLflow or any model work, and holds it until it exits.

The folder may sit on storage every node of a cluster sees, where ``flock`` is not honoured
everywhere (NFS without a lock manager, some FUSE mounts); the protocol uses only an exclusive
create and atomic renames:

* Records are numbered files ``.owner/<generation>.json``; the highest generation is the owner
  (or the last one, when its record says ``released``).
* A driver writes its record to a temporary file and hard-links it to generation g+1. A link
  fails when the name exists, so of two drivers racing for g+1 exactly one wins; the winner reads
  the record back (write, then verify) and the loser reads the winner's record and refuses.
* g+1 is taken only when g is released or dead, and both are final: a released record is never
  reopened and a dead process does not come back, so the judgement cannot go stale between
  reading g and linking g+1. The owner alone deletes older generations.
* Dead means: on this machine (same host name, boot and pid namespace) its pid is gone, a
  zombie, or belongs to another process start, which is known at once. From another machine
  only the heartbeat tells: the owner rewrites its record every ``HEARTBEAT_SECONDS``, and a
  record whose heartbeat is older than ``STALE_AFTER_SECONDS`` (10 heartbeats, so a slow shared
  filesystem is not mistaken for a dead driver) is dead. This compares the owner's clock with
  the reader's: hosts must agree to well within that (NTP does).
* An owner that finds a newer generation than its own (it was only slow, and was taken over)
  stops instead of writing beside the new owner: by default it sends itself SIGTERM.

Released on every way out of the driver: normal return, exception, SIGTERM and SIGINT (the
entry points' handler, ``runtime/stops.py``, unwinds with ``KeyboardInterrupt`` and exits 143 or
130; where no handler is set, as under a bare ``acquire``, SIGTERM becomes ``SystemExit(143)``);
a SIGKILL leaves the record behind, and the next driver on the same host takes over at once. On a
full disk the released record is written in place (no new block needed), and a heartbeat the
storage refuses for good is reported (``outputs/storage.py``): the sweep stops on it instead of
running on without a place to write.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from orchestrator.core.config import ConfigError
from orchestrator.outputs import storage
from orchestrator.outputs.files import write_text

log = logging.getLogger(__name__)

OWNER_DIR = ".owner"
HEARTBEAT_SECONDS = 10.0
STALE_AFTER_SECONDS = 10 * HEARTBEAT_SECONDS  # another host's owner is dead after this silence
ADVICE = "wait for it, stop it, or use another --output"
_ATTEMPTS = 5  # a lost race re-reads the winner; only a chain of dead winners needs more
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EIO)  # a folder fine but for its storage: exit 5


class OutputInUse(Exception):
    """Another live driver owns the folder; the message is the one line for the user."""


@dataclass(frozen=True)
class Owner:
    host: str
    boot_id: str | None
    pid_ns: str | None
    pid: int
    pid_start: int | None  # clock ticks after boot (/proc/<pid>/stat): tells a reused pid apart
    started: float  # wall-clock seconds
    heartbeat: float
    token: str
    released: bool = False

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.started))
        return f"the sweep started {when} on host {self.host}, pid {self.pid}"


def process_stat(pid: int | str = "self") -> tuple[str, int] | None:
    """(state, start time in clock ticks after boot) of a process from Linux ``/proc``; None when
    it does not exist or this is not Linux. An ``exec`` keeps both, so a shell's last command
    counts from the shell's start."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def in_use_line(output: Path, owner: Owner, advice: str) -> str:
    return f"--output {output} is in use by {owner.describe()}; {advice}"


def live_owner(output: Path) -> Owner | None:
    """The folder's owner while it runs; None when nobody holds it (released, dead, or never)."""
    current = _highest(output / OWNER_DIR)
    if current is None:
        return None
    owner = _load(current[1])
    return owner if owner is not None and _judge(owner)[0] else None


def check_free(output: Path, advice: str = ADVICE) -> None:
    """Refuse (without writing anything) while another driver runs a sweep in ``output``."""
    owner = live_owner(output)
    if owner is not None:
        raise OutputInUse(in_use_line(output, owner, advice))


def acquire(
    output: Path,
    advice: str = ADVICE,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
    on_lost: Callable[[Owner], None] | None = None,
) -> Ownership:
    """Take ``output`` (or raise ``OutputInUse``), taking over a dead owner; logs from whom. A
    folder this process cannot write (read-only file system, no permission) is bad input: the
    owner record is the first thing a driver writes there, so nothing else has been."""
    try:
        return _acquire(output, advice, heartbeat_seconds, on_lost)
    except OSError as e:
        full = storage.from_os_error(e) if e.errno in _NO_SPACE else None
        if full is not None:
            raise full from None
        raise ConfigError(
            f"--output {output}: cannot write there ({e.strerror or e}); use a writable folder"
        ) from None


def _acquire(
    output: Path,
    advice: str,
    heartbeat_seconds: float,
    on_lost: Callable[[Owner], None] | None,
) -> Ownership:
    folder = output / OWNER_DIR
    me = _this_process()
    for _ in range(_ATTEMPTS):
        current = _highest(folder)
        previous = _load(current[1]) if current else None
        if previous is not None:
            alive, why = _judge(previous)
            if alive:
                raise OutputInUse(in_use_line(output, previous, advice))
        generation = current[0] + 1 if current else 1
        path = folder / f"{generation:08d}.json"
        if not _create(path, me):
            continue  # another driver took this generation first: judge its record
        newest = _highest(folder)
        if newest is not None and newest[0] > generation:
            path.unlink()  # the generation was free only because a newer owner cleaned it up
            continue
        if current and previous is None:
            log.warning("took over --output %s from an unreadable owner record", output)
        elif previous is not None and not previous.released:
            log.warning("took over --output %s from %s: %s", output, previous.describe(), why)
        for older in folder.glob("*.json"):
            if older.stem.isdigit() and int(older.stem) < generation:
                older.unlink(missing_ok=True)
        return Ownership(path, me, heartbeat_seconds, on_lost or _stop_this_process)
    raise OutputInUse(f"--output {output}: gave up after {_ATTEMPTS} owner races; try again")


class Ownership:
    """The held folder: a daemon thread refreshes the heartbeat; ``release`` marks it released."""

    def __init__(
        self,
        path: Path,
        record: Owner,
        heartbeat_seconds: float,
        on_lost: Callable[[Owner], None],
    ) -> None:
        self.path, self.record, self.on_lost = path, record, on_lost
        self.lost = False
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one writer of the record at a time: beat or release
        self._thread = threading.Thread(
            target=self._beat_loop, args=(heartbeat_seconds,), name="owner-heartbeat", daemon=True
        )
        self._thread.start()
        if threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _exit_on_sigterm)

    def __enter__(self) -> Ownership:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def beat(self) -> None:
        """Refresh the heartbeat, unless a newer generation shows the folder was taken over."""
        with self._lock:
            if self.lost or self._stop.is_set():
                return
            newest = _highest(self.path.parent)
            if newest is None or newest[0] <= int(self.path.stem):
                self.record = replace(self.record, heartbeat=time.time())
                write_text(self.path, _dumps(self.record))  # a full disk: storage.WriteFailed
                return
            self.lost = True
            self._stop.set()
        newer = _load(newest[1])
        log.error(
            "--output %s was taken over by %s; this driver stops",
            self.path.parent.parent,
            newer.describe() if newer else "another driver",
        )
        self.on_lost(newer or self.record)

    def release(self) -> None:
        """Mark the record released; never raises, as it runs on the way out of every error."""
        self._stop.set()
        with self._lock:
            if not self.lost and not self.record.released:
                self.record = replace(self.record, heartbeat=time.time(), released=True)
                try:
                    _write_record(self.path, _dumps(self.record))
                except (OSError, storage.WriteFailed) as e:
                    log.warning(
                        "could not mark --output %s released (%s); the next driver on this host "
                        "takes it over at once",
                        self.path.parent.parent,
                        e,
                    )

    def _beat_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.beat()
            except storage.WriteFailed as e:  # a full disk: the sweep stops (storage.reported)
                storage.report(e)
            except OSError as e:  # storage hiccup: the next beat retries, well inside the timeout
                log.warning("owner heartbeat not written: %s", e)


def _this_process() -> Owner:
    stat = process_stat()
    now = time.time()
    return Owner(
        host=socket.gethostname(),
        boot_id=_read("/proc/sys/kernel/random/boot_id"),
        pid_ns=_pid_namespace(),
        pid=os.getpid(),
        pid_start=stat[1] if stat else None,
        started=now,
        heartbeat=now,
        token=uuid.uuid4().hex,
    )


def _judge(owner: Owner) -> tuple[bool, str]:
    """(alive, why): the pid on this machine, else the heartbeat's age."""
    if owner.released:
        return False, "released"
    me = _this_process()
    if (owner.host, owner.boot_id, owner.pid_ns) == (me.host, me.boot_id, me.pid_ns):
        stat = process_stat(owner.pid)
        if stat is None and not _pid_exists(owner.pid):
            return False, f"pid {owner.pid} is gone"
        if stat is not None and stat[0] in ("Z", "X"):
            return False, f"pid {owner.pid} has exited"
        if stat is not None and owner.pid_start is not None and stat[1] != owner.pid_start:
            return False, f"pid {owner.pid} now belongs to another process"
        return True, f"pid {owner.pid} runs"
    age = time.time() - owner.heartbeat
    if age > STALE_AFTER_SECONDS:
        return False, f"no heartbeat for {age:.0f}s (more than {STALE_AFTER_SECONDS:.0f}s)"
    return True, f"heartbeat {age:.0f}s ago"


def _pid_exists(pid: int) -> bool:
    """Where /proc cannot say (not Linux): signal 0 checks existence without sending anything."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _highest(folder: Path) -> tuple[int, Path] | None:
    try:
        numbered = [(int(p.stem), p) for p in folder.iterdir() if p.suffix == ".json"]
    except FileNotFoundError:
        return None
    numbered = [n for n in numbered if n[1].stem.isdigit()]
    return max(numbered) if numbered else None


def _load(path: Path) -> Owner | None:
    """The record, or None when it is unreadable (then it is treated as dead)."""
    try:
        return Owner(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _create(path: Path, record: Owner) -> bool:
    """Exclusively create ``path`` holding ``record``: True when this process won it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{record.token}.tmp")
    try:
        tmp.write_text(_dumps(record))
        try:
            os.link(tmp, path)
        except FileExistsError:
            # NFS may answer EEXIST to a retransmitted link that did succeed: the link count tells
            if os.stat(tmp).st_nlink != 2:
                return False
        won = _load(path)
    finally:
        tmp.unlink(missing_ok=True)  # a full disk fails the write: no empty file stays behind
    return won is not None and won.token == record.token


def _write_record(path: Path, text: str) -> None:
    """The owner's record replaced atomically; on a full disk, rewritten in place instead, in the
    block it already holds (a record is a few hundred bytes): a reader who catches it half
    written finds it unreadable, which counts as released, as it is about to be."""
    try:
        write_text(path, text)
    except storage.WriteFailed:
        with open(path, "r+b") as f:
            f.write(text.encode())
            f.truncate()


def _dumps(record: Owner) -> str:
    payload: dict[str, Any] = asdict(record)
    return json.dumps(payload, indent=1, sort_keys=True) + "\n"


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _exit_on_sigterm(signum: int, frame: object) -> None:
    sys.exit(128 + signum)


def _stop_this_process(newer: Owner) -> None:
    """Unwind the driver as ``ray job stop`` would: SIGTERM turns into SystemExit in main."""
    os.kill(os.getpid(), signal.SIGTERM)

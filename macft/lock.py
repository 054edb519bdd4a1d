"""The run lock: one trainer per run folder at a time.

``with run_lock(run_dir) as lock: ...`` holds ``RUN/.lock`` for the whole block. The file says
who holds it (pid, host, start time); the kernel holds the lock itself (``flock``), so a trainer
that is killed, even with SIGKILL, releases it at once. A second trainer, in another process or
in the same one (the TUI), gets ``MacftError`` naming the holder. A lock file left by a process
that is gone (its pid no longer runs on this host) is taken over; ``lock.took_over`` then
describes the previous holder so the caller can say so. Where the file system has no ``flock``
(some network mounts) the pid alone decides. ``macft plan``'s temporary runs take no lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from macft.errors import MacftError

LOCK = ".lock"


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a run folder's lock."""

    pid: int
    host: str
    since: float

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"pid {self.pid} on {self.host}, since {when}"

    @classmethod
    def me(cls) -> "Holder":
        return cls(os.getpid(), socket.gethostname(), time.time())


@dataclass
class Lock:
    """A held lock; ``took_over`` is the previous holder when a stale lock was taken over."""

    path: Path
    holder: Holder
    took_over: Holder | None = None


def lock_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / LOCK


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a pid we may not signal runs too)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_holder(run_dir: str | Path) -> Holder | None:
    """The holder a run folder's lock file names (None: no file, or an unreadable one)."""
    try:
        raw = json.loads(lock_path(run_dir).read_text())
        return Holder(int(raw["pid"]), str(raw["host"]), float(raw["since"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(holder: Holder) -> bool:
    # Another host's pid cannot be checked from here: count it as alive.
    return holder.host != socket.gethostname() or pid_alive(holder.pid)


def _refuse(run_dir: Path, holder: Holder | None) -> MacftError:
    who = holder.describe() if holder else "another trainer"
    return MacftError(f"{run_dir}: already being trained by {who} (lock {lock_path(run_dir)}); "
                      "wait for it, stop it, or train into another folder")


def _flock(fd: int) -> str:
    """"locked", "held" (someone else has it) or "unsupported" (no flock on this mount)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return "locked"
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return "held"
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            return "unsupported"
        raise


def _open_locked(run_dir: Path) -> tuple[int, bool]:
    """An fd of the lock file holding its flock (retried when the file was replaced meanwhile),
    and whether flock works here."""
    path = lock_path(run_dir)
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        got = _flock(fd)
        if got == "held":
            os.close(fd)
            raise _refuse(run_dir, read_holder(run_dir))
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd, got == "locked"
        os.close(fd)  # the holder released (and removed) the file between open and flock
    raise _refuse(run_dir, read_holder(run_dir))


def acquire(run_dir: str | Path) -> Lock:
    """Take the run folder's lock (making the folder); ``release`` gives it back."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd, kernel_lock = _open_locked(run_dir)
    previous = read_holder(run_dir)
    # With flock, a lock file we could lock was left by a process that is gone; without it
    # (some network mounts) the pid decides.
    if previous is not None and not kernel_lock and _alive(previous):
        os.close(fd)
        raise _refuse(run_dir, previous)
    me = Holder.me()
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": me.pid, "host": me.host, "since": me.since}).encode(), 0)
    os.fsync(fd)
    lock = Lock(lock_path(run_dir), me, previous)
    _HELD[lock.path.resolve()] = fd
    return lock


def release(lock: Lock) -> None:
    """Remove the lock file (while still holding the lock) and let go of it."""
    fd = _HELD.pop(lock.path.resolve(), None)
    if fd is None:
        return
    with contextlib.suppress(FileNotFoundError):
        lock.path.unlink()
    os.close(fd)


_HELD: dict[Path, int] = {}


@contextlib.contextmanager
def run_lock(run_dir: str | Path):
    """Hold ``run_dir``'s lock for the block; raises ``MacftError`` naming the holder when
    another trainer has it. Yields the ``Lock`` (``took_over``: a stale holder replaced)."""
    lock = acquire(run_dir)
    try:
        yield lock
    finally:
        release(lock)

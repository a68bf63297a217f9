"""Advisory locks that tell a repair which segments a live writer holds, and which process holds them.

Each StoreWriter holds an exclusive ``flock`` on ``segments/<segment>/writer.lock`` for its whole
life; ``verify --repair`` holds ``repair.lock`` at the store's root and takes a segment's lock
before it touches that segment's leftovers. The kernel drops a lock when its process dies (kill -9
included), so a lock never outlives its holder; the file itself stays and names the last holder
(pid, host, since when) for the messages.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

WRITER_LOCK = "writer.lock"
REPAIR_LOCK = "repair.lock"


class LockHeld(RuntimeError):
    """Another process holds the lock; `holder` says which (pid and host, as it wrote them)."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is locked by {holder}")
        self.path = path
        self.holder = holder


def holder_of(path: Path) -> str:
    """Who holds (or last held) the lock at `path`, from what it wrote there: 'pid P on host H since T'."""
    try:
        with open(path, "rb") as f:
            info = json.loads(f.read(4096) or b"{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
        return f"{info.get('role', 'a process')} pid {int(info['pid'])} on host {info['host']} since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its pid and host yet"


class FileLock:
    """An exclusive flock on one file, with the holder's pid and host written into it."""

    def __init__(self, path: Path, role: str) -> None:
        self.path = Path(path)
        self.role = role
        self._fd = -1

    def try_acquire(self) -> bool:
        """Take the lock without waiting; False when another process holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                return False
            raise
        info = {"role": self.role, "pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return True

    def acquire(self, wait_s: float = 0.0) -> FileLock:
        """Take the lock, waiting up to `wait_s` seconds; raises LockHeld naming the holder otherwise."""
        deadline = time.monotonic() + wait_s
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                raise LockHeld(self.path, holder_of(self.path))
            time.sleep(0.05)
        return self

    def release(self) -> None:
        """Drop the lock (the file stays, naming its last holder)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd >= 0

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_locked(path: Path) -> bool:
    """Whether a live process holds the lock at `path`; a read-only probe that takes and drops a shared lock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:  # no lock file (no writer since locks exist), a link, or unreadable: nothing to go by
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False

"""The one-writer lock beside a store file."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from monitor.store.errors import StoreBusy, StoreError, _os_problem


class StoreLock:
    """The writer's lock on a store: `<store>.lock`, holding the owner's pid.

    `flock` belongs to the open file, so the kernel releases it when the process ends, however
    it ends (SIGKILL included): a stale lock file never blocks the next start.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(f"{path}.lock")
        self._fd: int | None = None

    def acquire(self) -> StoreLock:
        """Take the lock or raise StoreBusy (or StoreError when the file cannot be made)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreError(_os_problem(self.path, exc)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise StoreBusy(self.path.with_suffix(""), holder) from None
            raise StoreError(_os_problem(self.path, exc)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race with a new holder)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


def lock_store(path: str | Path) -> StoreLock:
    """Take the one-writer lock of the store at `path`; raises StoreBusy when it is held."""
    return StoreLock(Path(path)).acquire()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None

"""Files made by a forked process beside the render (`channel-monitor render` on two cores).

`render` is a new process each time, so it has none of the channel pages the render worker of
`run` keeps between renders: at 10,000 services the pages (the summary and the 200 channel
pages) are about half of the files' CPU, the feeds, JSON files and badges the other half. A
forked child has the model already built (copied on write: nothing is sent to it) and makes the
pages while the parent makes the rest; the pages come back through a pipe and the parent writes
every file, so publishing, and what a crash leaves, is as when one process does it all.

What comes back is framed and ends with an end mark: a child that dies, is killed or raises
before the end mark gives `ForkFailed`, and the caller makes the missing files itself. What has
arrived and not yet been taken is capped (`HELD`): past it the child waits, so a plan of 100,000
services never holds all of its 2,000 pages at once in the parent."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import signal
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator

#: Bytes of files received and not yet taken that the reader holds before it stops reading
#: (the child then waits on the full pipe).
HELD = 64 * 1024 * 1024
#: The pipe's buffer asked for (Linux's default is 64 KiB): the parent's reader thread waits for
#: the interpreter lock up to 5 ms each time the child filled it, while the parent renders.
PIPE_SIZE = 1024 * 1024
_FRAME = struct.Struct("<II")  # length of the path, length of the bytes
_END = _FRAME.pack(0, 0)


class ForkFailed(RuntimeError):
    """The child ended without sending every file: the caller makes the rest itself."""


def cores() -> int:
    """The CPUs this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def available() -> bool:
    """Whether forking a helper can gain anything: fork exists and a second CPU is allowed."""
    return hasattr(os, "fork") and cores() > 1


class Forked:
    """`make()` run in a forked child; its (path, bytes) pairs read back as they come.
    Raises OSError when no process can be forked (the caller makes the files itself).

    Use as a context manager: leaving it (also by an error) kills a child still running and
    reaps it, so no process outlives the render.
    """

    def __init__(self, make: Callable[[], Iterator[tuple[str, bytes]]]) -> None:
        self._ready: deque[tuple[str, bytes]] = deque()
        self._held = 0
        self._done = False  # the end mark arrived
        self._closed = False  # the reader stopped (end mark, end of pipe or a bad frame)
        self._lock = threading.Condition()
        self._status: int | None = None  # the child's exit code, once reaped
        self.most_held = 0  # the most bytes held at once (what the tests read)
        read, write = os.pipe()
        with contextlib.suppress(OSError, AttributeError):  # Linux: fewer waits on a full pipe
            fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        try:
            self.pid = os.fork()
        except OSError:
            os.close(read)
            os.close(write)
            raise
        if self.pid == 0:  # the child: never returns
            os.close(read)
            _child(make, write)
        os.close(write)
        self._reader = threading.Thread(
            target=self._read, args=(read,), name="forked-pages", daemon=True
        )
        self._reader.start()

    def __enter__(self) -> Forked:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _read(self, fd: int) -> None:
        """The reader thread: frames into `_ready`, waiting while `HELD` bytes are held."""
        buffer = bytearray()
        try:
            with open(fd, "rb", buffering=0, closefd=True) as pipe:
                while True:
                    chunk = pipe.read(1 << 20)
                    if not chunk:
                        return
                    buffer += chunk
                    offset = 0
                    while len(buffer) - offset >= _FRAME.size:
                        name_size, data_size = _FRAME.unpack_from(buffer, offset)
                        if name_size == 0:
                            with self._lock:
                                self._done = True
                            return
                        end = offset + _FRAME.size + name_size + data_size
                        if len(buffer) < end:
                            break
                        start = offset + _FRAME.size
                        name = bytes(buffer[start : start + name_size]).decode()
                        data = bytes(buffer[start + name_size : end])
                        offset = end
                        with self._lock:
                            self._ready.append((name, data))
                            self._held += len(data)
                            self.most_held = max(self.most_held, self._held)
                            self._lock.notify_all()
                            while self._held > HELD and not self._closed:
                                self._lock.wait()
                    del buffer[:offset]
        except (OSError, UnicodeDecodeError):
            return
        finally:
            with self._lock:
                self._closed = True
                self._lock.notify_all()

    def _take(self) -> tuple[str, bytes]:
        name, data = self._ready.popleft()
        self._held -= len(data)
        self._lock.notify_all()
        return name, data

    def ready(self) -> Iterator[tuple[str, bytes]]:
        """What has arrived so far, without waiting."""
        while True:
            with self._lock:
                if not self._ready:
                    return
                pair = self._take()
            yield pair

    def rest(self) -> Iterator[tuple[str, bytes]]:
        """Everything still to come, waiting for it; `ForkFailed` if the child stopped short."""
        while True:
            with self._lock:
                while not self._ready and not self._closed:
                    self._lock.wait()
                if not self._ready:
                    break
                pair = self._take()
            yield pair
        self._reader.join()
        status = self._reap()
        if not self._done or status != 0:
            raise ForkFailed(f"the helper process ended with status {status} before its end")

    def _reap(self) -> int | None:
        """Wait for the child to end: its exit code (negative: killed by that signal)."""
        if self.pid > 0:
            _, status = os.waitpid(self.pid, 0)
            self.pid, self._status = -1, os.waitstatus_to_exitcode(status)
        return self._status

    def close(self) -> None:
        """Stop the child if it still runs, reap it and stop the reader."""
        if self.pid > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                self._reap()
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._reader.join()


def _child(make: Callable[[], Iterator[tuple[str, bytes]]], fd: int) -> None:
    """The forked child: `make()`'s pairs framed into `fd`, the end mark, then `os._exit`.

    It never returns into the caller's frames (whose `finally` blocks would close the parent's
    store or remove its work folder) and never collects garbage (an object finalised here, a
    store's connection, would act on what the parent still uses)."""
    code = 1
    try:
        gc.disable()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        with open(fd, "wb", buffering=1 << 20, closefd=True) as pipe:
            for name, data in make():
                encoded = name.encode()
                pipe.write(_FRAME.pack(len(encoded), len(data)))
                pipe.write(encoded)
                pipe.write(data)
            pipe.write(_END)
        code = 0
    except BaseException:  # whatever happens, the child only exits
        code = 1
    finally:
        os._exit(code)

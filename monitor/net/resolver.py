"""Host name lookups for the probes, on threads of their own.

`getaddrinfo` blocks, so the loop runs it on a thread. On the loop's default executor that is
min(32, cores + 4) threads, six on two cores, shared with everything else the process hands to
threads. A channel whose name servers drop queries holds a thread per lookup for the
resolver's whole timeout (glibc: 5 s per try and server). A few such names would then hold
every thread, and every other probe by host name would wait behind them, however healthy its
target. So the lookups run on a pool of their own, `THREADS` wide, and lookups of the same
name at the same time share one thread: one hung name costs one thread, not one per service.

The loops of `run` and `demo` (`OwnLookups`) send every other lookup of the process here too:
aiohttp (Prometheus queries) and httpx (alert sinks) ask `loop.getaddrinfo`, which under uvloop
runs on libuv's four threads (asyncio's own loop: its default executor). Four lookups of a
sink whose name servers drop queries would hold all four, and every Prometheus query and every
other sink by host name would wait behind them until their own timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections import deque

#: Lookups at once: distinct hung names each hold one until the resolver gives up.
THREADS = 64


class _Pool:
    """Daemon threads that take lookups in turn, started as needed up to `THREADS`.

    Not `concurrent.futures`: its threads are joined at the interpreter's exit, so a lookup
    that hangs for its resolver's timeout held up the end of `run` after SIGTERM for as long
    (20 s in a test). A daemon thread does not: the process ends, and the lookup with it."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.started = 0
        self._jobs: deque[tuple] = deque()
        self._idle = 0
        self._lock = threading.Condition()

    def submit(self, loop: asyncio.AbstractEventLoop, args: tuple) -> asyncio.Future:
        """`socket.getaddrinfo(*args)` on a thread of the pool; its answer in the future."""
        future = loop.create_future()
        with self._lock:
            self._jobs.append((loop, future, args))
            # more lookups waiting than idle threads to take them (a thread woken a moment
            # ago counts as idle until it takes one): another thread
            if len(self._jobs) > self._idle and self.started < self.threads:
                try:
                    threading.Thread(target=self._work, name="resolve", daemon=True).start()
                    self.started += 1
                except RuntimeError:  # no thread to be had now: the running ones take it
                    pass
            self._lock.notify()
        return future

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._jobs:
                    self._idle += 1
                    self._lock.wait()
                    self._idle -= 1
                loop, future, args = self._jobs.popleft()
            try:
                outcome: tuple = (True, socket.getaddrinfo(*args))
            except Exception as exc:  # gaierror, UnicodeError, ...: the probe says which
                outcome = (False, exc)
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, future, *outcome)


def _settle(future: asyncio.Future, ok: bool, value: object) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)  # type: ignore[arg-type]


_pool = _Pool(THREADS)
#: (loop, getaddrinfo's arguments) -> the lookup under way, shared by all who ask meanwhile.
_under_way: dict[tuple, asyncio.Future] = {}


async def getaddrinfo(
    host: str | bytes | None,
    port: str | int | None,
    family: int = 0,
    type: int = socket.SOCK_STREAM,
    proto: int = 0,
    flags: int = 0,
) -> list[tuple]:
    """`socket.getaddrinfo` off the loop, on the pool. A probe whose timeout ends the wait
    leaves the lookup running for the others that share it."""
    loop = asyncio.get_running_loop()
    args = (host, port, family, type, proto, flags)
    key = (loop, args)
    lookup = _under_way.get(key)
    if lookup is None:
        lookup = _under_way[key] = _pool.submit(loop, args)
        lookup.add_done_callback(lambda done: _finished(key, done))
    return await asyncio.shield(lookup)


class OwnLookups:
    """Mixed into an event loop class: `loop.getaddrinfo`, which aiohttp, httpx and the rest
    ask, runs on this module's pool instead of the loop's own threads."""

    async def getaddrinfo(
        self,
        host: str | bytes | None,
        port: str | int | None,
        *,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[tuple]:
        """An IP address (and numeric port) is answered at once, as uvloop's own did: aiohttp's
        `sock_connect` asks for the address it connects to, and queued behind hung names on
        the pool, a query to an address waited for them. Anything else goes to the pool."""
        numeric = flags | socket.AI_NUMERICHOST | socket.AI_NUMERICSERV  # never a name server
        with contextlib.suppress(socket.gaierror, UnicodeError):
            return socket.getaddrinfo(host, port, family, type, proto, numeric)
        return await getaddrinfo(host, port, family, type, proto, flags)


def _finished(key: tuple, done: asyncio.Future) -> None:
    if _under_way.get(key) is done:
        del _under_way[key]
    if not done.cancelled():
        done.exception()  # retrieved: a failure nobody waited for any more is not logged

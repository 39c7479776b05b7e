"""Host name lookups for the probes, on threads of their own.

`getaddrinfo` blocks, so the loop runs it on a thread. On the loop's default executor that is
min(32, cores + 4) threads, six on two cores, shared with everything else the process hands to
threads. A channel whose name servers drop queries holds a thread per lookup for the
resolver's whole timeout (glibc: 5 s per try and server). A few such names would then hold
every thread, and every other probe by host name would wait behind them, however healthy its
target. So the lookups run on a pool of their own, `THREADS` wide, and lookups of the same
name at the same time share one thread: one hung name costs one thread, not one per service.
"""

from __future__ import annotations

import asyncio
import socket
from concurrent.futures import ThreadPoolExecutor

#: Lookups at once: distinct hung names each hold one until the resolver gives up.
THREADS = 64

_pool: ThreadPoolExecutor | None = None
#: (loop, host, port) -> the lookup under way, shared by every probe that asks meanwhile.
_under_way: dict[tuple[asyncio.AbstractEventLoop, str, int], asyncio.Future] = {}


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="resolve")
    return _pool


def _lookup(host: str, port: int) -> list[tuple]:
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


async def getaddrinfo(host: str, port: int) -> list[tuple]:
    """`socket.getaddrinfo(host, port, type=SOCK_STREAM)` off the loop. A probe whose timeout
    ends the wait leaves the lookup running for the others that share it."""
    loop = asyncio.get_running_loop()
    key = (loop, host, port)
    lookup = _under_way.get(key)
    if lookup is None:
        lookup = _under_way[key] = loop.run_in_executor(_executor(), _lookup, host, port)
        lookup.add_done_callback(lambda done: _finished(key, done))
    return await asyncio.shield(lookup)


def _finished(key: tuple[asyncio.AbstractEventLoop, str, int], done: asyncio.Future) -> None:
    if _under_way.get(key) is done:
        del _under_way[key]
    if not done.cancelled():
        done.exception()  # retrieved: a failure nobody waited for any more is not logged

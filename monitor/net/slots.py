"""The probes in flight at once, with room made for the ones a hung target holds.

The pipeline runs at most `size` probes at once (their network part): the limit bounds the
sockets and the event loop's work. A target that hangs (a firewall that drops the packets, a
server that accepts and never answers) holds its probe's slot until the probe's timeout. With
a 10 s timeout, 40 hung probes a second (2,400 of 100,000 services at 60 s) hold 400 slots, and
every other service would wait behind them: one failing platform would stall the monitoring of
all the others.

So a probe that has held its slot for `linger` seconds gives the slot back and runs on *lent*:
it goes on to its answer or its timeout, but no longer counts against the limit. A probe
waiting on the network costs a socket and a few kilobytes, not CPU, so lending is safe up to
`most_lent` at once, which leaves room in the file-descriptor limit for everything else; past
that, probes wait for a slot again. The workers that run the probes are told of each loan
(`on_lend`), so that a lent probe does not hold a worker that others wait for either.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import resource
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Seconds a probe holds its slot before it is lent: a live page answers well within it.
LINGER = 2.0
#: Lent probes at most, whatever the file-descriptor limit (each is a socket and its buffers).
MOST_LENT = 10_000
#: Descriptors kept for what is not a probe: the store, the listeners, the page worker, logs.
RESERVED_FDS = 512


def raise_fd_limit(size: int) -> int:
    """Raise the soft limit of open files to what `size` slots and the most lent probes need
    (within the hard limit, as Go programs such as Prometheus raise theirs at start), so lent
    probes have room; never lower it, and not to an unlimited or huge hard limit, which the
    browser's processes would inherit. Returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = size + MOST_LENT + RESERVED_FDS
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass  # a container that forbids it: lend within the soft limit (`Slots` says so)
    return soft


def lendable(size: int) -> int:
    """How many probes may run lent beside `size` slots within this process's open-files
    limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MOST_LENT
    return max(0, min(MOST_LENT, soft - size - RESERVED_FDS))


class Slots:
    """`token = await slots.acquire()` before a probe's network part, `slots.release(token)`
    after it.

    A probe held is an entry of a dict (its token and when it took its slot: no object the
    collector tracks, and no timer per probe); one timer, while anything is held, looks at the
    oldest entries every quarter of `linger` and lends those past it, so a probe is lent after
    `linger` to `1.25 * linger` seconds."""

    def __init__(
        self,
        size: int,
        linger: float = LINGER,
        most_lent: int | None = None,
        on_lend: Callable[[], None] | None = None,
    ) -> None:
        self.size = size
        self.linger = linger
        self.most_lent = lendable(size) if most_lent is None else most_lent
        if most_lent is None and self.most_lent < 100:
            log.warning(
                "room for %d probes of slow or hung targets beside %d slots (open-files limit "
                "%d): more hung targets than that hold the slots the others wait for "
                "/ 打开文件数上限过低，挂起的目标可能占满探测名额",
                self.most_lent,
                size,
                resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            )
        #: Told each time a probe is lent (the scheduler adds a worker).
        self.on_lend = on_lend
        #: Probes running on lent now, and lent since the start (`/metrics`, tests).
        self.lent = 0
        self.loans = 0
        self._free = asyncio.Semaphore(size)
        #: token -> when its probe took its slot (the loop's clock), oldest first; lent
        #: probes are no longer here.
        self._held: dict[int, float] = {}
        self._tokens = itertools.count()
        self._sweep: asyncio.TimerHandle | None = None

    async def acquire(self) -> int:
        """Wait for a slot; the token is what `release` takes."""
        await self._free.acquire()
        loop = asyncio.get_running_loop()
        token = next(self._tokens)
        self._held[token] = loop.time()
        if self._sweep is None:
            self._sweep = loop.call_later(self.linger / 4, self._lend_the_lingering)
        return token

    def release(self, token: int) -> None:
        if self._held.pop(token, None) is None:
            self.lent -= 1  # it ran on lent: its slot was given back then
        else:
            self._free.release()

    def _lend_the_lingering(self) -> None:
        loop = asyncio.get_running_loop()
        cutoff = loop.time() - self.linger
        lingering = []
        for token, since in self._held.items():
            if since > cutoff or len(lingering) >= self.most_lent - self.lent:
                break  # the rest came later (or the descriptors are spoken for)
            lingering.append(token)
        try:
            for token in lingering:
                del self._held[token]
                self.lent += 1
                self.loans += 1
                self._free.release()
                if self.on_lend is not None:
                    self.on_lend()
        finally:  # a failing `on_lend` must not end the lending for good
            self._sweep = (
                loop.call_later(self.linger / 4, self._lend_the_lingering) if self._held else None
            )

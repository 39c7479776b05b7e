"""A lock per service that exists only while it is held or waited for.

The pipeline and the push receiver judge one service at a time (an observation and a silence
of the same service must not interleave). A lock kept per service for the life of the process
is 100,000 objects at 100,000 services, and those first made after the collector's freeze are
walked by every full collection; made on demand and dropped when free, the locks alive are the
few services being judged at this instant.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager


class KeyedLocks:
    """`async with locks.hold(key):` — one holder per key at a time, waiters in order."""

    def __init__(self) -> None:
        #: key -> [lock, holders and waiters]
        self._held: dict[Hashable, list] = {}

    def __len__(self) -> int:
        """Keys held or waited for now."""
        return len(self._held)

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        entry = self._held.get(key)
        if entry is None:
            entry = self._held[key] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._held[key]

"""A file the running monitor watches by polling its stat: the plan and the operators' notices.

Polling `stat` every couple of seconds costs a few microseconds and needs no dependency; both
files are small and change by hand. The stamp is the modification time, the size and the
inode, so an edit in place and an editor's rename-over are both seen. `nudge()` asks for a
look now (SIGHUP for the plan) and makes the next look act even if the stamp is unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

log = logging.getLogger(__name__)

#: How often the file's stat is looked at (seconds).
POLL = 2.0


class PolledFile:
    """Calls `check()` every `poll` seconds (or at once when nudged) from the web server's
    start until its cleanup; `changed()` tells a subclass whether the file was edited."""

    name = "file"

    def __init__(self, path: Path, poll: float = POLL) -> None:
        self.path = Path(path)
        self.poll = poll
        self._stamp = self._stat()
        self._forced = False
        self._task: asyncio.Task | None = None
        self._closing = False
        self._wake: asyncio.Event | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def changed(self) -> bool:
        """Whether the file changed since the last look (or a nudge asked to act anyway)."""
        stamp = self._stat()
        forced, self._forced = self._forced, False
        if stamp == self._stamp and not forced:
            return False
        self._stamp = stamp
        return True

    def nudge(self) -> None:
        """Look now and act even on an unchanged file (a signal handler may call this)."""
        self._forced = True
        if self._wake is not None:
            self._wake.set()

    async def check(self) -> None:
        """One look at the file; subclasses say what to do."""
        raise NotImplementedError

    # --- lifecycle (started with the web server, closed with the daemon) ------------------

    async def on_startup(self, _app: object) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._watch(), name=self.name)

    async def on_cleanup(self, _app: object) -> None:
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            await self._task

    async def _watch(self) -> None:
        assert self._wake is not None
        while not self._closing:
            try:
                await self.check()
            except Exception:  # never let the watcher die: the rest of the monitor goes on
                log.exception("%s: checking %s failed; going on", self.name, self.path)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll)
            self._wake.clear()

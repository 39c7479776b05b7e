"""Checkpoints of the store's WAL, on a thread and a connection of their own.

In WAL mode every commit appends pages to `<store>-wal`; a checkpoint copies them back into
the store file so the WAL can start again from its beginning. Left to SQLite, the commit that
takes the WAL past 1,000 pages does the checkpoint itself, inside the flush: at 100,000
services a minute that was every 25 flushes or so, and it made the flush late enough for the
next one to be skipped. So the writer's connection never checkpoints (`wal_autocheckpoint=0`,
set by `monitor.store.Store`) and this thread does, right after each flush (the store
pokes it, so the copy is done in the rest of the second) and at least every
`CHECKPOINT_EVERY` seconds.

Its checkpoints are PASSIVE: SQLite copies what no reader still needs without waiting for the
writer or for readers and never calls the busy handler, so a flush committing meanwhile neither
waits for it nor is waited for. Once the WAL is wholly copied back, the writer's next commit
starts it again from the beginning, and `journal_size_limit` (`WAL_LIMIT`) then truncates the
file: with a checkpoint after every flush the WAL holds about one flush's pages. A reader
holding an old snapshot for long (a render) keeps the pages after it in the WAL until it ends;
the next checkpoint after that copies them.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from pathlib import Path

log = logging.getLogger(__name__)

#: At most this many seconds between two checkpoints when nothing pokes the thread (commits
#: other than flushes: incidents, alerts). Longer than a flush interval, so that while flushes
#: poke it the timer never fires in the middle of the next flush.
CHECKPOINT_EVERY = 5.0
#: Bytes the WAL file is cut back to when it starts again (SQLite's `journal_size_limit`).
WAL_LIMIT = 16 * 1024**2


class Checkpointer:
    """A thread that checkpoints one store file (PASSIVE) after each poke, or every `every`
    seconds, until `close`."""

    def __init__(self, path: Path, every: float | None = None) -> None:
        self.path = path
        self.every = CHECKPOINT_EVERY if every is None else every
        # autocommit, and no busy handler: a PASSIVE checkpoint never waits for anyone
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=0)
        #: Checkpoints done, those SQLite could not finish (a reader still needed the pages,
        #: or the lock was taken), failures, and the last ones' durations (seconds).
        self.count = 0
        self.unfinished = 0
        self.errors = 0
        self.durations: deque[float] = deque(maxlen=1000)
        #: The last checkpoint's (WAL frames, frames copied back into the file).
        self.last: tuple[int, int] = (0, 0)
        #: The thread the checkpoints ran on (tests check it is not the writer's).
        self.thread_id: int | None = None
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="store-checkpoint", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """A commit happened: checkpoint it soon (before the next flush, as a rule)."""
        self._wake.set()

    def _run(self) -> None:
        self.thread_id = threading.get_ident()
        while True:
            self._wake.wait(self.every)
            self._wake.clear()
            if self._stopping:
                return
            self.checkpoint()

    def checkpoint(self) -> None:
        """One PASSIVE checkpoint; a failure is logged once (and counted), the thread goes on."""
        started = time.perf_counter()
        try:
            busy, frames, copied = self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            self.errors += 1
            if self.errors == 1:
                log.warning("store %s: a checkpoint failed (%s); retrying", self.path, exc)
            return
        self.durations.append(time.perf_counter() - started)
        self.count += 1
        self.unfinished += bool(busy) or copied < frames
        self.last = (frames, copied)

    def close(self) -> None:
        """Stop the thread (after the checkpoint it may be doing) and close its connection."""
        self._stopping = True
        self._wake.set()
        self._thread.join()
        self.db.close()

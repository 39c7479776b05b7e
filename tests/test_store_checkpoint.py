"""The store's WAL checkpoints run on a thread of their own, never inside a flush: the writer's
commits never checkpoint, the WAL stays bounded, a checkpoint (or a prune) in progress never
holds a flush, `close` leaves the file checkpointed, a writer killed while checkpoints run
loses no committed observation, and readers keep reading meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import wait_for

import monitor.store
from monitor.observation import Observation
from monitor.store import PendingObservation, Store, open_reader

START = datetime(2022, 7, 1, 4, 0, tzinfo=UTC)


def observe(store: Store, services: int, minute: int, serving: bool = True) -> None:
    """One observation of each of `services` services at START + `minute` minutes."""
    for index in range(services):
        seen = Observation(START + timedelta(minutes=minute), serving, "HTTP 200", 200, 0.1)
        store.add(PendingObservation(f"channel-{index // 100}", f"s{index}", seen, "up", None))


def stored(db: sqlite3.Connection) -> int:
    """Observations the file holds (each run counts its own)."""
    return db.execute("SELECT coalesce(sum(count), 0) FROM runs").fetchone()[0]


def caught_up(store: Store) -> bool:
    """Whether a checkpoint begun after the last commit has copied the whole WAL back: two
    more than counted now (one may have been under way during the commit)."""
    checkpoints = store.checkpoints
    assert checkpoints is not None
    goal = checkpoints.count + 2

    def done() -> bool:
        checkpoints.poke()
        return checkpoints.count >= goal

    wait_for(done, what="two more checkpoints")
    frames, copied = checkpoints.last
    return frames == copied


def wal_bytes(db: Path) -> int:
    wal = Path(f"{db}-wal")
    return wal.stat().st_size if wal.exists() else 0


async def test_checkpoints_run_on_a_thread_of_their_own_and_never_in_a_commit(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "monitor.db")
    try:
        assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        assert store.checkpoints is not None
        writer = await store.call(threading.get_ident)
        for minute in range(5):
            observe(store, 300, minute, serving=minute % 2 == 0)  # a new run each time
            await store.call(store.flush)
        assert caught_up(store)
        assert store.checkpoints.thread_id not in (None, writer, threading.get_ident())
        # what was copied back is in the file itself: `immutable` reads it without the WAL
        reader = sqlite3.connect(f"{(tmp_path / 'monitor.db').as_uri()}?immutable=1", uri=True)
        try:
            assert stored(reader) == 5 * 300
        finally:
            reader.close()
    finally:
        store.close()


def test_the_wal_stays_bounded_by_the_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each checkpoint copies the WAL back; the next commit then starts it again and cuts the
    file to `WAL_LIMIT`. Without the checkpoint thread it only grows."""
    monkeypatch.setattr(monitor.store.schema, "WAL_LIMIT", 64 * 1024)
    db = tmp_path / "monitor.db"
    store = Store(db)
    try:
        observe(store, 3000, 0)
        store.flush()
        grown = wal_bytes(db)
        assert grown > 4 * 64 * 1024  # one flush alone takes it past the limit
        assert caught_up(store)
        for minute in range(1, 4):  # small flushes after the WAL was copied back
            observe(store, 10, minute, serving=False)
            store.flush()
            assert wal_bytes(db) <= 64 * 1024
            assert caught_up(store)
        # without the thread, the same writes only make the WAL longer
        store.checkpoints.close()  # type: ignore[union-attr]
        store.checkpoints = None
        for minute in range(4, 8):
            observe(store, 3000, minute, serving=minute % 2 == 0)
            store.flush()
        assert wal_bytes(db) > 2 * grown
    finally:
        store.close()
    assert wal_bytes(db) == 0


def test_a_flush_is_not_held_by_a_checkpoint_under_way(tmp_path: Path) -> None:
    """The checkpoint thread held inside its checkpoint call (it has copied back and not
    returned): flushes still commit, none waits for it."""
    store = Store(tmp_path / "monitor.db")
    checkpoints = store.checkpoints
    assert checkpoints is not None
    inside, release, returned = threading.Event(), threading.Event(), threading.Event()
    real = checkpoints.checkpoint

    def held() -> None:
        inside.set()
        real()
        release.wait(30)
        returned.set()

    checkpoints.checkpoint = held  # type: ignore[method-assign]
    try:
        observe(store, 100, 0)
        store.flush()
        assert inside.wait(10)
        for minute in range(1, 4):
            observe(store, 100, minute, serving=minute % 2 == 0)
            assert store.flush() == 100
        assert not returned.is_set()  # all three committed while the call was under way
        assert stored(store.db) == 400
    finally:
        release.set()
        store.close()


def test_a_reader_holding_an_old_snapshot_holds_neither_flushes_nor_its_own_reads(
    tmp_path: Path,
) -> None:
    """The page worker's read-only connection in the middle of a render: the checkpoint
    cannot copy what it may still read, flushes go on, and once it ends all is copied."""
    db = tmp_path / "monitor.db"
    store = Store(db)
    try:
        observe(store, 200, 0)
        store.flush()
        reader = open_reader(db)
        try:
            reader.execute("BEGIN")
            assert stored(reader) == 200
            for minute in range(1, 4):
                observe(store, 200, minute, serving=minute % 2 == 0)
                store.flush()
            assert not caught_up(store)  # the reader's snapshot pins the WAL
            assert stored(reader) == 200  # it still reads what it began with
            reader.execute("COMMIT")
            assert stored(reader) == 800
        finally:
            reader.close()
        assert caught_up(store)
        assert store.checkpoints.unfinished > 0  # type: ignore[union-attr]
    finally:
        store.close()


def test_close_leaves_the_whole_store_in_its_file(tmp_path: Path) -> None:
    db = tmp_path / "monitor.db"
    store = Store(db)
    checkpoints = store.checkpoints
    observe(store, 500, 0)
    store.flush()
    observe(store, 500, 1, serving=False)  # still buffered: close writes it
    # an idle reader stays open (the page worker ending): closing the writer then copies
    # nothing back by itself, the store's own checkpoint at close does
    idle = sqlite3.connect(db)
    idle.execute("SELECT count(*) FROM sqlite_master").fetchall()
    try:
        store.close()
        assert checkpoints is not None and not checkpoints._thread.is_alive()
        assert wal_bytes(db) == 0
    finally:
        idle.close()
    reader = sqlite3.connect(f"{db.as_uri()}?immutable=1", uri=True)
    try:
        assert stored(reader) == 1000
    finally:
        reader.close()


async def test_a_prune_holds_the_store_thread_for_one_slice_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """An expiry of many rows: `prune` deletes one slice and returns, so a flush queued
    behind it on the store's thread runs next; the flushes delete the rest, a slice each,
    and every observation they write is kept."""
    store = Store(tmp_path / "monitor.db", retention=timedelta(minutes=30))
    store.prune_slice, store.flush_prune_slice = 50, 20
    try:
        for minute in range(0, 10):
            observe(store, 40, minute, serving=minute % 2 == 0)  # 400 runs of one
            await store.call(store.flush)
        observe(store, 40, 50)
        pruned = asyncio.ensure_future(store.call(store.prune, START + timedelta(minutes=45)))
        flushed = asyncio.ensure_future(store.call(store.flush))
        await pruned
        assert await flushed == 40
        assert store.pruning
        left = store.db.execute(
            "SELECT count(*) FROM runs WHERE at < ?", (START.timestamp() + 900,)
        )
        assert left.fetchone()[0] == 400 - 50 - 20  # the prune's slice, then the flush's
        minute = 51
        while store.pruning:
            observe(store, 40, minute)
            await store.call(store.flush)
            minute += 1
        assert minute - 51 == (400 - 50 - 20) // 20 + 1  # a slice a flush
        assert stored(store.db) == 40 * (minute - 50)  # the old ones gone, the new all kept
    finally:
        store.close()


CRASH = """
import os, signal, sys, time
from datetime import datetime, timedelta, UTC
from monitor.observation import Observation
from monitor.store import PendingObservation, Store
store = Store(sys.argv[1])
start = datetime(2022, 7, 1, 4, 0, tzinfo=UTC)
flushed = 0
for minute in range(int(sys.argv[2])):
    for index in range(300):
        seen = Observation(start + timedelta(minutes=minute), (minute + index) % 3 > 0,
                           "HTTP 200", 200, 0.1)
        store.add(PendingObservation("c", f"s{index}", seen, "up", None))
    flushed += store.flush()
    while minute == 20 and store.checkpoints.count == 0:  # the thread is copying by now
        time.sleep(0.01)
print(flushed, store.checkpoints.count, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # while the checkpoint thread may be copying
"""


def test_a_writer_killed_while_checkpoints_run_keeps_every_committed_observation(
    tmp_path: Path,
) -> None:
    db = tmp_path / "monitor.db"
    done = subprocess.run(
        [sys.executable, "-c", CRASH, str(db), "40"],
        timeout=120,
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    flushed, checkpoints = map(int, done.stdout.split())
    assert flushed == 40 * 300 and checkpoints > 0
    store = Store(db)
    try:
        assert stored(store.db) == flushed
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        store.close()

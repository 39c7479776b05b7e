"""The store's flush as `run` drives it at 100,000 services a minute: does it keep up?

    python bench/store_flush.py [--services 100000] [--interval 60] [--hours 3]
                                [--fill-interval 600] [--minutes 4] [--changes 100]

`run` flushes the store once a second (an APScheduler job, `max_instances=1`): a flush still
running when the next is due makes APScheduler skip that one. This bench does the same on the
real clock: every second it adds a second's observations (services / interval, the runs
pattern: most equal to the service's last, `--changes` services a minute flipping) and starts
`Store.flush` on the store's thread (`Store.call`) unless the last one is still running, which
it counts as skipped. The observations' own time is simulated, so an hour boundary comes
when the bench wants it: the paced minutes start one minute before an hour boundary, after
`--hours` hours of filled history (every service every `--fill-interval` seconds, as fast as
the store takes it). In the paced minutes, as `run` would:

- at 0:00 the hour boundary (every service starts a new run and a new rollup row);
- at 1:00 the hourly prune (`Store.prune` on the store's thread, raw and rollup retention one
  hour shorter than the fill: the oldest hour of 100,000 services expires);
- at 2:00 the same prune with `size_limit` set to half the store's use: the size retention
  drops the filled day (what `--store-limit` does after a week).

Prints each flush's time from its start to its end (which includes waiting behind a prune on
the store's thread), median / p99 / max, and how many would have been skipped, in each phase;
the WAL's frames (read from its shared-memory index: its size in use and how much of it was
copied back) and its file size; the flushes during which the WAL was copied back into the
file (before `monitor.checkpoint`, by the flush's own commit; after it, by the checkpoint
thread beside the flush) and the checkpoint thread's own times; the prune calls' times on the
store's thread; the load average. Local files only; bounded by its arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import resource
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common import loadavg
from store_growth import fill, keys, observation

import monitor.store
from monitor.store import PendingObservation, Store

#: The hour boundary the paced minutes cross, one minute after they begin.
BOUNDARY = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)
FLUSH_EVERY = 1.0


def wal_index(path: Path) -> tuple[int, int, int]:
    """(frames in the WAL, frames of it copied back into the file, page size) from the WAL's
    shared-memory index (SQLite's wal-index header, native byte order); zeros without one."""
    try:
        with open(f"{path}-shm", "rb") as shm:
            head = shm.read(132)
    except OSError:
        return 0, 0, 0
    if len(head) < 132:
        return 0, 0, 0
    (page,) = struct.unpack_from("=H", head, 14)
    (frames,) = struct.unpack_from("=I", head, 16)
    (backfilled,) = struct.unpack_from("=I", head, 96)
    return frames, backfilled, 65536 if page == 1 else page


@dataclass
class Flush:
    tick: int
    seconds: float
    frames_before: int
    frames_after: int
    backfill_before: int
    backfill_after: int

    @property
    def checkpointed(self) -> bool:
        """Whether WAL frames were copied back while it ran: by its own commit before the
        checkpoints had a thread of their own, by that thread (beside it) after."""
        return self.backfill_after > self.backfill_before and self.frames_after >= (
            self.frames_before
        )


@dataclass
class Phase:
    name: str
    flushes: list[Flush] = field(default_factory=list)
    skipped: int = 0


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


async def paced(
    store: Store, names: list[tuple[str, str]], args: argparse.Namespace
) -> tuple[list[Phase], list[tuple[str, float]], int, int]:
    """The paced minutes: a flush started each real second, skipped while one runs."""
    loop = asyncio.get_running_loop()
    total, interval = len(names), args.interval
    start = BOUNDARY - timedelta(minutes=1)
    phases = [
        Phase("the minute before the hour"),
        Phase("the hour boundary's minute"),
        Phase("the hourly prune's minute"),
        Phase("the size retention's minute"),
    ] + [Phase(f"minute {m}") for m in range(4, args.minutes)]
    prunes: list[tuple[str, float]] = []
    down: set[int] = set()
    running: asyncio.Future | None = None
    pruning: set[asyncio.Task] = set()
    wal_max = 0
    added = 0
    began = loop.time()

    async def timed_prune(name: str, now: datetime) -> None:
        started = time.perf_counter()
        await store.call(store.prune, now)
        prunes.append((name, time.perf_counter() - started))

    async def timed_flush(tick: int) -> Flush:
        frames, backfill, _ = wal_index(store.path)
        started = time.perf_counter()
        await store.call(store.flush)
        seconds = time.perf_counter() - started
        after, backfill_after, _ = wal_index(store.path)
        return Flush(tick, seconds, frames, after, backfill, backfill_after)

    for tick in range(args.minutes * 60):
        await asyncio.sleep(max(0.0, began + tick * FLUSH_EVERY - loop.time()))
        minute = tick // 60
        phase = phases[minute]
        if tick % 60 == 0:
            flips = {(minute * 7919 + k * 104729) % total for k in range(args.changes)}
        at_second = start + timedelta(seconds=tick)
        if tick == 120:
            task = loop.create_task(timed_prune("hourly prune (age)", at_second))
            pruning.add(task)
        if tick == 180:
            store.size_limit = store.used_bytes() // 2
            task = loop.create_task(timed_prune("prune past the size limit", at_second))
            pruning.add(task)
        slot = tick % interval
        for index in range(slot * total // interval, (slot + 1) * total // interval):
            if index in flips:
                down ^= {index}
            at = at_second - timedelta(seconds=slot) + timedelta(seconds=index * interval / total)
            seen, expected, mismatch = observation(at, index not in down, 0.05 + (index % 7) / 100)
            store.add(PendingObservation(*names[index], seen, expected, mismatch))
            added += at >= BOUNDARY
        if running is not None and not running.done():
            phase.skipped += 1  # APScheduler: "maximum number of running instances reached"
            continue
        if running is not None:
            done = running.result()
            phases[done.tick // 60].flushes.append(done)
            wal_max = max(wal_max, done.frames_after)
        running = loop.create_task(timed_flush(tick))
    if running is not None:
        done = await running
        phases[done.tick // 60].flushes.append(done)
    for task in pruning:
        with contextlib.suppress(Exception):
            await task
    await store.call(store.flush)
    return phases, prunes, wal_max, added


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, default=100_000)
    parser.add_argument("--interval", type=int, default=60)
    parser.add_argument("--hours", type=int, default=3, help="hours of history filled first")
    parser.add_argument("--fill-interval", type=int, default=600)
    parser.add_argument("--minutes", type=int, default=4, help="paced minutes (>= 4)")
    parser.add_argument("--changes", type=int, default=100, help="services flipping a minute")
    args = parser.parse_args()
    if args.minutes < 4 or args.hours < 2:
        parser.error("--minutes must be at least 4, --hours at least 2")
    print(f"store: {monitor.store.__file__}; load {loadavg()}")
    names = keys(args.services)
    with tempfile.TemporaryDirectory(prefix="store-flush-") as folder:
        path = Path(folder) / "monitor.db"
        age = timedelta(hours=args.hours - 1)
        store = Store(path, retention=age, rollup_retention=age)
        try:
            started = time.perf_counter()
            await fill(
                store, names, args.hours, args.fill_interval, BOUNDARY - timedelta(minutes=1)
            )
            store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            print(
                f"fill: {args.hours} h of {args.services:,} services in "
                f"{time.perf_counter() - started:.0f} s, "
                f"{os.stat(path).st_size / 2**20:,.0f} MiB; load {loadavg()}"
            )
            cpu = time.process_time()
            phases, prunes, wal_max, added = await paced(store, names, args)
            cpu = time.process_time() - cpu
            _, _, page = wal_index(path)
            wal_file = os.stat(f"{path}-wal").st_size if os.path.exists(f"{path}-wal") else 0
            everything = [f for p in phases for f in p.flushes]
            print(f"flushes of {args.services // args.interval:,} observations a second:")
            for phase in [*phases, Phase("all", everything, sum(p.skipped for p in phases))]:
                times = [f.seconds for f in phase.flushes]
                if not times:
                    continue
                slow = sorted(phase.flushes, key=lambda f: f.seconds)[-3:]
                late = sum(f.seconds > FLUSH_EVERY for f in phase.flushes)
                print(
                    f"  {phase.name}: {len(times)} flushes, median {ms(statistics.median(times))}"
                    f", p99 {ms(percentile(times, 0.99))}, max {ms(max(times))}; "
                    f"{phase.skipped} skipped; {late} over {FLUSH_EVERY:.0f} s; WAL copied back "
                    f"during {sum(f.checkpointed for f in phase.flushes)}; slowest "
                    + ", ".join(
                        f"{ms(f.seconds)}{' (copying)' if f.checkpointed else ''}" for f in slow
                    )
                )
            inside = [f.seconds for f in everything if f.checkpointed]
            outside = [f.seconds for f in everything if not f.checkpointed]
            if inside and outside:
                print(
                    "  flushes while the WAL was copied back: median "
                    f"{ms(statistics.median(inside))}, max {ms(max(inside))}; the others median "
                    f"{ms(statistics.median(outside))}, max {ms(max(outside))}"
                )
            for name, seconds in prunes:
                print(f"{name}: {seconds:.2f} s on the store's thread")
            checkpoints = getattr(store, "checkpoints", None)
            if checkpoints is not None:
                times = list(checkpoints.durations)
                if times:
                    print(
                        f"checkpoints on their own thread: {checkpoints.count}, median "
                        f"{ms(statistics.median(times))}, max {ms(max(times))}, unfinished "
                        f"{checkpoints.unfinished}"
                    )
            print(
                f"WAL: at most {wal_max:,} frames ({wal_max * page / 2**20:.1f} MiB) after a "
                f"flush; file {wal_file / 2**20:.1f} MiB at the end; "
                f"pruning left: {getattr(store, 'pruning', '?')}"
            )
            kept = store.db.execute(
                "SELECT sum(count) FROM runs WHERE at >= ?", (BOUNDARY.timestamp(),)
            ).fetchone()[0]
            print(f"observations from the hour boundary on: {added:,} added, {kept:,} stored")
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"CPU of the paced minutes {cpu:.1f} s; peak RSS {rss:.0f} MiB; load {loadavg()}")
        finally:
            started = time.perf_counter()
            store.close()
            print(f"close: {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""The store at 100,000 services a minute: bytes a day, flush time, file size after a day.

    python bench/store_growth.py [--services 100000] [--interval 60] [--hours 23]
                                 [--fill-interval 600] [--minutes 3] [--changes 100]
                                 [--keep FILE]

Drives the real `Store` as the pipeline does: observations are `add`ed to its buffer and a
`flush` of one simulated second's worth (services / interval) runs on the store's own thread
(`Store.call`) once a simulated second. Nothing is probed and no clock waits: the simulated
time only stamps the observations.

1. Fill: `--hours` hours of history ending on an hour boundary, every service observed every
   `--fill-interval` seconds (fewer observations than the real interval for speed; in the
   store's runs form a service that keeps seeing the same thing costs one run and one rollup
   an hour however often it is observed, so the file is the size a day at `--interval` gives;
   for the older form, one row per observation, it is not, and the report says so).
2. Steady: `--minutes` minutes at `--interval` from that boundary, `--changes` services a
   minute flipping between serving and not serving. The first minute crosses the hour
   boundary (every service starts a new run and a new rollup row), in the second the new
   runs' rows grow by a few bytes (a count past 1, a gap); the minutes after them are steady.
   Each minute is measured as the growth of the file between two
   `PRAGMA wal_checkpoint(TRUNCATE)`s.

Prints: bytes a day from the steady minutes (their mean x 1,440); the extra bytes of the first
two minutes of an hour and the amortised bytes a day with them (steady x 1,440 + extra x 24);
flush time (median, max) of the steady flushes and the boundary minute's; the file after the
fill and the steady minutes; one hourly prune (the oldest hour of raw history) timed; the peak
RSS of the process; and the load average. Runs against the `monitor` of the checkout it is in:
copy it into another checkout to measure another version. Local files only; bounded by its
arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common import loadavg

import monitor.store
from monitor.judge import Verdict
from monitor.observation import Observation
from monitor.store import PendingObservation, Store

#: A fixed hour boundary: the end of the fill and the start of the steady minutes.
BOUNDARY = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)


def keys(services: int) -> list[tuple[str, str]]:
    return [(f"channel-{i // 100:04d}", f"service-{i % 100:02d}") for i in range(services)]


def observation(
    at: datetime, serving: bool, duration: float
) -> tuple[Observation, str, Verdict | None]:
    """What a probe saw, what the plan expected (up), the judge's mismatch."""
    if serving:
        seen = Observation(at, True, "HTTP 200", 200, duration)
        return seen, "up", None
    seen = Observation(at, False, "body matches maintenance notice", 200, duration)
    return seen, "up", Verdict.UNEXPECTED_DOWN


def size(store: Store) -> int:
    """The file's size after a checkpoint that empties the WAL into it."""
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return os.stat(store.path).st_size


async def timed_flush(store: Store) -> float:
    def flush() -> float:
        started = time.perf_counter()
        store.flush()
        return time.perf_counter() - started

    return await store.call(flush)


async def fill(
    store: Store, names: list[tuple[str, str]], hours: int, every: int, end: datetime = BOUNDARY
) -> None:
    """`hours` of history before `end`, everyone observed every `every` seconds, flushed
    in batches of a simulated second's worth at the fill's rate."""
    start = end - timedelta(hours=hours)
    per_flush = max(1, len(names) // every)
    count = 0
    for tick in range(0, hours * 3600, every):
        base = start + timedelta(seconds=tick)
        for index, (channel, business) in enumerate(names):
            at = base + timedelta(seconds=index * every / len(names))
            seen, expected, mismatch = observation(at, True, 0.05 + (index % 7) / 100)
            store.add(PendingObservation(channel, business, seen, expected, mismatch))
            count += 1
            if count % per_flush == 0:
                await store.call(store.flush)
    await store.call(store.flush)


async def steady(
    store: Store, names: list[tuple[str, str]], interval: int, minutes: int, changes: int
) -> tuple[list[int], list[list[float]]]:
    """`minutes` simulated minutes from BOUNDARY at `interval`: sizes at each minute's ends and
    the flush times of each minute."""
    total = len(names)
    down: set[int] = set()
    sizes = [size(store)]
    times: list[list[float]] = []
    for minute in range(minutes):
        flushes = []
        flips = {(minute * 7919 + k * 104729) % total for k in range(changes)}
        for second in range(60):
            tick = minute * 60 + second
            phase = tick % interval  # service i is observed at i * interval / total + k interval
            for index in range(phase * total // interval, (phase + 1) * total // interval):
                if index in flips:
                    flips.discard(index)
                    down ^= {index}
                at = BOUNDARY + timedelta(seconds=tick - phase + index * interval / total)
                seen, expected, mismatch = observation(
                    at, index not in down, 0.05 + (index % 7) / 100
                )
                store.add(PendingObservation(*names[index], seen, expected, mismatch))
            flushes.append(await timed_flush(store))
        times.append(flushes)
        sizes.append(size(store))
    return sizes, times


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, default=100_000)
    parser.add_argument("--interval", type=int, default=60)
    parser.add_argument("--hours", type=int, default=23, help="hours of history filled first")
    parser.add_argument("--fill-interval", type=int, default=600)
    parser.add_argument("--minutes", type=int, default=4, help="minutes from the boundary (>= 3)")
    parser.add_argument("--changes", type=int, default=100, help="services flipping a minute")
    parser.add_argument("--keep", help="write the store here (default: a temporary folder)")
    args = parser.parse_args()
    if args.minutes < 3 or args.hours < 2:
        parser.error("--minutes must be at least 3, --hours at least 2")
    version = getattr(monitor.store, "SCHEMA_VERSION", "?")
    print(f"store: {monitor.store.__file__} (schema {version}); load {loadavg()}")
    names = keys(args.services)
    with tempfile.TemporaryDirectory(prefix="store-growth-") as folder:
        path = Path(args.keep) if args.keep else Path(folder) / "monitor.db"
        # raw retention one hour shorter than the fill: the prune at the end drops one hour
        store = Store(path, retention=timedelta(hours=args.hours - 1))
        try:
            started = time.perf_counter()
            await fill(store, names, args.hours, args.fill_interval)
            filled = size(store)
            print(
                f"fill: {args.hours} h of {args.services:,} services every "
                f"{args.fill_interval} s in {time.perf_counter() - started:.0f} s: {mib(filled)}; "
                f"load {loadavg()}"
            )
            sizes, times = await steady(store, names, args.interval, args.minutes, args.changes)
            growth = [b - a for a, b in itertools.pairwise(sizes)]
            # the first minute starts every run and rollup row of the hour; in the second the
            # runs' rows grow by a few bytes (a count of 2, a gap), splitting some pages
            steady_growth = (sizes[-1] - sizes[2]) // (args.minutes - 2)
            boundary_extra = growth[0] + growth[1] - 2 * steady_growth
            per_day = steady_growth * 1440
            amortised = per_day + boundary_extra * 24
            quiet = [t for minute in times[2:] for t in minute]
            print(f"minute growth: {', '.join(f'{g:,} B' for g in growth)} (from the boundary)")
            print(
                f"steady: {mib(per_day)} a day ({steady_growth:,} B a minute, the mean of the "
                "minutes after the first two, x 1,440)"
            )
            print(
                f"amortised with the hour boundary: {mib(amortised)} a day "
                f"(+{boundary_extra:,} B in the first two minutes of each hour x 24)"
            )
            print(
                f"flush of {args.services // args.interval:,} observations: steady median "
                f"{statistics.median(quiet) * 1000:.1f} ms, max {max(quiet) * 1000:.1f} ms "
                f"({len(quiet)} flushes); boundary minute median "
                f"{statistics.median(times[0]) * 1000:.1f} ms, max {max(times[0]) * 1000:.1f} ms"
            )
            print(f"file after the fill and {args.minutes} min: {mib(sizes[-1])}")
            now = BOUNDARY + timedelta(minutes=args.minutes)
            started = time.perf_counter()
            await store.call(store.prune, now)
            pruned = time.perf_counter() - started
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"prune of the oldest hour: {pruned:.2f} s; peak RSS {rss:.0f} MiB")
            print(f"load {loadavg()}")
        finally:
            store.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

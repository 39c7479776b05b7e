"""The public page at scale: how long a render takes in the daemon's render worker.

    python bench/page_scale.py [--channels 100] [--per-channel 100] [--runs 5] [--profile]
                               [--cache DIR] [--no-office-hours] [--days 90]

A plan of `--channels` channels of `--per-channel` services (the four kinds of `common.py`: the
freeze, kept open, the certificate window, office hours) and a store with 90 days of hourly
rollups for every service (as the plan expected them, a few hours broken) and a few incidents,
two still open. Then the render is timed the way `run` does it: in a spawned worker process
set up by `monitor.site._worker_init`, each render through `monitor.site._worker_render` with a
snapshot of the verdicts (every service seen, the services with an open incident broken). The
first render of a fresh worker is reported alone, then the median and range of `--runs` more,
each 30 s after the one before with one more service broken (what asks `run` for a render),
each as wall time and as the worker's CPU time (the machine is shared: CPU time moves less).
Also reports the worker's peak RSS (VmHWM), the size of the pages and of the largest files,
the load average before and after. `--days` writes fewer days of rollups (at 100,000 services
90 days are 216 million rows).
`--no-office-hours` leaves out the fourth kind (a service hall open on weekdays 08:30-17:30):
its nightly closures are each a planned pause of the Statuspage files, listing every such
service, which at this size is most of what a render writes.

The store takes minutes to write (21.6 million rollup hours at 10,000 services), so it is kept
in `--cache` (default: a folder under the system's temporary folder) with the plan and the
instant it was written for, and reused while the sizes match. `--profile` runs one more render
in this process under cProfile and prints the top functions by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import multiprocessing
import os
import pstats
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import common
from common import load_plan, loadavg, plan_toml, proc_cpu_seconds

from monitor.judge import IncidentEvent, OpenIncident, Verdict
from monitor.plan import Plan
from monitor.site import _page_config, _worker_init, _worker_render
from monitor.site.model import Seen, Snapshot
from monitor.store import Rollup, Store

DAYS = 90
#: Incidents written: (service index, direction, opened hours before `at`, lasted hours or None).
INCIDENTS = [
    (i * 379 % 10_000, "unexpected_down" if i % 3 else "unexpected_up", 5 + i * 61, 1 + i % 4)
    for i in range(28)
] + [(17, "unexpected_down", 2, None), (4242, "unexpected_down", 6, None)]


def fill(plan: Plan, db: Path, at: datetime, days: int = DAYS) -> None:
    """`days` of hourly rollups for every service, as the plan expected it, with one broken
    hour in every 97th service, and the incidents of `INCIDENTS`."""
    end = at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=days)
    hours = int((end - start).total_seconds() // 3600)
    store = Store(db)
    try:
        store.db.execute("PRAGMA synchronous=OFF")
        chunk: list[Rollup] = []
        for number, ref in enumerate(plan.services):
            changes = [(t.at, t.to_state) for t in plan.transitions(start, end, [ref])]
            state = plan.expected(ref, start).state
            bad = start + timedelta(hours=number * 131 % hours) if number % 97 == 0 else None
            for index in range(hours):
                hour = start + timedelta(hours=index)
                while changes and changes[0][0] <= hour:
                    state = changes.pop(0)[1]
                up = state != "down"
                serving, mismatches = (30, 30) if hour == bad else (60 if up else 0, 0)
                chunk.append(
                    Rollup(
                        *ref.key,
                        hour,
                        60,
                        serving,
                        60 if up else 0,
                        0 if up else 60,
                        mismatches,
                        12.0,
                        0.9,
                    )
                )
            if len(chunk) > 200_000:
                store.add_rollups(chunk)
                chunk = []
        store.add_rollups(chunk)
        services = plan.services
        for index, direction, ago, lasted in INCIDENTS:
            ref = services[index % len(services)]
            opened = at - timedelta(hours=ago)
            verdict = Verdict(direction)
            expected = "up" if direction == "unexpected_down" else "down"
            reason = "HTTP 503" if direction == "unexpected_down" else "HTTP 200"
            held = OpenIncident(None, verdict, opened, reason, expected, None)
            event = IncidentEvent("opened", verdict, opened, reason, expected, None, held)
            record = store.record_event(*ref.key, event)
            if lasted is not None:
                held = OpenIncident(record.id, verdict, opened, reason, expected, None)
                closed = opened + timedelta(hours=lasted)
                event = IncidentEvent("resolved", verdict, closed, "HTTP 200", expected, None, held)
                store.record_event(*ref.key, event)
    finally:
        store.close()


def prepare(
    cache: Path, channels: int, per_channel: int, office_hours: bool, days: int = DAYS
) -> tuple[Plan, Path, datetime]:
    """The plan, the store and the render instant, from the cache or written now."""
    services = channels * per_channel
    meta = cache / "meta.json"
    sizes = [channels, per_channel, days]
    if meta.exists() and json.loads(meta.read_text())["services"] == sizes:
        at = datetime.fromisoformat(json.loads(meta.read_text())["at"])
        Store(cache / "store.db").close()  # written by an older version: upgraded, as by `run`
        return Plan(_load(cache)), cache / "store.db", at
    cache.mkdir(parents=True, exist_ok=True)
    for name in ("store.db", "store.db-wal", "store.db-shm", "meta.json"):
        (cache / name).unlink(missing_ok=True)
    at = datetime.now(UTC).replace(microsecond=0)
    if not office_hours:  # the plan of `common.py` without its fourth kind of service
        common.SERVICE_KINDS = common.SERVICE_KINDS[:3]
    text = plan_toml(services, ["http://127.0.0.1:9"], "60s", per_channel)
    plan = load_plan(text, cache)
    started = time.perf_counter()
    print(f"writing {services * days * 24:,} rollup hours to {cache} ...", flush=True)
    fill(plan, cache / "store.db", at, days)
    print(f"  written in {time.perf_counter() - started:.0f} s", flush=True)
    meta.write_text(json.dumps({"services": sizes, "at": at.isoformat()}))
    return plan, cache / "store.db", at


def _load(cache: Path):
    from monitor.plan.load import load_config

    return load_config(cache / "channels.toml")


def snapshot(plan: Plan, db: Path, at: datetime) -> Snapshot:
    """What a running pipeline would hand the worker: every service seen a moment ago, as
    the plan expects it, and broken where an incident is open."""
    store = Store(db, readonly=True)
    try:
        open_keys = {(r.channel, r.business): r.direction for r in store.open_incidents()}
    finally:
        store.db.close()
    verdicts, seen = {}, {}
    for ref in plan.services:
        up = plan.expected(ref, at).state != "down"
        direction = open_keys.get(ref.key)
        verdicts[ref.key] = Verdict(direction) if direction else Verdict.OK
        serving = up != (direction == "unexpected_down")
        seen[ref.key] = Seen(at - timedelta(seconds=20), serving, "HTTP 200")
    return Snapshot(verdicts, seen)


def changed(plan: Plan, snap: Snapshot, run: int) -> Snapshot:
    """The snapshot with one more service broken (in another channel each run)."""
    ref = plan.services[(run * 7919) % len(plan.services)]
    return Snapshot({**snap.verdicts, ref.key: Verdict.UNEXPECTED_DOWN}, snap.seen)


def peak_rss_mib(pid: int) -> float:
    """The peak resident set of a process (VmHWM), in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def sizes(site: Path) -> dict[str, int]:
    out = {}
    for path in sorted(site.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(site))] = path.stat().st_size
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--per-channel", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5, help="renders after the first")
    parser.add_argument("--profile", action="store_true", help="cProfile one render in-process")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--no-office-hours", action="store_true", help="three kinds, not four")
    parser.add_argument(
        "--days", type=int, default=DAYS, help="days of rollups written (the page shows 90)"
    )
    args = parser.parse_args()
    office = not args.no_office_hours
    cache = args.cache or Path(tempfile.gettempdir()) / (
        f"channel-monitor-page-scale-{args.channels}x{args.per_channel}"
        + ("" if office else "-no-office-hours")
        + ("" if args.days == DAYS else f"-{args.days}d")
    )
    load_before = loadavg()
    plan, db, at = prepare(cache, args.channels, args.per_channel, office, args.days)
    snap = snapshot(plan, db, at)
    with tempfile.TemporaryDirectory(prefix="page-scale-") as tmp:
        site = Path(tmp) / "site"
        pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(_page_config(plan.config), str(site), str(db), os.getpid()),
        )
        with pool:

            def timed(when: datetime, seen: Snapshot) -> tuple[float, float]:
                pid = next(iter(pool._processes or {}), None)  # the one worker, once started
                cpu = proc_cpu_seconds(pid) if pid else 0.0
                seconds = pool.submit(_worker_render, when, seen).result()
                pid = next(iter(pool._processes))
                return seconds, proc_cpu_seconds(pid) - cpu

            first, first_cpu = timed(at, snap)
            measured = []
            for run in range(1, args.runs + 1):
                # as in `run`: a render is asked for when a verdict changes, a little later
                measured.append(timed(at + timedelta(seconds=30 * run), changed(plan, snap, run)))
            times, cpus = [m[0] for m in measured], [m[1] for m in measured]
            peak = peak_rss_mib(next(iter(pool._processes)))
        found = sizes(site)
        if args.profile:
            from monitor.site.history import DayCache
            from monitor.site.render import PageCache, open_store, render

            store = open_store(db)
            kept = {"days": DayCache(), "pages": PageCache()}  # as the worker keeps them
            render(plan, Path(tmp) / "profiled", at, store, snap, **kept)
            profile = cProfile.Profile()
            profile.enable()
            later = at + timedelta(seconds=30)
            render(plan, Path(tmp) / "profiled", later, store, changed(plan, snap, 1), **kept)
            profile.disable()
            pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
    pages = {k: v for k, v in found.items() if k.endswith(".html")}
    total = sum(found.values())
    print(f"services: {len(plan.services):,} ({args.channels} channels of {args.per_channel})")
    print(f"load average (1 min): {load_before} before, {loadavg()} after")
    print(f"plan: {'four' if office else 'three (no office hours)'} kinds of service")
    print(f"first render in a fresh worker: {first:.2f} s wall (CPU {first_cpu:.2f} s, "
          "including the worker's start)")  # fmt: skip
    print(
        f"renders after it ({len(times)}): median {statistics.median(times):.2f} s wall, "
        f"range {min(times):.2f}-{max(times):.2f} s; CPU median {statistics.median(cpus):.2f} s, "
        f"range {min(cpus):.2f}-{max(cpus):.2f} s"
    )
    print(f"render worker's peak RSS (VmHWM): {peak:.0f} MiB")
    print(f"index.html {found['index.html'] / 1000:.1f} KB, en/index.html "
          f"{found['en/index.html'] / 1000:.1f} KB")  # fmt: skip
    others = sorted(v for k, v in pages.items() if k not in ("index.html", "en/index.html"))
    if others:
        print(f"other pages: {len(others)}, largest {others[-1] / 1000:.1f} KB")
    print(f"files: {len(found):,}, {total / 1e6:.1f} MB in all; largest:")
    for name, size in sorted(found.items(), key=lambda kv: -kv[1])[:4]:
        print(f"  {name} {size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Raw history as runs (schema 2): the readers get from runs what they got from one row per
observation; a version-1 file migrates with its history; the size limit drops the oldest days
and nothing that is still needed; a writer killed between flushes leaves a consistent store.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import load_plan, python_m, query
from test_report import PLAN, SHANGHAI, at, observe

from monitor import report as reports
from monitor.cli import size_argument
from monitor.judge import IncidentEvent, OpenIncident, Verdict
from monitor.observation import Observation
from monitor.plan import Plan
from monitor.site.model import snapshot_from_store
from monitor.store import MIGRATIONS, SCHEMA_VERSION, PendingObservation, Rollup, Store

MINUTE = timedelta(minutes=1)

#: Pension every 10 minutes from 09:00 with a few seconds of lag, serving until 10:20 (the
#: freeze starts at 10:00: an incident), not serving after it, a silence 11:00-11:40, serving
#: again from 12:00; the writer restarts after 10:50 (`RESTART` observations in).
SEEN = [
    (at(f"{h:02d}:{m:02d}") + timedelta(seconds=(h * 7 + m) % 5), h < 10 or h >= 12 or m <= 20)
    for h in (9, 10, 11, 12)
    for m in range(0, 60, 10)
    if not (h == 11 and m < 50)
]
RESTART = 12


def expected_times(
    plan: Plan, seen: list[tuple[datetime, bool]], cover: timedelta, start: datetime, end: datetime
) -> reports.Times:
    """What one row per observation gave: each covers until the next, at most `cover`."""
    ref = plan.service("portal", "pension")
    pieces = reports.plan_pieces(plan, ref, start, end)
    times = reports.Times()
    observed = reports.tally_raw(pieces, reports.covered(seen, cover, start, end), times)
    times.unobserved = (end - start).total_seconds() - observed
    return times


def written(tmp_path: Path, seen: list[tuple[datetime, bool]]) -> tuple[Plan, Path]:
    """The sequence judged and stored as the pipeline does, the writer restarted midway."""
    plan = load_plan(tmp_path / "channels.toml", PLAN)
    db = tmp_path / "monitor.db"
    ref = plan.service("portal", "pension")
    for part in (seen[:RESTART], seen[RESTART:]):
        store = Store(db)
        try:
            observe(store, plan, ref, part)
        finally:
            store.close()
    return plan, db


@pytest.mark.parametrize("cover", [None, 5 * MINUTE, 20 * MINUTE, 90 * MINUTE])
def test_the_report_from_runs_is_the_report_from_single_observations(
    tmp_path: Path, cover: timedelta | None
) -> None:
    seen = SEEN if cover != 5 * MINUTE else [(when.replace(second=0), s) for when, s in SEEN]
    plan, db = written(tmp_path, seen)
    rows = query(db, "SELECT count(*), sum(count) FROM observations")
    assert rows[0][1] == len(seen) and rows[0][0] < len(seen) / 2  # runs, not rows
    start, end = at("09:00"), at("13:00")
    for lo, hi in ((start, end), (at("09:35"), at("12:05")), (at("10:15"), at("10:16"))):
        reader = reports.open_readonly(db)
        try:
            report = reports.build_report(plan, reader, lo, hi, cover=cover, resolution="raw")
        finally:
            reader.close()
        got = report.channels[0].services[0].times
        want = expected_times(plan, seen, cover or 20 * MINUTE, lo, hi)
        for name in ("observed_up", "observed_down", "matched", "unobserved"):
            assert getattr(got, name) == pytest.approx(getattr(want, name), abs=1e-6), name


def test_the_readers_see_every_observation_from_runs(tmp_path: Path) -> None:
    plan, db = written(tmp_path, SEEN)
    reader = Store(db, readonly=True)
    try:
        rows = reader.observations("portal", "pension", at("09:00"))
        # first and last of every run exactly; between them within the lag (a few seconds)
        assert len(rows) == len(SEEN)
        for (stamp, serving, *_), (when, was) in zip(rows, SEEN, strict=True):
            assert abs(stamp - when.timestamp()) < 5 and bool(serving) == was
        assert [r[0] for r in reader.observations("portal", "pension", at("12:30"))] == [
            w.timestamp() for w, _ in SEEN if w >= at("12:30")
        ]
        last = reader.last_observations()[("portal", "pension")]
        assert (last.at, last.serving) == SEEN[-1]
        hours = {r.hour.astimezone(SHANGHAI).hour: r.probes for r in reader.rollups(at("09:00"))}
        assert hours == {9: 6, 10: 6, 11: 1, 12: 6}
        # the page's verdicts as of an instant: the newest observation up to it, if fresh
        for when, serving in SEEN:
            snap = snapshot_from_store(plan, reader, when + timedelta(seconds=1))
            key = ("portal", "pension")
            assert snap.seen[key].at == when and snap.seen[key].serving == serving
        gone = snapshot_from_store(plan, reader, at("11:30"))
        assert ("portal", "pension") not in gone.seen  # 10:50 is stale by 11:30
    finally:
        reader.close()
    reader = reports.open_readonly(db)
    try:
        [incident] = (
            reports.build_report(plan, reader, at("09:00"), at("13:00"))
            .channels[0]
            .services[0]
            .incidents
        )
    finally:
        reader.close()
    # 10:10 and 10:20 were up while the freeze expected down; 10:30 and 10:40 resolved it
    assert (incident.first.at, incident.last.at) == (SEEN[7][0], SEEN[8][0])
    assert incident.first.reason == "HTTP 200"


def _v1_file(db: Path) -> None:
    """A store as version 1 wrote it: one row per observation, rollups by name."""
    conn = sqlite3.connect(db)
    conn.executescript(MIGRATIONS[0])
    conn.execute("PRAGMA user_version = 1")
    hour = at("10:00").timestamp()
    for minute, serving in ((0, 1), (10, 1), (20, 0)):
        conn.execute(
            "INSERT INTO observations (channel, business, at, serving, reason, status_code, "
            "duration, expected, mismatch) VALUES (?,?,?,?,?,?,?,?,?)",
            ("portal", "pension", hour + minute * 60, serving, f"r{minute}", 200, 0.25, "up",
             None if serving else "unexpected_down"),
        )  # fmt: skip
    conn.execute("INSERT INTO rollups VALUES ('portal','pension',?,3,2,3,0,1,0.75,0.25)", (hour,))
    conn.execute("INSERT INTO rollups VALUES ('hall','desk',?,6,6,6,0,0,1.5,0.5)", (hour - 86400,))
    conn.execute(
        "INSERT INTO incidents (channel, business, direction, opened_at, reason, expected) "
        "VALUES ('portal','pension','unexpected_down',?,'r20','up')",
        (hour + 1200,),
    )
    conn.commit()
    conn.close()


def test_a_version_1_store_migrates_keeping_its_history(tmp_path: Path) -> None:
    db = tmp_path / "monitor.db"
    _v1_file(db)
    with pytest.raises(Exception, match="older channel-monitor"):
        Store(db, readonly=True)  # a reader does not migrate: it says what does
    store = Store(db)
    try:
        assert query(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        rows = store.observations("portal", "pension", at("09:00"))
        hour = at("10:00").timestamp()
        assert [(r[0], r[1], r[2], r[4]) for r in rows] == [
            (hour, 1, "r0", None),
            (hour + 600, 1, "r10", None),
            (hour + 1200, 0, "r20", "unexpected_down"),
        ]
        rollups = {(r.channel, r.business): r for r in store.rollups(at("00:00") - MINUTE * 1440)}
        desk = rollups[("hall", "desk")]
        assert (desk.probes, desk.duration_sum, desk.duration_max) == (6, 1.5, 0.5)
        assert rollups[("portal", "pension")].mismatches == 1
        [incident] = store.open_incidents()
        assert incident.reason == "r20"
        # and it goes on: the next observation is written beside the migrated ones
        seen = Observation(at("10:30"), False, "r20", 200, 0.25)
        store.add(PendingObservation("portal", "pension", seen, "up", Verdict.UNEXPECTED_DOWN))
        store.flush()
        assert [r.probes for r in store.rollups(at("10:00"))] == [4]
    finally:
        store.close()
    reader = reports.open_readonly(db)
    try:
        assert reader.raw_from() == at("10:00")
    finally:
        reader.close()


def _history(store: Store, now: datetime, days: int) -> None:
    """`days` of hourly rollups for 200 services, and raw runs for the last two days."""
    keys = [(f"c{i // 20}", f"s{i % 20}") for i in range(200)]
    hours = [now - timedelta(hours=h) for h in range(1, days * 24)]
    store.add_rollups(
        Rollup(c, b, hour, 60, 60, 60, 0, 0, 6.0, 0.2) for c, b in keys for hour in hours
    )
    for h in range(48, 0, -1):
        for c, b in keys:
            seen = Observation(now - timedelta(hours=h), h % 3 == 0, f"HTTP {200 + h}", 200, 0.1)
            store.add(PendingObservation(c, b, seen, "up", None))
        store.flush()


def test_past_its_size_limit_the_store_drops_the_oldest_days_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "monitor.db"
    now = datetime(2022, 7, 31, 12, 0, tzinfo=UTC)
    store = Store(db)
    try:
        _history(store, now, days=30)
        # an incident opened long ago and still open; an alert about it not yet sent, one sent
        held = OpenIncident(
            None, Verdict.UNEXPECTED_DOWN, now - timedelta(days=29), "x", "up", None
        )
        opened = store.record_event(
            "c0",
            "s0",
            IncidentEvent("opened", held.direction, held.opened_at, "x", "up", None, held),
        )
        old = (now - timedelta(days=29)).timestamp()
        for sink, delivered in (("unsent", None), ("sent", old)):
            store.db.execute(
                "INSERT INTO alert_outbox (sink, dedup_key, payload, created_at, "
                "next_attempt_at, delivered_at) VALUES (?, 'k', '{}', ?, ?, ?)",
                (sink, old, old, delivered),
            )
        store.db.commit()
        store.prune(now)  # no limit: only age retention, which keeps all of this
        used = store.used_bytes()
        store.size_limit = used // 2
        with caplog.at_level(logging.WARNING, "monitor.store"):
            store.prune(now)
            slices = 0
            while store.pruning:  # a slice at a time, with each flush (even an empty one)
                store.flush()
                slices += 1
        assert slices > 1
        after = store.used_bytes()
        assert after <= store.size_limit
        warnings = [r.getMessage() for r in caplog.records if "--store-limit" in r.getMessage()]
        assert len(warnings) == 1 and "dropped the history before" in warnings[0]
        assert store.size_prunes == 1
        oldest = min(r.hour for r in store.rollups(now - timedelta(days=400)))
        assert oldest >= datetime(2022, 7, 2, tzinfo=UTC)  # at least the oldest day went
        # the newest day is whole: its rollups and raw runs
        assert len(store.rollups(now - timedelta(hours=12))) == 200 * 12
        assert len(store.observations("c1", "s1", now - timedelta(hours=12))) == 12
        assert [r.id for r in store.open_incidents()] == [opened.id]
        sinks = [r[0] for r in store.db.execute("SELECT sink FROM alert_outbox")]
        assert sinks == ["unsent"]
        # the freed pages take what comes next: the file stops growing
        size = os.stat(db).st_size
        store.add_rollups(
            Rollup("c0", "s0", now + timedelta(hours=h), 60, 60, 60, 0, 0, 6.0, 0.2)
            for h in range(24 * 20)
        )
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert os.stat(db).st_size == size
        caplog.clear()
        with caplog.at_level(logging.WARNING, "monitor.store"):
            store.prune(now)  # under the limit now: nothing more goes, nothing is said
        assert not caplog.records and store.used_bytes() <= store.size_limit
    finally:
        store.close()


CRASH = """
import os, signal, sys
from datetime import datetime, timedelta, UTC
from monitor.observation import Observation
from monitor.store import PendingObservation, Store
store = Store(sys.argv[1])
start = datetime(2022, 7, 1, 4, 0, tzinfo=UTC)
for minute in range(30):
    seen = Observation(start + timedelta(minutes=minute), minute < 20, "HTTP 200", 200, 0.1)
    store.add(PendingObservation("portal", "pension", seen, "up", None))
    if minute in (9, 19, 24):
        store.flush()
os.kill(os.getpid(), signal.SIGKILL)  # 25-29 were never flushed
"""


def test_a_writer_killed_between_flushes_loses_only_the_unflushed(tmp_path: Path) -> None:
    db = tmp_path / "monitor.db"
    done = subprocess.run([sys.executable, "-c", CRASH, str(db)], timeout=60, check=False)
    assert done.returncode == -signal.SIGKILL
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    start = datetime(2022, 7, 1, 4, 0, tzinfo=UTC)
    store = Store(db)
    try:
        rows = store.observations("portal", "pension", start)
        assert [r[0] for r in rows] == [(start + m * MINUTE).timestamp() for m in range(25)]
        assert [r.probes for r in store.rollups(start)] == [25]
        seen = Observation(start + 25 * MINUTE, False, "HTTP 200", 200, 0.1)
        store.add(PendingObservation("portal", "pension", seen, "up", None))
        store.flush()  # after the restart the next observation starts a run of its own
        assert len(store.observations("portal", "pension", start)) == 26
        assert query(db, "SELECT count(*) FROM runs") == [(3,)]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("value", "words"),
    [("lots", "expected a size such as 2GiB"), ("1MiB", "less than the smallest limit")],
)
def test_a_bad_store_limit_exits_2_naming_the_flag(tmp_path: Path, value: str, words: str) -> None:
    config = tmp_path / "channels.toml"
    load_plan(config, PLAN)
    done = python_m("run", "--config", str(config), "--store-limit", value, cwd=tmp_path)
    assert done.returncode == 2
    assert "--store-limit" in done.stderr and words in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "monitor.db").exists()


def test_the_store_limit_is_read_as_bytes() -> None:
    assert size_argument("2GiB") == size_argument("2G") == 2 * 1024**3
    assert size_argument("500MB") == 500_000_000
    assert size_argument("1.5 GiB") == 3 * 1024**3 // 2
    assert size_argument(str(20 * 1024**2)) == 20 * 1024**2


def test_a_large_expiry_is_deleted_a_slice_at_a_time_oldest_first(tmp_path: Path) -> None:
    """So that an hour of 100,000 services' history expiring never holds the store's thread:
    prune deletes a slice, each flush after it another, the oldest first."""
    db = tmp_path / "monitor.db"
    start = datetime(2022, 7, 1, 0, 0, tzinfo=UTC)
    store = Store(db, retention=timedelta(days=1))
    store.prune_slice, store.flush_prune_slice = 2, 1
    try:
        for hour in range(6):  # six runs, one an hour
            seen = Observation(start + timedelta(hours=hour), True, "HTTP 200", 200, 0.1)
            store.add(PendingObservation("portal", "pension", seen, "up", None))
        store.flush()

        def kept() -> list[float]:
            return [r[0] for r in store.db.execute("SELECT at FROM runs ORDER BY at")]

        hours = [(start + timedelta(hours=h)).timestamp() for h in range(7)]
        store.prune(start + timedelta(days=1, hours=5, minutes=30))  # all six expire
        assert kept() == hours[2:6]
        for first in (3, 4, 5, 6, 6):  # each flush (of an observation at 06:00) takes one more
            seen = Observation(start + timedelta(hours=6), True, "HTTP 200", 200, 0.1)
            store.add(PendingObservation("portal", "pension", seen, "up", None))
            store.flush()
            assert kept() == hours[first:]
        reader = reports.open_readonly(db)
        try:
            assert reader.raw_from() == start + timedelta(hours=6)
        finally:
            reader.close()
    finally:
        store.close()


def test_rollups_add_up_across_the_latest_hour_a_late_observation_and_an_import(
    tmp_path: Path,
) -> None:
    """Each service's latest hour is kept apart while it runs (`hour_now`); readers see one
    row per hour whichever way its probes arrived."""
    start = datetime(2022, 7, 1, 4, 0, tzinfo=UTC)
    store = Store(tmp_path / "monitor.db")
    try:
        store.add_rollups([Rollup("portal", "pension", start, 10, 10, 10, 0, 0, 1.0, 0.5)])

        def observe(minutes: int, duration: float = 0.1) -> None:
            seen = Observation(start + minutes * MINUTE, True, "HTTP 200", 200, duration)
            store.add(PendingObservation("portal", "pension", seen, "up", None))

        observe(10, duration=0.75)  # into the imported hour
        store.flush()
        observe(70)  # the next hour: the first one is over
        store.flush()
        observe(20)  # late, for the first hour
        observe(80)
        store.flush()
        rows = [(r.hour, r.probes, r.duration_max) for r in store.rollups(start)]
        assert rows == [(start, 12, 0.75), (start + 60 * MINUTE, 2, 0.1)]
    finally:
        store.close()
    again = Store(tmp_path / "monitor.db")  # a restart: the latest hour is found again
    try:
        seen = Observation(start + 90 * MINUTE, False, "HTTP 503", 503, 0.1)
        again.add(PendingObservation("portal", "pension", seen, "up", Verdict.UNEXPECTED_DOWN))
        again.flush()
        rows = [(r.hour, r.probes, r.mismatches) for r in again.rollups(start)]
        assert rows == [(start, 12, 0), (start + 60 * MINUTE, 3, 1)]
        # The page's day sums add the hour in `hourly` and the one in `hour_now` (probes,
        # serving, expected up, expected down, mismatches, of them up while expected down).
        day = datetime(2022, 7, 1, tzinfo=UTC)
        sums = again.day_sums([("portal", "pension")], UTC, day, day + timedelta(days=1))
        assert sums == {("portal", "pension"): {0: (15, 14, 15, 0, 1, 0)}}
        # ... and a window holding only the latest hour sees it alone.
        later = start + 60 * MINUTE
        sums = again.day_sums([("portal", "pension")], UTC, later, later + timedelta(hours=1))
        assert sums == {("portal", "pension"): {0: (3, 2, 3, 0, 1, 0)}}
    finally:
        again.close()


def test_the_current_runs_are_numbers_not_an_object_per_service(tmp_path: Path) -> None:
    """The store keeps every service's current run in arrays by service number: at 100,000
    services an object per service was about 40 MiB and 100,000 objects for every full
    collection to walk. The runs written are the same."""
    store = Store(tmp_path / "m.db")
    start = datetime(2022, 7, 1, 2, 0, tzinfo=UTC)
    try:

        def minute(index: int) -> None:
            for service in range(500):
                serving = service % 7 != 0 or index < 2  # every seventh stops serving at 2
                seen = Observation(start + index * MINUTE, serving, "HTTP 200", 200, 0.1)
                store.add(PendingObservation(f"c{service // 100}", f"s{service}", seen, "up", None))

        minute(0)
        gc.collect()
        before = len(gc.get_objects())
        store.flush()  # 500 services seen for the first time
        gc.collect()
        assert len(gc.get_objects()) - before < 100
        for index in range(1, 4):
            minute(index)
            store.flush()
        rows = query(
            tmp_path / "m.db", "SELECT count, serving FROM observations WHERE business = 's7'"
        )
        assert rows == [(2, 1), (2, 0)]
        assert query(tmp_path / "m.db", "SELECT sum(count), count(*) FROM runs") == [(2000, 572)]
    finally:
        store.close()

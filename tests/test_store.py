"""The SQLite store: WAL, observations and hourly rollups, retention, incidents and their hooks,
a read-only reader on the same file."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import query

from monitor.judge import IncidentEvent, OpenIncident, Verdict
from monitor.observation import Observation
from monitor.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    IncidentRecord,
    PendingObservation,
    Rollup,
    Store,
    StoreBusy,
    StoreError,
    as_open_incident,
)

HOUR = datetime(2022, 7, 1, 4, 0, tzinfo=UTC)  # 12:00 in Beijing


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "monitor.db"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    store = Store(db)
    yield store
    store.close()


def pending(
    at: datetime,
    serving: bool,
    expected: str = "down",
    duration: float = 0.1,
    channel: str = "portal",
    business: str = "pension",
    status: int | None = 200,
) -> PendingObservation:
    mismatch = None
    if expected == "down" and serving:
        mismatch = Verdict.UNEXPECTED_UP
    elif expected == "up" and not serving:
        mismatch = Verdict.UNEXPECTED_DOWN
    observation = Observation(
        at=at,
        serving=serving,
        reason=f"HTTP {status}" if status else "connection refused",
        status_code=status,
        duration_seconds=duration,
    )
    return PendingObservation(channel, business, observation, expected, mismatch)


def event(
    kind: str,
    at: datetime,
    direction: Verdict = Verdict.UNEXPECTED_UP,
    incident_id: int | None = None,
    reason: str = "HTTP 200",
) -> IncidentEvent:
    incident = OpenIncident(incident_id, direction, at, reason, "down", "freeze")
    return IncidentEvent(kind, direction, at, reason, "down", "freeze", incident)


def count(path: Path, table: str) -> int:
    """Rows of `table`; of `observations`, the observations its runs stand for."""
    what = "coalesce(sum(count), 0)" if table == "observations" else "count(*)"
    return query(path, f"SELECT {what} FROM {table}")[0][0]


def test_wal_mode(store: Store, db: Path) -> None:
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert query(db, "PRAGMA journal_mode") == [("wal",)], "WAL is a property of the file"


def test_observations_wait_in_the_buffer_until_flush(store: Store, db: Path) -> None:
    store.add(pending(HOUR, True))
    store.add(pending(HOUR + timedelta(minutes=1), True))
    assert count(db, "observations") == 0
    assert store.flush() == 2
    assert count(db, "observations") == 2
    assert store.flush() == 0
    rows = store.observations("portal", "pension", HOUR)
    assert [(r[1], r[2], r[3], r[4]) for r in rows] == [
        (1, "HTTP 200", "down", "unexpected_up"),
        (1, "HTTP 200", "down", "unexpected_up"),
    ]
    assert rows[0][0] == HOUR.timestamp()


def test_hourly_rollups(store: Store) -> None:
    items = [
        # hour 1: expected down, three probes, two of them serving (mismatches)
        pending(HOUR + timedelta(minutes=0), True, "down", duration=0.2),
        pending(HOUR + timedelta(minutes=20), False, "down", duration=0.5),
        pending(HOUR + timedelta(minutes=59, seconds=59), True, "down", duration=0.3),
        # hour 2: one expected up and not serving (mismatch), one `any`, one expected up
        pending(HOUR + timedelta(hours=1), False, "up", duration=1.5, status=None),
        pending(HOUR + timedelta(hours=1, minutes=5), True, "any", duration=0.25),
        pending(HOUR + timedelta(hours=1, minutes=10), True, "up", duration=0.25),
        # another service in hour 1
        pending(HOUR + timedelta(minutes=30), True, "up", duration=0.1, business="card"),
    ]
    for item in items[:4]:
        store.add(item)
    store.flush()
    for item in items[4:]:
        store.add(item)
    store.flush()  # a second flush adds to the same hours

    rollups = {(r.business, r.hour): r for r in store.rollups(HOUR - timedelta(days=1))}
    assert set(rollups) == {
        ("card", HOUR),
        ("pension", HOUR),
        ("pension", HOUR + timedelta(hours=1)),
    }
    first = rollups[("pension", HOUR)]
    assert (first.probes, first.serving, first.expected_up, first.expected_down) == (3, 2, 0, 3)
    assert first.mismatches == 2
    assert first.duration_sum == pytest.approx(1.0)
    assert first.duration_max == pytest.approx(0.5)
    second = rollups[("pension", HOUR + timedelta(hours=1))]
    assert (second.probes, second.serving, second.expected_up, second.expected_down) == (
        3,
        2,
        2,
        0,
    )
    assert second.mismatches == 1
    assert second.duration_sum == pytest.approx(2.0)
    assert second.duration_max == pytest.approx(1.5)
    card = rollups[("card", HOUR)]
    assert (card.probes, card.serving, card.expected_up, card.mismatches) == (1, 1, 1, 0)
    # a window selects whole hours
    assert [r.hour for r in store.rollups(HOUR + timedelta(hours=1))] == [HOUR + timedelta(hours=1)]
    assert {r.hour for r in store.rollups(HOUR, HOUR + timedelta(hours=1))} == {HOUR}


def test_last_observations(store: Store) -> None:
    store.add(pending(HOUR, True))
    store.add(pending(HOUR + timedelta(minutes=1), False, status=503))
    store.add(pending(HOUR, True, business="card"))
    store.flush()
    last = store.last_observations()
    assert set(last) == {("portal", "pension"), ("portal", "card")}
    newest = last[("portal", "pension")]
    assert newest.at == HOUR + timedelta(minutes=1)
    assert (newest.serving, newest.reason, newest.status_code) == (False, "HTTP 503", 503)


def test_prune_keeps_7_days_raw_and_400_days_of_rollups(store: Store) -> None:
    now = HOUR
    for age in (timedelta(days=8), timedelta(days=7, seconds=1), timedelta(days=6), timedelta(0)):
        store.add(pending(now - age, True))
    store.flush()
    old_rollups = [
        Rollup("portal", "pension", now - age, 10, 5, 10, 0, 0, 1.0, 0.2)
        for age in (timedelta(days=401), timedelta(days=399))
    ]
    store.add_rollups(old_rollups)
    store.prune(now)
    kept = [r[0] for r in store.observations("portal", "pension", now - timedelta(days=30))]
    assert kept == [(now - timedelta(days=6)).timestamp(), now.timestamp()]
    hours = [r.hour for r in store.rollups(now - timedelta(days=1000))]
    assert now - timedelta(days=401) not in hours
    assert now - timedelta(days=399) in hours
    # the rollups of the pruned raw observations stay: long history outlives raw data
    assert now - timedelta(days=8) in hours  # HOUR is on the hour


def test_prune_uses_the_configured_retention(db: Path) -> None:
    store = Store(db, retention=timedelta(hours=1), rollup_retention=timedelta(days=2))
    try:
        store.add(pending(HOUR - timedelta(hours=2), True))
        store.add(pending(HOUR, True))
        store.flush()
        store.prune(HOUR + timedelta(minutes=30))
        assert len(store.observations("portal", "pension", HOUR - timedelta(days=1))) == 1
        store.prune(HOUR + timedelta(days=3))
        assert store.rollups(HOUR - timedelta(days=10)) == []
    finally:
        store.close()


def test_incident_open_and_resolve(store: Store) -> None:
    opened = store.record_event("portal", "pension", event("opened", HOUR))
    assert isinstance(opened, IncidentRecord)
    assert opened.id > 0
    assert (opened.channel, opened.business, opened.direction) == (
        "portal",
        "pension",
        "unexpected_up",
    )
    assert opened.opened_at == HOUR
    assert opened.resolved_at is None
    assert (opened.reason, opened.expected, opened.period) == ("HTTP 200", "down", "freeze")
    assert store.open_incidents() == [opened]

    resolved_at = HOUR + timedelta(minutes=7)
    resolved = store.record_event(
        "portal",
        "pension",
        event("resolved", resolved_at, incident_id=opened.id, reason="HTTP 503"),
    )
    assert resolved.id == opened.id
    assert resolved.resolved_at == resolved_at
    assert resolved.resolve_reason == "HTTP 503"
    assert resolved.reason == "HTTP 200", "the opening reason is kept"
    assert store.open_incidents() == []
    assert store.incidents() == [resolved]


def test_resolve_without_id_finds_the_open_incident_of_that_direction(store: Store) -> None:
    up = store.record_event("portal", "pension", event("opened", HOUR))
    down = store.record_event(
        "portal", "card", event("opened", HOUR, direction=Verdict.UNEXPECTED_DOWN)
    )
    resolved = store.record_event(
        "portal", "pension", event("resolved", HOUR + timedelta(minutes=3))
    )
    assert resolved.id == up.id
    assert [r.id for r in store.open_incidents()] == [down.id]
    with pytest.raises(LookupError):
        store.record_event("portal", "pension", event("resolved", HOUR + timedelta(minutes=4)))


def test_open_incidents_in_opening_order_and_back_to_the_judge(store: Store) -> None:
    later = store.record_event("portal", "b", event("opened", HOUR + timedelta(hours=1)))
    earlier = store.record_event(
        "portal", "a", event("opened", HOUR, direction=Verdict.UNEXPECTED_DOWN)
    )
    assert [r.id for r in store.open_incidents()] == [earlier.id, later.id]
    back = as_open_incident(earlier)
    assert back == OpenIncident(
        earlier.id, Verdict.UNEXPECTED_DOWN, HOUR, "HTTP 200", "down", "freeze"
    )


def test_record_event_writes_buffered_observations_first(store: Store, db: Path) -> None:
    store.add(pending(HOUR, True))
    store.add(pending(HOUR + timedelta(minutes=1), True))
    store.record_event("portal", "pension", event("opened", HOUR + timedelta(minutes=1)))
    assert count(db, "observations") == 2
    assert count(db, "incidents") == 1


def test_incident_hooks_run_in_the_same_transaction(store: Store, db: Path) -> None:
    store.db.execute("CREATE TABLE outbox (incident INTEGER, kind TEXT)")
    store.db.commit()
    seen: list[tuple[int, str, bool]] = []

    def outbox(record: IncidentRecord, ev: IncidentEvent) -> None:
        store.db.execute("INSERT INTO outbox VALUES (?, ?)", (record.id, ev.kind))
        seen.append((record.id, ev.kind, store.db.in_transaction))

    store.incident_hooks.append(outbox)
    opened = store.record_event("portal", "pension", event("opened", HOUR))
    assert seen == [(opened.id, "opened", True)], "the hook runs before the commit"
    assert query(db, "SELECT * FROM outbox") == [(opened.id, "opened")]

    def broken(record: IncidentRecord, ev: IncidentEvent) -> None:
        raise RuntimeError("the alert sink's row cannot be written")

    store.incident_hooks.append(broken)
    with pytest.raises(RuntimeError):
        store.record_event("portal", "card", event("opened", HOUR))
    # neither the incident nor the first hook's row survived
    assert [r.business for r in store.open_incidents()] == ["pension"]
    assert count(db, "incidents") == 1
    assert query(db, "SELECT * FROM outbox") == [(opened.id, "opened")]
    # a failed resolution leaves the incident open
    with pytest.raises(RuntimeError):
        store.record_event(
            "portal", "pension", event("resolved", HOUR + timedelta(hours=1), incident_id=opened.id)
        )
    assert [r.id for r in store.open_incidents()] == [opened.id]
    # and once the hook is fixed the store works as before
    store.incident_hooks.remove(broken)
    resolved = store.record_event(
        "portal", "pension", event("resolved", HOUR + timedelta(hours=1), incident_id=opened.id)
    )
    assert resolved.resolved_at is not None
    assert store.open_incidents() == []


def test_readonly_store_sees_the_data(store: Store, db: Path) -> None:
    store.add(pending(HOUR, True))
    opened = store.record_event("portal", "pension", event("opened", HOUR))
    reader = Store(db, readonly=True)
    try:
        assert [r.id for r in reader.open_incidents()] == [opened.id]
        assert [r.probes for r in reader.rollups(HOUR)] == [1]
        assert set(reader.last_observations()) == {("portal", "pension")}
        # the writer keeps writing while the reader is open; the reader sees it
        store.add(pending(HOUR + timedelta(minutes=1), False))
        store.flush()
        assert [r.probes for r in reader.rollups(HOUR)] == [2]
        with pytest.raises(sqlite3.OperationalError):
            reader.db.execute("DELETE FROM incidents")
    finally:
        reader.close()


async def test_call_runs_on_the_store_thread(store: Store) -> None:
    import threading

    store.add(pending(HOUR, True))
    written = await store.call(store.flush)
    assert written == 1
    name = await store.call(lambda: threading.current_thread().name)
    assert name.startswith("store")
    assert name != threading.current_thread().name


def test_close_writes_the_buffer(db: Path) -> None:
    store = Store(db)
    store.add(pending(HOUR, True))
    store.close()
    assert count(db, "observations") == 1
    again = Store(db)  # reopening an existing file keeps its data
    try:
        assert len(again.observations("portal", "pension", HOUR)) == 1
    finally:
        again.close()


def test_readonly_store_on_a_path_with_uri_characters(tmp_path: Path) -> None:
    folder = tmp_path / "state #1 ?x=%20"
    db = folder / "monitor.db"
    store = Store(db)
    try:
        opened = store.record_event("portal", "pension", event("opened", HOUR))
        reader = Store(db, readonly=True)
        try:
            assert [r.id for r in reader.open_incidents()] == [opened.id]
        finally:
            reader.close()
    finally:
        store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name], "no stray files"


# --- schema versions, the writer's lock, a disk that refuses writes --------------------------


def test_a_store_written_before_schema_versions_opens_and_keeps_its_data(db: Path) -> None:
    # what the version without `user_version` wrote: the same tables, version 0
    with sqlite3.connect(db) as old:
        old.execute("PRAGMA journal_mode=WAL")
        old.executescript(MIGRATIONS[0])
        old.execute(
            "INSERT INTO observations (channel, business, at, serving, reason, status_code, "
            "duration, expected, mismatch) VALUES ('portal', 'pension', ?, 1, 'HTTP 200', 200, "
            "0.1, 'down', 'unexpected_up')",
            (HOUR.timestamp(),),
        )
    assert query(db, "PRAGMA user_version") == [(0,)]
    store = Store(db)
    try:
        assert query(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        assert SCHEMA_VERSION >= 1
        assert set(store.last_observations()) == {("portal", "pension")}
    finally:
        store.close()
    reader = Store(db, readonly=True)  # and a reader reads it as it is
    reader.close()


def test_a_store_from_a_newer_version_or_another_program_is_refused(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    Store(newer).close()
    query(newer, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer channel-monitor"):
        Store(newer)
    foreign = tmp_path / "foreign.db"
    query(foreign, "CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    with pytest.raises(StoreError, match="another program"):
        Store(foreign)
    assert query(foreign, "SELECT name FROM sqlite_master") == [("customers",)], "left as it was"


def test_one_exclusive_writer_at_a_time(db: Path) -> None:
    first = Store(db, exclusive=True)
    try:
        with pytest.raises(StoreBusy) as busy:
            Store(db, exclusive=True)
        assert busy.value.pid == os.getpid()
        assert str(os.getpid()) in str(busy.value)
        reader = Store(db, readonly=True)  # readers (render) are not writers
        reader.close()
    finally:
        first.close()
    Store(db, exclusive=True).close()  # closing released it


def _refuse_writes(db: Path) -> None:
    """Make SQLite itself fail every insert, as a full disk does (SQLITE_FULL's message)."""
    query(
        db,
        "CREATE TRIGGER refuse BEFORE INSERT ON runs "
        "BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END",
    )


def test_a_store_that_refuses_writes_keeps_a_bounded_buffer_and_recovers(db: Path) -> None:
    store = Store(db, max_pending=3)
    try:
        assert store.healthy
        _refuse_writes(db)
        for minute in range(5):
            store.add(pending(HOUR + timedelta(minutes=minute), True))
        assert (store.pending, store.dropped) == (3, 2)  # the two oldest went
        before = store.last_write
        with pytest.raises(sqlite3.Error):
            store.flush()
        assert not store.healthy
        assert "full" in (store.write_error or "")
        assert (store.pending, store.dropped, store.write_errors) == (3, 2, 1)
        store.add(pending(HOUR + timedelta(minutes=5), True))  # still bounded after a failure
        assert (store.pending, store.dropped) == (3, 3)
        with pytest.raises(sqlite3.Error):  # an incident cannot be written either
            store.record_event("portal", "pension", event("opened", HOUR))
        assert not store.healthy

        query(db, "DROP TRIGGER refuse")  # space is back
        assert store.flush() == 3
        assert store.healthy and store.write_error is None
        assert store.last_write >= before
        kept = [row[0] for row in store.observations("portal", "pension", HOUR)]
        assert kept == [(HOUR + timedelta(minutes=m)).timestamp() for m in (3, 4, 5)]
    finally:
        store.close()


def test_a_flush_writes_its_runs_and_rollups_in_a_few_statements(tmp_path: Path) -> None:
    """Every step of a statement hands the GIL to the event loop's thread and waits to take it
    back; a flush of 1,000 services' observations as 2,000 steps took seconds while the loop
    was busy. The runs extended and the hours added are one statement each, and what they
    write is what one statement a row wrote, floats bit for bit."""
    store = Store(tmp_path / "monitor.db")
    try:
        start = HOUR + timedelta(minutes=1)
        durations = [0.1 + index / 7_000 for index in range(1_000)]  # not exact in decimal
        for minute in range(3):  # started, then extended twice
            for index in range(1_000):
                at = start + timedelta(minutes=minute, microseconds=index * 7)
                store.add(pending(at, True, duration=durations[index], business=f"s{index}"))
            statements: list[str] = []
            store.db.set_trace_callback(statements.append)
            store.flush()
            store.db.set_trace_callback(None)
            updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE")]
            if minute:
                assert len(updates) == 2, f"{len(updates)} UPDATE statements in one flush"
        rows = store.db.execute(
            "SELECT s.business, r.until, r.count, r.duration FROM runs r "
            "JOIN services s ON s.id = r.service"
        ).fetchall()
        assert len(rows) == 1_000
        for business, until, count, duration in rows:
            index = int(business[1:])
            at = start + timedelta(minutes=2, microseconds=index * 7)
            assert (until, count, duration) == (at.timestamp(), 3, durations[index])
        probes = store.db.execute("SELECT sum(probes), count(*) FROM hour_now").fetchone()
        assert probes == (3_000, 1_000)
    finally:
        store.close()


def test_updates_from_values_go_in_chunks_the_connection_allows(tmp_path: Path) -> None:
    from monitor.store.writer import _update_from_values

    db = sqlite3.connect(tmp_path / "t.db")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x REAL, n INTEGER)")
    db.executemany("INSERT INTO t VALUES (?, 0.0, 1)", [(i,) for i in range(100)])
    db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 7)  # two rows of three a statement
    rows = [(i, i / 3, i) for i in range(0, 100, 2)]
    _update_from_values(db, "t", "id", ("x", "n"), rows, {"n": "n + {value}"})
    got = dict(((i, (x, n)) for i, x, n in db.execute("SELECT id, x, n FROM t")))
    for i in range(100):
        assert got[i] == ((i / 3, 1 + i) if i % 2 == 0 else (0.0, 1))
    db.close()


def test_a_sqlite_too_old_to_write_the_store_is_said_before_anything_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite before 3.35 (Debian 11 has 3.34) cannot run the flush's statements: every flush
    would fail and the buffer drop observations; the store refuses to open instead."""
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.34.1")
    with pytest.raises(StoreError, match=r"SQLite 3\.34\.1 is too old .* 3\.35\.0 or later"):
        Store(tmp_path / "monitor.db")
    monkeypatch.undo()
    Store(tmp_path / "monitor.db").close()  # its lock was let go

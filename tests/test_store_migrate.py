"""A store written by an older version opens in this one: `tests/data/store-v2.sql` is a small
store as schema version 2 wrote it (observations, an open incident, a pending alert), and a
store from a newer version is refused rather than half read."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitor.alerts.message import Alert
from monitor.judge import IncidentEvent, Verdict
from monitor.store import SCHEMA_VERSION, Store, StoreError, as_open_incident

FIXTURE = Path(__file__).parent / "data" / "store-v2.sql"
START = datetime(2022, 6, 22, 9, 58, tzinfo=UTC)
KEY = ("hbzwfw", "social-insurance")


def v2_store(path: Path, *, outbox: bool = True) -> Path:
    """The fixture as a file; without the outbox table, as version 2 left it with alerts off."""
    with sqlite3.connect(path) as db:
        db.executescript(FIXTURE.read_text())
        if not outbox:
            db.execute("DROP TABLE alert_outbox")
    db.close()
    return path


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def test_the_fixture_is_schema_2_and_this_version_is_newer(tmp_path: Path) -> None:
    assert user_version(v2_store(tmp_path / "old.db")) == 2
    assert SCHEMA_VERSION == 4


def test_a_version_2_store_is_migrated_and_reads_back_the_same(tmp_path: Path) -> None:
    db = v2_store(tmp_path / "old.db")
    with pytest.raises(StoreError, match="older channel-monitor"):
        Store(db, readonly=True)  # a reader never migrates: it says how to
    store = Store(db)
    try:
        assert user_version(db) == SCHEMA_VERSION
        (incident,) = store.open_incidents()
        assert (incident.id, incident.channel, incident.business) == (1, *KEY)
        assert (incident.direction, incident.reason, incident.expected, incident.period) == (
            "unexpected_up",
            "HTTP 200",
            "down",
            "freeze",
        )
        assert incident.opened_at == START + timedelta(minutes=4)
        assert incident.resolved_at is None

        assert store.outbox.pending() == {"webhook": 1}
        (row,) = store.outbox.due("webhook", now=float("inf"))
        assert (row.id, row.dedup_key, row.attempts) == (1, "incident-1-opened", 0)
        alert = Alert.from_json(row.payload)
        assert (alert.incident, alert.kind, alert.channel_name) == (1, "opened", "湖北政务服务网")

        minutes = [(START + timedelta(minutes=m)).timestamp() for m in range(5)]
        assert store.observations(*KEY, START) == [
            (minutes[0], 0, "HTTP 503", "down", None),
            (minutes[1], 0, "HTTP 503", "down", None),
            (minutes[2], 1, "HTTP 200", "down", "unexpected_up"),
            (minutes[3], 1, "HTTP 200", "down", "unexpected_up"),
            (minutes[4], 1, "HTTP 200", "down", "unexpected_up"),
        ]
        last = store.last_observations()
        assert set(last) == {KEY, ("hbzwfw", "medical")}
        assert (last[KEY].at, last[KEY].status_code) == (START + timedelta(minutes=4), 200)
        hours = {
            (r.business, r.hour.hour): r.probes for r in store.rollups(START.replace(minute=0))
        }
        assert hours == {
            ("medical", 9): 2,
            ("medical", 10): 3,
            ("social-insurance", 9): 2,
            ("social-insurance", 10): 3,
        }

        # and it goes on as a store of this version: the incident resolves, the row is sent
        held = as_open_incident(incident)
        at = START + timedelta(minutes=9)
        event = IncidentEvent(
            "resolved", Verdict.UNEXPECTED_UP, at, "HTTP 503", "down", "freeze", held
        )
        assert store.record_event(*KEY, event).resolved_at == at
        store.outbox.delivered(row.id, at.timestamp())
        assert store.outbox.pending() == {}
    finally:
        store.close()
    Store(db, readonly=True).close()  # once migrated, a reader reads it


def test_a_version_2_store_without_alerts_gets_the_outbox(tmp_path: Path) -> None:
    db = v2_store(tmp_path / "old.db", outbox=False)
    store = Store(db)
    try:
        assert store.outbox.pending() == {}
        assert store.outbox.enqueue(["webhook"], "k", "{}", 1.0) == 1
        assert [i.id for i in store.open_incidents()] == [1]
    finally:
        store.close()


@pytest.mark.parametrize("readonly", [False, True])
def test_a_store_from_a_newer_version_is_refused(tmp_path: Path, readonly: bool) -> None:
    db = tmp_path / "newer.db"
    Store(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer channel-monitor") as refused:
        Store(db, readonly=readonly)
    assert f"schema {SCHEMA_VERSION + 1}" in str(refused.value)
    assert user_version(db) == SCHEMA_VERSION + 1, "left as it was"

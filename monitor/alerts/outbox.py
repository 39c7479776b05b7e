"""The alert outbox: one row per (sink, incident transition), written in the incident's own
transaction, marked delivered only after the sink answered 2xx.

A crash between the incident and the delivery leaves the row pending, and the next start sends
it. A crash between the sink's 2xx and the commit of `delivered` sends it once more: the
`dedup_key` (`incident-<id>-<kind>`) travels with every delivery so a sink that can deduplicate
(Alertmanager by its labels, a webhook receiver by `Idempotency-Key`) sees it once. Rows are
unique per sink and dedup key, so a transition is never queued twice for one sink.

All functions take the store's connection and run on the store's worker thread (`Store.call`).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from monitor.alerts.message import Alert

SCHEMA = """
CREATE TABLE IF NOT EXISTS alert_outbox (
    id INTEGER PRIMARY KEY,
    sink TEXT NOT NULL,
    dedup_key TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    delivered_at REAL,
    failed_at REAL,
    UNIQUE (sink, dedup_key)
);
CREATE INDEX IF NOT EXISTS alert_outbox_pending
    ON alert_outbox (sink, next_attempt_at) WHERE delivered_at IS NULL AND failed_at IS NULL;
"""

_PENDING = "delivered_at IS NULL AND failed_at IS NULL"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One pending row."""

    id: int
    sink: str
    dedup_key: str
    alert: Alert
    attempts: int


def ensure(db: sqlite3.Connection) -> None:
    """Create the table if it is missing."""
    db.executescript(SCHEMA)
    db.commit()


def enqueue(db: sqlite3.Connection, sinks: list[str], alert: Alert, now: float) -> int:
    """Queue `alert` for each sink; inside the caller's transaction (no commit here)."""
    payload = alert.to_json()
    count = 0
    for sink in sinks:
        cursor = db.execute(
            "INSERT OR IGNORE INTO alert_outbox (sink, dedup_key, payload, created_at, "
            "next_attempt_at) VALUES (?,?,?,?,?)",
            (sink, alert.dedup_key, payload, now, now),
        )
        count += cursor.rowcount
    return count


def due(db: sqlite3.Connection, sink: str, now: float, limit: int = 20) -> list[Delivery]:
    """Pending rows of one sink whose next attempt is due, oldest first."""
    rows = db.execute(
        f"SELECT id, sink, dedup_key, payload, attempts FROM alert_outbox WHERE sink = ? "
        f"AND {_PENDING} AND next_attempt_at <= ? ORDER BY id LIMIT ?",
        (sink, now, limit),
    ).fetchall()
    return [Delivery(r[0], r[1], r[2], Alert.from_json(r[3]), r[4]) for r in rows]


def next_attempt(db: sqlite3.Connection, sink: str) -> float | None:
    """When the earliest pending row of a sink is due (None when nothing is pending)."""
    row = db.execute(
        f"SELECT min(next_attempt_at) FROM alert_outbox WHERE sink = ? AND {_PENDING}",
        (sink,),
    ).fetchone()
    return row[0] if row else None


def delivered(db: sqlite3.Connection, row_id: int, now: float) -> None:
    with db:
        db.execute(
            "UPDATE alert_outbox SET delivered_at = ?, attempts = attempts + 1 WHERE id = ?",
            (now, row_id),
        )


def retry(db: sqlite3.Connection, row_id: int, next_at: float, error: str) -> None:
    with db:
        db.execute(
            "UPDATE alert_outbox SET attempts = attempts + 1, next_attempt_at = ?, "
            "last_error = ? WHERE id = ?",
            (next_at, error, row_id),
        )


def give_up(db: sqlite3.Connection, row_id: int, now: float, error: str) -> None:
    with db:
        db.execute(
            "UPDATE alert_outbox SET attempts = attempts + 1, failed_at = ?, last_error = ? "
            "WHERE id = ?",
            (now, error, row_id),
        )


def pending(db: sqlite3.Connection) -> dict[str, int]:
    """Pending rows per sink name."""
    rows = db.execute(
        f"SELECT sink, count(*) FROM alert_outbox WHERE {_PENDING} GROUP BY sink"
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def rows(db: sqlite3.Connection) -> list[dict]:
    """Every row, for tests and diagnostics (payloads parsed)."""
    cursor = db.execute(
        "SELECT id, sink, dedup_key, attempts, next_attempt_at, last_error, delivered_at, "
        "failed_at FROM alert_outbox ORDER BY id"
    )
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]

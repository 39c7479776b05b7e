"""The alert outbox: one row per (sink, message), written in the incident's own transaction,
marked delivered only after the sink answered 2xx.

A crash between the incident and the delivery leaves the row pending, and the next start sends
it. A crash between the sink's 2xx and the commit of `delivered` sends it once more: the
`dedup_key` (`incident-<id>-<kind>`) travels with every delivery so a sink that can deduplicate
(Alertmanager by its labels, a webhook receiver by `Idempotency-Key`) sees it once. Rows are
unique per sink and dedup key, so a message is never queued twice for one sink.

The table is part of the store's schema (migration 3), so it exists, and is pruned, whether
or not alerts are configured. The outbox holds messages as the sender serialised them (a JSON
text): the store neither knows nor parses what an alert says. Every method runs on the
store's worker thread (`Store.call`), or inside an incident hook.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

#: Migration 3: the outbox, which the alert sender used to create beside the store's schema.
#: `IF NOT EXISTS`: a store that an older version ran with alerts already has it, as is.
OUTBOX_SCHEMA = """
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
    """One pending row: the message as queued (`payload`) and how often it was tried."""

    id: int
    sink: str
    dedup_key: str
    payload: str
    attempts: int


@dataclass(frozen=True, slots=True)
class Message:
    """A message to queue for some sinks: its dedup key and its serialised form."""

    sinks: tuple[str, ...]
    dedup_key: str
    payload: str


class Outbox:
    """The outbox table on the store's writer connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def enqueue(self, sinks: list[str], dedup_key: str, payload: str, now: float) -> int:
        """Queue one message for each sink inside the caller's transaction (an incident hook:
        no commit here, so the rows and the incident commit or roll back together). Returns
        how many rows are new (a sink that has the key already keeps its row)."""
        count = 0
        for sink in sinks:
            cursor = self.db.execute(
                "INSERT OR IGNORE INTO alert_outbox (sink, dedup_key, payload, created_at, "
                "next_attempt_at) VALUES (?,?,?,?,?)",
                (sink, dedup_key, payload, now, now),
            )
            count += cursor.rowcount
        return count

    def add(self, messages: list[Message], now: float) -> int:
        """Queue messages that belong to no incident (notice updates) in a transaction of
        their own; returns how many rows are new."""
        with self.db:
            return sum(self.enqueue(list(m.sinks), m.dedup_key, m.payload, now) for m in messages)

    def due(self, sink: str, now: float, limit: int = 20) -> list[Delivery]:
        """Pending rows of one sink whose next attempt is due, oldest first."""
        rows = self.db.execute(
            f"SELECT id, sink, dedup_key, payload, attempts FROM alert_outbox WHERE sink = ? "
            f"AND {_PENDING} AND next_attempt_at <= ? ORDER BY id LIMIT ?",
            (sink, now, limit),
        ).fetchall()
        return [Delivery(*r) for r in rows]

    def next_attempt(self, sink: str) -> float | None:
        """When the earliest pending row of a sink is due (None when nothing is pending)."""
        row = self.db.execute(
            f"SELECT min(next_attempt_at) FROM alert_outbox WHERE sink = ? AND {_PENDING}",
            (sink,),
        ).fetchone()
        return row[0] if row else None

    def delivered(self, row_id: int, now: float) -> None:
        """The sink took the row: it is done."""
        with self.db:
            self.db.execute(
                "UPDATE alert_outbox SET delivered_at = ?, attempts = attempts + 1 WHERE id = ?",
                (now, row_id),
            )

    def retry(self, row_id: int, next_at: float, error: str) -> None:
        """A transient failure: count the attempt and try again at `next_at`."""
        with self.db:
            self.db.execute(
                "UPDATE alert_outbox SET attempts = attempts + 1, next_attempt_at = ?, "
                "last_error = ? WHERE id = ?",
                (next_at, error, row_id),
            )

    def give_up(self, row_id: int, now: float, error: str) -> None:
        """A permanent failure: the row stays, marked failed, and is not tried again."""
        with self.db:
            self.db.execute(
                "UPDATE alert_outbox SET attempts = attempts + 1, failed_at = ?, last_error = ? "
                "WHERE id = ?",
                (now, error, row_id),
            )

    def pending(self) -> dict[str, int]:
        """Pending rows per sink name."""
        rows = self.db.execute(
            f"SELECT sink, count(*) FROM alert_outbox WHERE {_PENDING} GROUP BY sink"
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    def rows(self) -> list[dict]:
        """Every row with its bookkeeping (not its payload), for tests and diagnostics."""
        cursor = self.db.execute(
            "SELECT id, sink, dedup_key, attempts, next_attempt_at, last_error, delivered_at, "
            "failed_at FROM alert_outbox ORDER BY id"
        )
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]

    def payloads(self) -> list[str]:
        """Every row's payload, in order (tests check what a sink would be sent)."""
        return [r[0] for r in self.db.execute("SELECT payload FROM alert_outbox ORDER BY id")]

    def delete_done_before(self, before: float, limit: int) -> int:
        """Delete up to `limit` rows created before `before` that were delivered or given up
        (inside the caller's transaction: a slice of pruning); returns how many went."""
        return self.db.execute(
            "DELETE FROM alert_outbox WHERE id IN (SELECT id FROM alert_outbox WHERE "
            "created_at < ? AND (delivered_at IS NOT NULL OR failed_at IS NOT NULL) LIMIT ?)",
            (before, limit),
        ).rowcount

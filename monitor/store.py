"""History in one SQLite file: observations, hourly rollups, incidents.

Raw observations are kept for a short retention window, hourly rollups per service for long
history (the page's 90-day bars), incidents for ever. The file is in WAL mode so readers (the
site renderer, `channel-monitor render`) never wait for the writer. All writes run on one
worker thread through `Store.call`, so the event loop never blocks on the disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from monitor.judge import IncidentEvent, OpenIncident, Verdict
from monitor.probe import Observation

T = TypeVar("T")

DEFAULT_RETENTION = timedelta(days=7)
DEFAULT_ROLLUP_RETENTION = timedelta(days=400)

SCHEMA = """
CREATE TABLE IF NOT EXISTS observations (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    business TEXT NOT NULL,
    at REAL NOT NULL,
    serving INTEGER NOT NULL,
    reason TEXT NOT NULL,
    status_code INTEGER,
    duration REAL NOT NULL,
    expected TEXT NOT NULL,
    mismatch TEXT
);
CREATE INDEX IF NOT EXISTS observations_service_at ON observations (channel, business, at);
CREATE INDEX IF NOT EXISTS observations_at ON observations (at);
CREATE TABLE IF NOT EXISTS rollups (
    channel TEXT NOT NULL,
    business TEXT NOT NULL,
    hour REAL NOT NULL,
    probes INTEGER NOT NULL,
    serving INTEGER NOT NULL,
    expected_up INTEGER NOT NULL,
    expected_down INTEGER NOT NULL,
    mismatches INTEGER NOT NULL,
    duration_sum REAL NOT NULL,
    duration_max REAL NOT NULL,
    PRIMARY KEY (channel, business, hour)
);
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    business TEXT NOT NULL,
    direction TEXT NOT NULL,
    opened_at REAL NOT NULL,
    resolved_at REAL,
    reason TEXT NOT NULL,
    resolve_reason TEXT,
    expected TEXT NOT NULL,
    period TEXT
);
CREATE INDEX IF NOT EXISTS incidents_open ON incidents (resolved_at);
"""


@dataclass(frozen=True, slots=True)
class IncidentRecord:
    """An incident as stored."""

    id: int
    channel: str
    business: str
    direction: str
    opened_at: datetime
    resolved_at: datetime | None
    reason: str
    resolve_reason: str | None
    expected: str
    period: str | None


@dataclass(frozen=True, slots=True)
class Rollup:
    """One hour of one service."""

    channel: str
    business: str
    hour: datetime
    probes: int
    serving: int
    expected_up: int
    expected_down: int
    mismatches: int
    duration_sum: float
    duration_max: float


@dataclass(frozen=True, slots=True)
class PendingObservation:
    """An observation waiting in the write buffer, with what the judge made of it."""

    channel: str
    business: str
    observation: Observation
    expected: str
    mismatch: Verdict | None


def _ts(value: datetime) -> float:
    return value.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


#: Hooks that run inside an incident's transaction (the alert outbox adds its rows here).
IncidentHook = Callable[[sqlite3.Connection, IncidentRecord, IncidentEvent], None]


class Store:
    """One SQLite file. Methods without `async` run on the caller's thread; use `call` from
    the event loop so they run on the store's own worker thread instead."""

    def __init__(
        self,
        path: str | Path,
        retention: timedelta = DEFAULT_RETENTION,
        rollup_retention: timedelta = DEFAULT_ROLLUP_RETENTION,
        readonly: bool = False,
    ) -> None:
        self.path = Path(path)
        self.retention = retention
        self.rollup_retention = rollup_retention
        self.incident_hooks: list[IncidentHook] = []
        self._pending: list[PendingObservation] = []
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.write_errors = 0
        if readonly:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"  # percent-encodes `?`, `#`, `%`
            self.db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            self.db.commit()

    # --- plumbing --------------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store method on the store's worker thread."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        """Write what is buffered and close the file."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._pending:
            self.flush()
        self.db.close()

    # --- observations ----------------------------------------------------------------------

    def add(self, item: PendingObservation) -> None:
        """Buffer one observation; `flush` writes the buffer in one transaction."""
        with self._lock:
            self._pending.append(item)

    def flush(self) -> int:
        """Write buffered observations and their hourly rollups; return how many."""
        with self._lock:
            items, self._pending = self._pending, []
        if not items:
            return 0
        try:
            with self.db:
                self.db.executemany(
                    "INSERT INTO observations (channel, business, at, serving, reason, "
                    "status_code, duration, expected, mismatch) VALUES (?,?,?,?,?,?,?,?,?)",
                    [
                        (
                            i.channel,
                            i.business,
                            _ts(i.observation.at),
                            int(i.observation.serving),
                            i.observation.reason,
                            i.observation.status_code,
                            i.observation.duration_seconds,
                            i.expected,
                            i.mismatch.value if i.mismatch else None,
                        )
                        for i in items
                    ],
                )
                self.db.executemany(
                    "INSERT INTO rollups VALUES (?,?,?,1,?,?,?,?,?,?) "
                    "ON CONFLICT (channel, business, hour) DO UPDATE SET "
                    "probes = probes + 1, serving = serving + excluded.serving, "
                    "expected_up = expected_up + excluded.expected_up, "
                    "expected_down = expected_down + excluded.expected_down, "
                    "mismatches = mismatches + excluded.mismatches, "
                    "duration_sum = duration_sum + excluded.duration_sum, "
                    "duration_max = max(duration_max, excluded.duration_max)",
                    [
                        (
                            i.channel,
                            i.business,
                            _hour(i.observation.at),
                            int(i.observation.serving),
                            int(i.expected == "up"),
                            int(i.expected == "down"),
                            int(i.mismatch is not None),
                            i.observation.duration_seconds,
                            i.observation.duration_seconds,
                        )
                        for i in items
                    ],
                )
        except sqlite3.Error:
            self.write_errors += 1
            with self._lock:  # keep them for the next attempt rather than lose them
                self._pending[:0] = items
            raise
        return len(items)

    def prune(self, now: datetime) -> None:
        """Drop raw observations and rollups older than their retention windows."""
        with self.db:
            self.db.execute("DELETE FROM observations WHERE at < ?", (_ts(now - self.retention),))
            self.db.execute(
                "DELETE FROM rollups WHERE hour < ?", (_ts(now - self.rollup_retention),)
            )

    def add_rollups(self, rows: Iterable[Rollup]) -> None:
        """Insert whole hours at once (imports, tests that need long history)."""
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO rollups VALUES (?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        r.channel,
                        r.business,
                        _ts(r.hour),
                        r.probes,
                        r.serving,
                        r.expected_up,
                        r.expected_down,
                        r.mismatches,
                        r.duration_sum,
                        r.duration_max,
                    )
                    for r in rows
                ],
            )

    # --- incidents -------------------------------------------------------------------------

    def record_event(self, channel: str, business: str, event: IncidentEvent) -> IncidentRecord:
        """Write an incident transition, and whatever the hooks add, in one transaction.

        Buffered observations are written first so the history never lags its incidents.
        """
        self.flush()
        with self.db:
            if event.kind == "opened":
                cursor = self.db.execute(
                    "INSERT INTO incidents (channel, business, direction, opened_at, reason, "
                    "expected, period) VALUES (?,?,?,?,?,?,?)",
                    (
                        channel,
                        business,
                        event.direction.value,
                        _ts(event.at),
                        event.reason,
                        event.expected,
                        event.period,
                    ),
                )
                incident_id = int(cursor.lastrowid or 0)
            else:
                incident_id = self._resolve_target(channel, business, event)
                self.db.execute(
                    "UPDATE incidents SET resolved_at = ?, resolve_reason = ? WHERE id = ?",
                    (_ts(event.at), event.reason, incident_id),
                )
            record = self._incident(incident_id)
            for hook in self.incident_hooks:
                hook(self.db, record, event)
        return record

    def _resolve_target(self, channel: str, business: str, event: IncidentEvent) -> int:
        if event.incident.id is not None:
            return event.incident.id
        row = self.db.execute(
            "SELECT id FROM incidents WHERE channel = ? AND business = ? AND direction = ? "
            "AND resolved_at IS NULL ORDER BY opened_at DESC LIMIT 1",
            (channel, business, event.direction.value),
        ).fetchone()
        if row is None:
            raise LookupError(f"no open {event.direction} incident for {channel}/{business}")
        return int(row[0])

    def _incident(self, incident_id: int) -> IncidentRecord:
        row = self.db.execute(
            "SELECT id, channel, business, direction, opened_at, resolved_at, reason, "
            "resolve_reason, expected, period FROM incidents WHERE id = ?",
            (incident_id,),
        ).fetchone()
        return _incident_record(row)

    def open_incidents(self) -> list[IncidentRecord]:
        """Incidents not yet resolved: `run` resumes them after a restart."""
        rows = self.db.execute(
            "SELECT id, channel, business, direction, opened_at, resolved_at, reason, "
            "resolve_reason, expected, period FROM incidents WHERE resolved_at IS NULL "
            "ORDER BY opened_at"
        ).fetchall()
        return [_incident_record(r) for r in rows]

    def incidents(self, since: datetime | None = None, limit: int = 500) -> list[IncidentRecord]:
        """Incidents opened or still open since `since`, newest first."""
        floor = _ts(since) if since else 0.0
        rows = self.db.execute(
            "SELECT id, channel, business, direction, opened_at, resolved_at, reason, "
            "resolve_reason, expected, period FROM incidents "
            "WHERE opened_at >= ? OR resolved_at IS NULL OR resolved_at >= ? "
            "ORDER BY opened_at DESC LIMIT ?",
            (floor, floor, limit),
        ).fetchall()
        return [_incident_record(r) for r in rows]

    # --- reads -----------------------------------------------------------------------------

    def rollups(self, since: datetime, until: datetime | None = None) -> list[Rollup]:
        """Hourly rollups in `[since, until)`, ordered by service and hour."""
        top = _ts(until) if until else float("inf")
        rows = self.db.execute(
            "SELECT channel, business, hour, probes, serving, expected_up, expected_down, "
            "mismatches, duration_sum, duration_max FROM rollups WHERE hour >= ? AND hour < ? "
            "ORDER BY channel, business, hour",
            (_ts(since), top),
        ).fetchall()
        return [Rollup(r[0], r[1], _dt(r[2]), *r[3:]) for r in rows]  # type: ignore[arg-type]

    def last_observations(self) -> dict[tuple[str, str], Observation]:
        """The newest stored observation of every service."""
        rows = self.db.execute(
            "SELECT o.channel, o.business, o.at, o.serving, o.reason, o.status_code, o.duration "
            "FROM observations o JOIN (SELECT channel, business, max(at) AS at FROM observations "
            "GROUP BY channel, business) last USING (channel, business, at)"
        ).fetchall()
        return {
            (r[0], r[1]): Observation(
                at=_dt(r[2]),  # type: ignore[arg-type]
                serving=bool(r[3]),
                reason=r[4],
                status_code=r[5],
                duration_seconds=r[6],
            )
            for r in rows
        }

    def observations(self, channel: str, business: str, since: datetime) -> list[tuple]:
        """Raw rows of one service since `since`: (at, serving, reason, expected, mismatch)."""
        return self.db.execute(
            "SELECT at, serving, reason, expected, mismatch FROM observations "
            "WHERE channel = ? AND business = ? AND at >= ? ORDER BY at",
            (channel, business, _ts(since)),
        ).fetchall()


def _hour(at: datetime) -> float:
    stamp = at.timestamp()
    return stamp - stamp % 3600


def _incident_record(row: tuple) -> IncidentRecord:
    return IncidentRecord(
        id=row[0],
        channel=row[1],
        business=row[2],
        direction=row[3],
        opened_at=_dt(row[4]),  # type: ignore[arg-type]
        resolved_at=_dt(row[5]),
        reason=row[6],
        resolve_reason=row[7],
        expected=row[8],
        period=row[9],
    )


def as_open_incident(record: IncidentRecord) -> OpenIncident:
    """A stored open incident, in the judge's terms (for resuming after a restart)."""
    return OpenIncident(
        id=record.id,
        direction=Verdict(record.direction),
        opened_at=record.opened_at,
        reason=record.reason,
        expected=record.expected,
        period=record.period,
    )

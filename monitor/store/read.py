"""Reading the store: incidents, rollups, runs and the newest observations, as records.

`StoreReads` holds the queries; `Store` (writer or read-only) has them all.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

from monitor.probe import Observation
from monitor.store.records import IncidentRecord, RawRun, Rollup, _dt, _incident_record, _ts


class StoreReads:
    """The store's reads, on its connection `db`."""

    db: sqlite3.Connection

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
        """The newest stored observation of every service (the last of its latest run)."""
        rows = self.db.execute(
            "SELECT s.channel, s.business, r.until, r.serving, r.reason, r.status_code, "
            "r.duration FROM runs r JOIN (SELECT service, max(until) AS until FROM runs "
            "GROUP BY service) last USING (service, until) JOIN services s ON s.id = r.service"
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

    def runs(self, channel: str, business: str, since: datetime) -> list[RawRun]:
        """The runs of one service holding observations since `since`, in time order."""
        return read_runs(self.db, (channel, business), _ts(since))

    def observations(self, channel: str, business: str, since: datetime) -> list[tuple]:
        """Raw observations of one service since `since`: (at, serving, reason, expected,
        mismatch), read out of their runs (see `RawRun.instants`)."""
        floor = _ts(since)
        return [
            (stamp, run.serving, run.reason, run.expected, run.mismatch)
            for run in self.runs(channel, business, since)
            for stamp in run.instants()
            if stamp >= floor
        ]


def read_runs(db: sqlite3.Connection, key: tuple[str, str], since: float) -> list[RawRun]:
    """Runs of the service `key` with an observation at or after `since`, in time order (a
    run starts within the hour before its last observation, which bounds the index range)."""
    rows = db.execute(
        "SELECT at, until, count, gap, serving, reason, expected, mismatch FROM observations "
        "WHERE channel = ? AND business = ? AND at >= ? AND until >= ? ORDER BY at",
        (*key, since - 3600, since),
    ).fetchall()
    return [RawRun(*row) for row in rows]

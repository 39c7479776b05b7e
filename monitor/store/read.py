"""Reading the store: incidents, rollups, runs and the newest observations, as records.

`StoreReads` holds the queries, as named methods that return records, never cursors: the
writer (`Store`) has them all, and so does `StoreReader`, the read-only store that `report`
and `render` open. The report, the site and the command line ask these; none of them knows
a table's name.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, tzinfo
from operator import add
from pathlib import Path

from monitor.observation import Observation
from monitor.store.records import (
    IncidentRecord,
    RawRun,
    Rollup,
    Sighting,
    _dt,
    _incident_record,
    _ts,
)
from monitor.store.schema import open_reader


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

    # --- the report's reads ---------------------------------------------------------------

    def raw_from(self) -> datetime | None:
        """From when the raw observations are complete: the hour of the earliest one kept if
        its hour still holds every probe its rollup counted, else the hour after (pruning cut
        into it). None when no raw observation is kept."""
        row = self.db.execute("SELECT min(at) FROM runs").fetchone()
        if row[0] is None:
            return None
        hour = _floor_hour(row[0])
        # a run stays inside one hour, so the hour's runs hold exactly its raw observations
        raw = self.db.execute(
            "SELECT coalesce(sum(count), 0) FROM runs WHERE at >= ? AND at < ?",
            (hour, hour + 3600),
        ).fetchone()[0]
        rolled = self.db.execute(  # a seek per service along the primary key (service, hour)
            "SELECT coalesce(sum((SELECT probes FROM hourly WHERE service = s.id AND hour = ?)), "
            "0) + (SELECT coalesce(sum(probes), 0) FROM hour_now WHERE hour = ?) FROM services s",
            (hour, hour),
        )
        return _dt(hour if raw >= rolled.fetchone()[0] else hour + 3600)

    def stored_range(self) -> tuple[datetime, datetime] | None:
        """From the first hour holding data (observations, rollups or incidents) to the end of
        the last one; None for an empty store."""
        lows, highs = [], []
        for sql in (
            # the last observation ends the newest run, which started within the hour before it
            "SELECT min(at), (SELECT max(until) FROM runs WHERE at >= (SELECT max(at) FROM runs) "
            "- 3600) FROM runs",
            "SELECT min((SELECT min(hour) FROM hourly WHERE service = s.id)), "
            "max((SELECT max(hour) FROM hourly WHERE service = s.id)) FROM services s",
            "SELECT min(hour), max(hour) FROM hour_now",
            "SELECT min(opened_at), max(max(opened_at), coalesce(max(resolved_at), 0)) "
            "FROM incidents",
        ):
            lo, hi = self.db.execute(sql).fetchone()
            if lo is not None:
                lows.append(lo)
                highs.append(hi)
        if not lows:
            return None
        return _at(_floor_hour(min(lows))), _at(_floor_hour(max(highs)) + 3600)

    def runs_between(self, key: tuple[str, str], start: datetime, end: datetime) -> list[RawRun]:
        """The runs of one service starting in `[start, end)`, and the last one starting before
        `start` (it may reach into the range), in time order."""
        before = self.db.execute(
            f"{_RUN} WHERE channel = ? AND business = ? AND at < ? ORDER BY at DESC LIMIT 1",
            (*key, start.timestamp()),
        ).fetchall()
        rows = self.db.execute(
            f"{_RUN} WHERE channel = ? AND business = ? AND at >= ? AND at < ? ORDER BY at",
            (*key, start.timestamp(), end.timestamp()),
        ).fetchall()
        return [RawRun(*row) for row in before + rows]

    def service_rollups(self, key: tuple[str, str], start: datetime, end: datetime) -> list[Rollup]:
        """The hourly rollups of one service from the hour holding `start` to `end`, in order."""
        rows = self.db.execute(
            "SELECT channel, business, hour, probes, serving, expected_up, expected_down, "
            "mismatches, duration_sum, duration_max FROM rollups WHERE channel = ? "
            "AND business = ? AND hour >= ? AND hour < ? ORDER BY hour",
            (*key, _floor_hour(start.timestamp()), end.timestamp()),
        ).fetchall()
        return [Rollup(r[0], r[1], _at(r[2]), *r[3:]) for r in rows]

    def mismatch_evidence(
        self, key: tuple[str, str], direction: str, opened: datetime, until: datetime
    ) -> tuple[Sighting | None, Sighting | None]:
        """The first mismatching observation of the streak that opened an incident at
        `opened`, and the last mismatching one up to `until` (None when raw history no longer
        has them)."""
        # Runs of one service do not overlap and a run is all mismatching or not, so the last
        # calm observation up to the opening ends a calm run, the streak's first mismatching
        # one starts a run, and the last one before the end is the last of a run's instants.
        first_at, last_at = opened.timestamp(), until.timestamp()
        calm = self.db.execute(
            "SELECT max(min(until, ?)) FROM observations WHERE channel = ? AND business = ? "
            "AND at <= ? AND (mismatch IS NULL OR mismatch != ?)",
            (first_at, *key, first_at, direction),
        ).fetchone()[0]
        first = self.db.execute(
            "SELECT at, reason FROM observations WHERE channel = ? AND business = ? AND at > ? "
            "AND at <= ? AND mismatch = ? ORDER BY at LIMIT 1",
            (*key, calm if calm is not None else float("-inf"), last_at, direction),
        ).fetchone()
        row = self.db.execute(
            f"{_RUN} WHERE channel = ? AND business = ? AND at <= ? AND until >= ? "
            "AND mismatch = ? ORDER BY at DESC LIMIT 1",
            (*key, last_at, first_at, direction),
        ).fetchone()
        last = None
        if row is not None:
            run = RawRun(*row)
            stamp = max(t for t in run.instants() if t <= last_at)
            last = Sighting(_at(stamp), run.reason)
        return (Sighting(_at(first[0]), first[1]) if first else None, last)

    def incidents_between(self, start: datetime, end: datetime) -> list[IncidentRecord]:
        """Incidents open at some point of `[start, end)`, in the order they opened."""
        rows = self.db.execute(
            "SELECT id, channel, business, direction, opened_at, resolved_at, reason, "
            "resolve_reason, expected, period FROM incidents WHERE opened_at < ? "
            "AND (resolved_at IS NULL OR resolved_at > ?) ORDER BY opened_at",
            (end.timestamp(), start.timestamp()),
        ).fetchall()
        return [_incident_record(r) for r in rows]

    # --- the page's reads -------------------------------------------------------------------

    def day_sums(
        self, keys: list[tuple[str, str]], zone: tzinfo, start: datetime, end: datetime
    ) -> dict[tuple[str, str], dict[int, tuple[int, ...]]]:
        """Rollup hours of these services in `[start, end)` summed per local day of `zone`,
        by day index (0 is the day of `start`): probes, serving, expected_up,
        expected_down, mismatches, and of those mismatches the ones up while expected down.

        The sums are aggregate queries inside SQLite, not one object per rollup hour: 90 days
        of 76 services is 164,000 hours, which `rollups` turns into objects in about two
        seconds, and the page is rendered again after every verdict change."""
        offset, offset_params = _offset_sql(zone, start, end)
        base = start.timestamp() + start.utcoffset().total_seconds()  # type: ignore[union-attr]
        # One statement per table per channel (up to `_CHUNK` services at a time) seeks the
        # primary key (service, hour) once per service, so the cost follows the window, not
        # the whole retained history, and 10,000 services cost a few hundred statements, not
        # 10,000. The tables are read apart, not through the `rollups` view: its join and
        # union made SQLite copy every hour once more before grouping, 2.5 times the cost.
        # A service's latest hour is in `hour_now`, the others in `hourly`; a day holding
        # both is added up here. An hour up while expected down can only come from its
        # expected_down probes; in an hour that saw both expectations (a planned change
        # inside it) the smaller count is taken.
        by_channel: dict[str, list[str]] = {}
        for channel, business in keys:
            by_channel.setdefault(channel, []).append(business)
        out: dict[tuple[str, str], dict[int, tuple[int, ...]]] = {}
        for channel, names in by_channel.items():
            for at in range(0, len(names), _CHUNK):
                chunk = names[at : at + _CHUNK]
                found = self.db.execute(
                    f"SELECT id, business FROM services WHERE channel = ? AND business IN "
                    f"({','.join('?' * len(chunk))})",
                    [channel, *chunk],
                ).fetchall()
                if not found:
                    continue
                names_of = dict(found)
                for table in ("hourly", "hour_now"):
                    query = (
                        f"SELECT service, CAST((hour + {offset} - ?) / 86400 AS INTEGER) AS day, "
                        f"{_DAY_SUMS} FROM {table} WHERE service IN "
                        f"({','.join('?' * len(names_of))}) AND hour >= ? AND hour < ? "
                        "GROUP BY service, day"
                    )
                    params = [*offset_params, base, *names_of, start.timestamp(), end.timestamp()]
                    for service, day, *sums in self.db.execute(query, params):
                        days = out.setdefault((channel, names_of[service]), {})
                        held = days.get(int(day))
                        days[int(day)] = (
                            tuple(sums) if held is None else tuple(map(add, held, sums))
                        )
        return out


class StoreReader(StoreReads):
    """A store opened read-only: the read API and nothing that writes (`report`, `render`).

    The file must be of this schema version; one of an older version is refused with the
    advice to let `run` upgrade it, one of a newer version with the advice to upgrade.
    `leave_no_files` creates nothing beside the store (see `open_reader`).
    """

    def __init__(self, path: str | Path, leave_no_files: bool = False) -> None:
        self.path = Path(path)
        self.db = open_reader(self.path, leave_no_files)

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


_RUN = "SELECT at, until, count, gap, serving, reason, expected, mismatch FROM observations"


#: Services of one channel summed by one statement.
_CHUNK = 500
#: What `day_sums` adds up of a service's hours in a day, in `Day`'s order (site/history.py).
_DAY_SUMS = (
    "sum(probes), sum(serving), sum(expected_up), sum(expected_down), sum(mismatches), "
    "sum(CASE WHEN mismatches = 0 OR expected_down = 0 THEN 0 WHEN expected_up = 0 THEN "
    "mismatches ELSE min(mismatches, expected_down, serving) END)"
)


def _offset_sql(zone: tzinfo, start: datetime, end: datetime) -> tuple[str, list[float]]:
    """A SQL expression for the zone's UTC offset (seconds) at `hour`: one value, or a CASE
    over the offset changes (DST) between `start` and `end`, found day by day and bisected."""

    def offset(at: datetime) -> float:
        return at.astimezone(zone).utcoffset().total_seconds()  # type: ignore[union-attr]

    at, stop = start.astimezone(UTC), end.astimezone(UTC)
    first = current = offset(at)
    changes: list[tuple[float, float]] = []
    while at < stop:
        following = at + timedelta(days=1)
        if offset(following) != current:
            lo, hi = at, following
            while hi - lo > timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                lo, hi = (mid, hi) if offset(mid) == current else (lo, mid)
            current = offset(following)
            changes.append((hi.timestamp(), current))
        at = following
    if not changes:
        return "?", [first]
    params: list[float] = []
    previous = first
    for instant, value in changes:
        params += [instant, previous]
        previous = value
    sql = "CASE " + " ".join("WHEN hour < ? THEN ?" for _ in changes) + " ELSE ? END"
    return sql, [*params, previous]


def _floor_hour(stamp: float) -> float:
    return stamp - stamp % 3600


def _at(stamp: float) -> datetime:
    return datetime.fromtimestamp(stamp, UTC)


def read_runs(db: sqlite3.Connection, key: tuple[str, str], since: float) -> list[RawRun]:
    """Runs of the service `key` with an observation at or after `since`, in time order (a
    run starts within the hour before its last observation, which bounds the index range)."""
    rows = db.execute(
        "SELECT at, until, count, gap, serving, reason, expected, mismatch FROM observations "
        "WHERE channel = ? AND business = ? AND at >= ? AND until >= ? ORDER BY at",
        (*key, since - 3600, since),
    ).fetchall()
    return [RawRun(*row) for row in rows]

"""The report: what the plan asked of every service against what was observed, with incidents
as evidence (`channel-monitor report`).

How time is counted (the README says the same):
- **Planned** time comes from the plan, exactly: `up`, `down` or `any` between its transitions.
- **Observed** time: an observation stands for its service from its instant until the next
  observation of that service, at most `cover` (default twice the service's probe interval).
  Time no observation covers is **unobserved** (all of it for a service never observed).
- **Matched** time: observed time in which the observation agrees with the plan (serving while
  `up`, not serving while `down`, either under `any` and inside the plan's grace after a planned
  change, as the judge counts them). Availability against the plan is matched / observed, so
  both directions (up when it should be down, down when it should be up) lower it.
- **Resolution**: raw observations where the store still holds them; before that (raw history
  is pruned after 7 days) the hourly rollups: an hour with `n` probes stands for
  `min(hour, n * cover)`, split into serving and matched by the rollup's counts.

Pure computation in the first half (tested without a store); the second half reads the store
through a read-only SQLite connection with a few small queries and never writes to it.
"""

from __future__ import annotations

import bisect
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from zoneinfo import ZoneInfo

from monitor.config import Channel
from monitor.judge import counted
from monitor.plan import Expectation, Plan, ServiceRef
from monitor.store import SCHEMA_VERSION, TABLES, RawRun, version_problem

#: An observation covers at most this many probe intervals of its service.
COVER_INTERVALS = 2
#: The longest `--cover`: a year is more than any probe interval asks for, and an observation's
#: instant plus a cover far beyond it would overflow what a datetime holds.
MAX_COVER = timedelta(days=366)
HOUR = timedelta(hours=1)
RESOLUTIONS = ("auto", "raw", "hourly")


class ReportError(Exception):
    """The store cannot be read as asked; the message says why, in a sentence."""


# --- pure: the plan's pieces, observations' coverage, tallies --------------------------------


@dataclass(frozen=True, slots=True)
class Piece:
    """`[start, end)` in which the plan's expectation (and whether it is grace) is constant."""

    start: datetime
    end: datetime
    state: str
    grace: bool


def plan_pieces(plan: Plan, ref: ServiceRef, start: datetime, end: datetime) -> list[Piece]:
    """The range cut at every planned change of `ref` and where the plan says a grace ends.

    A piece starting inside a grace (also one after a change before `start`) is cut at the
    plan's `grace_until`, so grace is the plan's answer here as in the judge.
    """
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    cuts = {start, end}
    cuts.update(change.at for change in plan.transitions(start, end, [ref]))
    pieces = []
    for a, b in pairwise(sorted(cuts)):
        state = plan.expected(ref, a).state
        grace_end = plan.grace_until(ref, a)
        if grace_end is not None and grace_end < b:
            pieces += [Piece(a, grace_end, state, True), Piece(grace_end, b, state, False)]
        else:
            pieces.append(Piece(a, b, state, grace_end is not None))
    return pieces


@dataclass
class Times:
    """Seconds of each kind within the range, for one service or summed for a channel."""

    planned_up: float = 0.0
    planned_down: float = 0.0
    planned_any: float = 0.0
    observed_up: float = 0.0
    observed_down: float = 0.0
    unobserved: float = 0.0
    matched: float = 0.0

    @property
    def observed(self) -> float:
        return self.observed_up + self.observed_down

    @property
    def availability(self) -> float | None:
        """Share of observed time that matched the plan; None when nothing was observed."""
        return self.matched / self.observed if self.observed > 0 else None

    def add(self, other: Times) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def _planned(pieces: Iterable[Piece], times: Times) -> None:
    for piece in pieces:
        seconds = (piece.end - piece.start).total_seconds()
        if piece.state == "up":
            times.planned_up += seconds
        elif piece.state == "down":
            times.planned_down += seconds
        else:
            times.planned_any += seconds


def _agrees(piece: Piece, serving: bool) -> bool:
    """Whether observed time counts as matched: the judge's own rule (`judge.counted`)."""
    return counted(Expectation(piece.state), piece.grace, serving) is None


def covered(
    observations: Sequence[tuple[datetime, bool]],
    cover: timedelta,
    start: datetime,
    end: datetime,
) -> list[tuple[datetime, datetime, bool]]:
    """`[from, until, serving)` spans the observations stand for within `[start, end)`.

    `observations` are in time order and may begin before `start` (the one before it covers
    into the range).
    """
    out = []
    for index, (at, serving) in enumerate(observations):
        until = at + cover
        if index + 1 < len(observations):
            until = min(until, observations[index + 1][0])
        lo, hi = max(at, start), min(until, end)
        if lo < hi:
            out.append((lo, hi, serving))
    return out


def covered_runs(
    runs: Sequence[RawRun], cover: timedelta, start: datetime, end: datetime
) -> list[tuple[datetime, datetime, bool]]:
    """`covered` for stored runs (monitor/store.py): the same spans the run's observations
    would give one by one. While its longest gap is within `cover`, a run's observations cover
    it from its first to its last without a break, and the last covers on as any observation
    does; otherwise each is taken at its instant (`RawRun.instants`)."""
    limit = cover.total_seconds()
    stamps: list[tuple[float, float, bool]] = []  # (first, last, serving), in time order
    for run in runs:
        if run.count > 1 and run.gap > limit:
            stamps.extend((t, t, bool(run.serving)) for t in run.instants())
        else:
            stamps.append((run.at, run.until, bool(run.serving)))
    out = []
    lo_end, hi_end = start.timestamp(), end.timestamp()
    for index, (first, last, serving) in enumerate(stamps):
        until = last + limit
        if index + 1 < len(stamps):
            until = min(until, stamps[index + 1][0])
        lo, hi = max(first, lo_end), min(until, hi_end)
        if lo < hi:
            out.append((_dt(lo), _dt(hi), serving))
    return out


def tally_raw(
    pieces: Sequence[Piece], spans: Iterable[tuple[datetime, datetime, bool]], times: Times
) -> float:
    """Add observed and matched time of `spans` against the plan's pieces; return observed."""
    starts = [p.start for p in pieces]
    total = 0.0
    for lo, hi, serving in spans:
        seconds = (hi - lo).total_seconds()
        total += seconds
        if serving:
            times.observed_up += seconds
        else:
            times.observed_down += seconds
        index = max(0, bisect.bisect_right(starts, lo) - 1)
        while index < len(pieces) and pieces[index].start < hi:
            piece = pieces[index]
            if _agrees(piece, serving):
                overlap = min(hi, piece.end) - max(lo, piece.start)
                times.matched += max(overlap.total_seconds(), 0.0)
            index += 1
    return total


@dataclass(frozen=True, slots=True)
class HourCounts:
    """One hourly rollup of one service: probes, how many served, how many counted as a
    mismatch by the judge."""

    hour: datetime
    probes: int
    serving: int
    mismatches: int


def tally_hourly(
    hours: Iterable[HourCounts], cover: timedelta, start: datetime, end: datetime, times: Times
) -> float:
    """Add the time rollups stand for (see the module's docstring); return observed."""
    total = 0.0
    for row in hours:
        overlap = min(row.hour + HOUR, end) - max(row.hour, start)
        if overlap <= timedelta(0) or row.probes <= 0:
            continue
        seconds = min(overlap, cover * row.probes).total_seconds()
        total += seconds
        times.observed_up += seconds * row.serving / row.probes
        times.observed_down += seconds * (row.probes - row.serving) / row.probes
        times.matched += seconds * (row.probes - row.mismatches) / row.probes
    return total


# --- the report --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Evidence:
    """One stored observation: when, and the probe's reason."""

    at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class IncidentLine:
    """An incident with its first and last mismatching observation (None once pruned)."""

    id: int
    direction: str
    opened_at: datetime
    resolved_at: datetime | None
    duration: timedelta
    reason: str
    resolve_reason: str | None
    first: Evidence | None
    last: Evidence | None


@dataclass
class ServiceLine:
    ref: ServiceRef
    times: Times
    incidents: list[IncidentLine] = field(default_factory=list)


@dataclass
class ChannelLine:
    channel: Channel
    services: list[ServiceLine]

    @property
    def times(self) -> Times:
        total = Times()
        for line in self.services:
            total.add(line.times)
        return total

    @property
    def incidents(self) -> list[IncidentLine]:
        return sorted((i for s in self.services for i in s.incidents), key=lambda i: i.opened_at)


@dataclass
class Report:
    """The whole report over `[start, end)`; `resolution` is `raw`, `hourly` or `mixed`
    (hourly before `raw_from`, raw from it)."""

    title: str
    title_en: str
    start: datetime
    end: datetime
    zone: ZoneInfo
    resolution: str
    raw_from: datetime | None
    cover: timedelta | None
    channels: list[ChannelLine]
    #: Incidents in the range of services the plan no longer has (not reported per service).
    orphan_incidents: int = 0
    #: True when `--resolution` chose the history, not what the store keeps.
    forced: bool = False

    @property
    def times(self) -> Times:
        total = Times()
        for channel in self.channels:
            total.add(channel.times)
        return total


# --- reading the store -------------------------------------------------------------------------


def open_readonly(path: Path) -> sqlite3.Connection:
    """The store opened read-only (SQLite refuses any write on this connection).

    A report must not leave files beside the store either, and `mode=ro` on a WAL store
    creates its `-shm` (and `-wal`) files. A writer keeps both while it has the store open and
    removes them when it closes, so when neither is there no one is writing: the file is then
    opened `immutable`, which creates nothing. When they are there (a running monitor, or a
    crash left them) `mode=ro` reads the WAL too, and the files stay as they were.
    """
    if not path.is_file():
        raise ReportError(f"--db {path}: no store there (run `channel-monitor run` first)")
    busy = any(Path(f"{path}{tail}").exists() for tail in ("-wal", "-shm"))
    try:
        query = "mode=ro" if busy else "immutable=1"
        db = sqlite3.connect(f"{path.resolve().as_uri()}?{query}", uri=True)
        db.execute("PRAGMA query_only = 1")
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as exc:
        raise ReportError(f"--db {path}: not a channel-monitor store ({exc})") from None
    missing = set(TABLES) - tables
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if missing and version in (0, SCHEMA_VERSION):
        db.close()
        raise ReportError(
            f"--db {path}: not a channel-monitor store (no table {', '.join(sorted(missing))})"
        )
    if version != SCHEMA_VERSION:
        db.close()
        raise ReportError(f"--db {version_problem(path, version)}")
    return db


def _dt(stamp: float) -> datetime:
    return datetime.fromtimestamp(stamp, UTC)


def _floor_hour(stamp: float) -> float:
    return stamp - stamp % 3600


def raw_from(db: sqlite3.Connection) -> datetime | None:
    """From when the raw observations are complete: the hour of the earliest one kept if its
    hour still holds every probe its rollup counted, else the hour after (pruning cut into it).
    None when no raw observation is kept."""
    row = db.execute("SELECT min(at) FROM runs").fetchone()
    if row[0] is None:
        return None
    hour = _floor_hour(row[0])
    # a run stays inside one hour, so the hour's runs hold exactly its raw observations
    raw = db.execute(
        "SELECT coalesce(sum(count), 0) FROM runs WHERE at >= ? AND at < ?", (hour, hour + 3600)
    ).fetchone()[0]
    rolled = db.execute(  # a seek per service along the primary key (service, hour)
        "SELECT coalesce(sum((SELECT probes FROM hourly WHERE service = s.id AND hour = ?)), 0) "
        "+ (SELECT coalesce(sum(probes), 0) FROM hour_now WHERE hour = ?) FROM services s",
        (hour, hour),
    )
    return _dt(hour if raw >= rolled.fetchone()[0] else hour + 3600)


def stored_range(db: sqlite3.Connection) -> tuple[datetime, datetime] | None:
    """Default range: from the first hour holding data to the end of the last one."""
    lows, highs = [], []
    for sql in (
        # the last observation ends the newest run, which started within the hour before it
        "SELECT min(at), (SELECT max(until) FROM runs WHERE at >= (SELECT max(at) FROM runs) "
        "- 3600) FROM runs",
        "SELECT min((SELECT min(hour) FROM hourly WHERE service = s.id)), "
        "max((SELECT max(hour) FROM hourly WHERE service = s.id)) FROM services s",
        "SELECT min(hour), max(hour) FROM hour_now",
        "SELECT min(opened_at), max(max(opened_at), coalesce(max(resolved_at), 0)) FROM incidents",
    ):
        lo, hi = db.execute(sql).fetchone()
        if lo is not None:
            lows.append(lo)
            highs.append(hi)
    if not lows:
        return None
    return _dt(_floor_hour(min(lows))), _dt(_floor_hour(max(highs)) + 3600)


_RUN = "SELECT at, until, count, gap, serving, reason, expected, mismatch FROM observations"


def _observations(
    db: sqlite3.Connection, key: tuple[str, str], start: datetime, end: datetime
) -> list[RawRun]:
    """Runs starting in `[start, end)` and the last one starting before `start`."""
    before = db.execute(
        f"{_RUN} WHERE channel = ? AND business = ? AND at < ? ORDER BY at DESC LIMIT 1",
        (*key, start.timestamp()),
    ).fetchall()
    rows = db.execute(
        f"{_RUN} WHERE channel = ? AND business = ? AND at >= ? AND at < ? ORDER BY at",
        (*key, start.timestamp(), end.timestamp()),
    ).fetchall()
    return [RawRun(*row) for row in before + rows]


def _hours(
    db: sqlite3.Connection, key: tuple[str, str], start: datetime, end: datetime
) -> list[HourCounts]:
    rows = db.execute(
        "SELECT hour, probes, serving, mismatches FROM rollups WHERE channel = ? "
        "AND business = ? AND hour >= ? AND hour < ? ORDER BY hour",
        (*key, _floor_hour(start.timestamp()), end.timestamp()),
    ).fetchall()
    return [HourCounts(_dt(h), p, s, m) for h, p, s, m in rows]


def _evidence(
    db: sqlite3.Connection, key: tuple[str, str], direction: str, opened: float, until: float
) -> tuple[Evidence | None, Evidence | None]:
    """The first mismatching observation of the streak that opened the incident, and the last
    mismatching one before it resolved (None when raw history no longer has them)."""
    # Runs of one service do not overlap and a run is all mismatching or not, so the last
    # calm observation up to the opening ends a calm run, the streak's first mismatching one
    # starts a run, and the last one before the end is the last of a run's instants.
    calm = db.execute(
        "SELECT max(min(until, ?)) FROM observations WHERE channel = ? AND business = ? "
        "AND at <= ? AND (mismatch IS NULL OR mismatch != ?)",
        (opened, *key, opened, direction),
    ).fetchone()[0]
    first = db.execute(
        "SELECT at, reason FROM observations WHERE channel = ? AND business = ? AND at > ? "
        "AND at <= ? AND mismatch = ? ORDER BY at LIMIT 1",
        (*key, calm if calm is not None else float("-inf"), until, direction),
    ).fetchone()
    row = db.execute(
        f"{_RUN} WHERE channel = ? AND business = ? AND at <= ? AND until >= ? "
        "AND mismatch = ? ORDER BY at DESC LIMIT 1",
        (*key, until, opened, direction),
    ).fetchone()
    last = None
    if row is not None:
        run = RawRun(*row)
        stamp = max(t for t in run.instants() if t <= until)
        last = Evidence(_dt(stamp), run.reason)
    return (Evidence(_dt(first[0]), first[1]) if first else None, last)


def _incidents(
    db: sqlite3.Connection, start: datetime, end: datetime, now: datetime
) -> dict[tuple[str, str], list[IncidentLine]]:
    rows = db.execute(
        "SELECT id, channel, business, direction, opened_at, resolved_at, reason, "
        "resolve_reason FROM incidents WHERE opened_at < ? "
        "AND (resolved_at IS NULL OR resolved_at > ?) ORDER BY opened_at",
        (end.timestamp(), start.timestamp()),
    ).fetchall()
    out: dict[tuple[str, str], list[IncidentLine]] = {}
    for ident, channel, business, direction, opened, resolved, reason, resolve_reason in rows:
        key = (channel, business)
        until = resolved if resolved is not None else min(end, now).timestamp()
        first, last = _evidence(db, key, direction, opened, until)
        out.setdefault(key, []).append(
            IncidentLine(
                id=ident,
                direction=direction,
                opened_at=_dt(opened),
                resolved_at=_dt(resolved) if resolved is not None else None,
                duration=timedelta(seconds=max(until - opened, 0.0)),
                reason=reason,
                resolve_reason=resolve_reason,
                first=first,
                last=last,
            )
        )
    return out


def build_report(
    plan: Plan,
    db: sqlite3.Connection,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    cover: timedelta | None = None,
    resolution: str = "auto",
    now: datetime | None = None,
) -> Report:
    """The report over `[start, end)` (default: the span the store holds) from an open store.

    `cover` overrides how long one observation stands for (default: twice each service's
    interval); `resolution` forces `raw` or `hourly` instead of choosing by what is kept.
    """
    now = now or datetime.now(UTC)
    if start is None or end is None:
        span = stored_range(db)
        if span is None:
            raise ReportError("the store holds no observations or incidents yet")
        start, end = start or span[0], end or span[1]
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if end <= start:
        raise ReportError("--until must be after --from")
    boundary = {"raw": start, "hourly": end}.get(resolution) or raw_from(db) or end
    split = min(max(boundary, start), end)
    used = "raw" if split <= start else "hourly" if split >= end else "mixed"
    incidents = _incidents(db, start, end, now)
    #: Services with the same default and rules are planned alike: their pieces are shared.
    alike: dict[int, list[Piece]] = {}
    channels = []
    for channel in plan.config.channels:
        lines = []
        for service in channel.services:
            ref = plan.service(channel.id, service.id)
            times = Times()
            group = plan.alike(ref)
            pieces = alike.get(group)
            if pieces is None:
                pieces = alike[group] = plan_pieces(plan, ref, start, end)
            _planned(pieces, times)
            # Whatever the store holds counts, probe or not: a plan that lost a probe (or the
            # demo, which probes schedule-only services too) still has its history.
            length = cover or COVER_INTERVALS * plan.interval(ref)
            seen = 0.0
            if split > start:
                hours = _hours(db, ref.key, start, split)
                seen += tally_hourly(hours, length, start, split, times)
            if split < end:
                found = _observations(db, ref.key, split, end)
                seen += tally_raw(pieces, covered_runs(found, length, split, end), times)
            times.unobserved = (end - start).total_seconds() - seen
            lines.append(ServiceLine(ref, times, incidents.pop(ref.key, [])))
        channels.append(ChannelLine(channel, lines))
    settings = plan.config.monitor
    return Report(
        title=settings.title,
        title_en=settings.title_en,
        start=start,
        end=end,
        zone=plan.zone,
        resolution=used,
        forced=resolution in ("raw", "hourly"),
        raw_from=split if used == "mixed" else None,
        cover=cover,
        channels=channels,
        orphan_incidents=sum(len(v) for v in incidents.values()),
    )

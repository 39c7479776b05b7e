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
through its read API (`monitor.store.StoreReader`), opened read-only, and never writes to it.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from zoneinfo import ZoneInfo

from monitor.judge import counted
from monitor.plan import Expectation, Plan, ServiceRef
from monitor.plan.schema import Channel
from monitor.store import RawRun, Store, StoreError, StoreReader

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


def open_readonly(path: Path) -> StoreReader:
    """The store opened read-only through its read API, leaving no file beside it (see
    `monitor.store.open_reader`); a file that is no store, or of another schema version, is
    refused with the store's own sentence."""
    if not path.is_file():
        raise ReportError(f"--db {path}: no store there (run `channel-monitor run` first)")
    try:
        return StoreReader(path, leave_no_files=True)
    except StoreError as exc:
        raise ReportError(f"--db {exc}") from None


def _dt(stamp: float) -> datetime:
    return datetime.fromtimestamp(stamp, UTC)


def _incidents(
    db: StoreReader | Store, start: datetime, end: datetime, now: datetime
) -> dict[tuple[str, str], list[IncidentLine]]:
    out: dict[tuple[str, str], list[IncidentLine]] = {}
    for record in db.incidents_between(start, end):
        key = (record.channel, record.business)
        until = record.resolved_at or min(end, now)
        first, last = db.mismatch_evidence(key, record.direction, record.opened_at, until)
        out.setdefault(key, []).append(
            IncidentLine(
                id=record.id,
                direction=record.direction,
                opened_at=record.opened_at,
                resolved_at=record.resolved_at,
                duration=timedelta(
                    seconds=max(until.timestamp() - record.opened_at.timestamp(), 0.0)
                ),
                reason=record.reason,
                resolve_reason=record.resolve_reason,
                first=Evidence(first.at, first.reason) if first else None,
                last=Evidence(last.at, last.reason) if last else None,
            )
        )
    return out


def _hours(
    db: StoreReader | Store, key: tuple[str, str], start: datetime, end: datetime
) -> list[HourCounts]:
    rows = db.service_rollups(key, start, end)
    return [HourCounts(r.hour, r.probes, r.serving, r.mismatches) for r in rows]


def build_report(
    plan: Plan,
    db: StoreReader | Store,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    cover: timedelta | None = None,
    resolution: str = "auto",
    now: datetime | None = None,
) -> Report:
    """The report over `[start, end)` (default: the span the store holds, up to `now`) from an
    open store.

    `cover` overrides how long one observation stands for (default: twice each service's
    interval); `resolution` forces `raw` or `hourly` instead of choosing by what is kept.
    """
    now = now or datetime.now(UTC)
    if start is None or end is None:
        span = db.stored_range()
        if span is None:
            raise ReportError("the store holds no observations or incidents yet")
        # The stored span ends with its last hour; while that hour is still running (a report
        # taken mid-run), the rest of it has not happened: the report ends now, or its last
        # minutes would all count as unobserved.
        last = now if span[0] < now < span[1] else span[1]
        start, end = start or span[0], end or last
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if end <= start:
        raise ReportError("--until must be after --from")
    boundary = {"raw": start, "hourly": end}.get(resolution) or db.raw_from() or end
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
            length = cover or COVER_INTERVALS * plan.interval(ref) * plan.pace
            seen = 0.0
            if split > start:
                hours = _hours(db, ref.key, start, split)
                seen += tally_hourly(hours, length, start, split, times)
            if split < end:
                found = db.runs_between(ref.key, split, end)
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

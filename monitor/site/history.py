"""What the store remembers, read for the page: day bars from hourly rollups, and incidents.

The bars are built from aggregate queries (hours summed per local day inside SQLite), not from
one Python object per rollup hour: 90 days of 76 services is 164,000 hours, which
`Store.rollups` turns into objects in about two seconds, and the page is re-rendered after every
verdict change.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from operator import add

from monitor.plan import Plan, ServiceRef
from monitor.store import IncidentRecord, StoreReads

DAYS = 90

#: Kinds of day, in the order the legend lists them.
KINDS = ("ok", "planned", "down", "up", "none")


@dataclass(frozen=True, slots=True)
class Day:
    """The hours of one service on one local day, summed."""

    probes: int = 0
    serving: int = 0
    expected_up: int = 0
    expected_down: int = 0
    mismatches: int = 0
    #: Of `mismatches`, those that were up while expected down (estimated for mixed hours).
    mismatches_up: int = 0


@dataclass(frozen=True, slots=True)
class Run:
    """Consecutive days of one kind: one bar segment."""

    kind: str
    start: int  # index of the first day in the window
    days: int


@dataclass(frozen=True, slots=True)
class Bar:
    """One service's bar: its runs and how many days of each kind."""

    ref: ServiceRef
    runs: tuple[Run, ...]
    counts: dict[str, int]  # every kind, 0 when absent

    def paths(self) -> list[tuple[str, str]]:
        """SVG path data per kind of day, one rectangle per run (`M{x} 0h{w}v1h-{w}z`), in
        the units of a `0 0 days 1` viewBox: a bar costs a few bytes per run. `ok` days are
        the bar's background (the style sheet), so the common case draws nothing."""
        out: dict[str, list[str]] = {}
        for run in self.runs:
            if run.kind != "ok":
                out.setdefault(run.kind, []).append(f"M{run.start} 0h{run.days}v1h-{run.days}z")
        return [(kind, "".join(out[kind])) for kind in KINDS if kind in out]

    @property
    def trouble(self) -> bool:
        """Whether the service broke its plan on any day of the window."""
        return bool(self.counts["down"] or self.counts["up"])


@dataclass(frozen=True)
class History:
    """Everything the page shows of the past."""

    first_day: date
    last_day: date
    bars: tuple[Bar, ...] = ()
    incidents: tuple[IncidentRecord, ...] = ()


def window(at: datetime, zone: tzinfo, days: int = DAYS) -> tuple[date, date]:
    """The first and last local day of the bars: `days` days ending with the day of `at`."""
    last = at.astimezone(zone).date()
    return last - timedelta(days=days - 1), last


def _midnight(day: date, zone: tzinfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=zone)


def day_totals(
    store: StoreReads, keys: list[tuple[str, str]], zone: tzinfo, first: date, last: date
) -> dict[tuple[str, str], dict[int, Day]]:
    """Rollup hours of these services summed per local day (index 0 is `first`)."""
    start = _midnight(first, zone)
    end = _midnight(last + timedelta(days=1), zone)
    sums = store.day_sums(keys, zone, start, end)
    return {key: {day: Day(*row) for day, row in days.items()} for key, days in sums.items()}


def planned_down_days(plan: Plan, ref: ServiceRef, first: date, last: date) -> set[int]:
    """Indexes of the days on which the plan expects the service down at some point."""
    zone = plan.zone
    start = _midnight(first, zone)
    end = _midnight(last + timedelta(days=1), zone)
    state = plan.expected(ref, start).state
    cursor = start
    days: set[int] = set()

    def mark(lo: datetime, hi: datetime) -> None:
        a = (lo.astimezone(zone).date() - first).days
        b = ((hi - timedelta(microseconds=1)).astimezone(zone).date() - first).days
        days.update(range(max(a, 0), min(b, (last - first).days) + 1))

    for change in plan.transitions(start, end, [ref]):
        if state == "down":
            mark(cursor, change.at)
        state, cursor = change.to_state, change.at
    if state == "down":
        mark(cursor, end)
    return days


def classify(day: Day | None, planned: bool) -> str:
    """The kind of one day: observed mismatches first, then planned pause, then data."""
    if day is not None and day.mismatches:
        return "down" if day.mismatches > day.mismatches_up else "up"
    if planned or (day is not None and day.expected_down):
        return "planned"
    if day is not None and day.probes:
        return "ok"
    return "none"


def runs(kinds: list[str]) -> tuple[Run, ...]:
    """Merge consecutive equal days into runs, so a bar has a few segments, not 90."""
    out: list[Run] = []
    start = 0
    for index in range(1, len(kinds) + 1):
        if index == len(kinds) or kinds[index] != kinds[start]:
            out.append(Run(kinds[start], start, index - start))
            start = index
    return tuple(out)


def day_kinds(
    plan: Plan, store: StoreReads, first: date, last: date
) -> tuple[dict[tuple[str, str], tuple[str, ...]], dict[tuple[str, str], date]]:
    """The kind of every day in `[first, last]` of every service, and for each service with
    rollups in those days the last such day. Summed a channel at a time: the sums of 90 days
    of every service at once were 200 MB at 10,000 services on a worker's first render.
    Services with the same days share one tuple (and one date): at 100,000 services a list
    of 90 days each was 70 MB, yet most services have the same record."""
    count = (last - first).days + 1
    kinds: dict[tuple[str, str], tuple[str, ...]] = {}
    seen: dict[tuple[str, str], date] = {}
    shared: dict[tuple[str, ...], tuple[str, ...]] = {}
    dates = {index: first + timedelta(days=index) for index in range(count)}
    of_group: dict[int, set[int]] = {}  # services planned alike have the same planned days
    blank: dict[int, tuple[str, ...]] = {}
    of_channel: dict[str, list[ServiceRef]] = {}
    for ref in plan.services:
        of_channel.setdefault(ref.channel.id, []).append(ref)
    for refs in of_channel.values():
        totals = day_totals(store, [ref.key for ref in refs], plan.zone, first, last)
        for ref in refs:
            days = totals.get(ref.key, {})
            alike = plan.alike(ref)
            if alike not in of_group:
                of_group[alike] = planned_down_days(plan, ref, first, last)
            planned = of_group[alike]
            if alike not in blank:  # the days nothing was observed: the plan alone decides
                found = tuple(classify(None, i in planned) for i in range(count))
                blank[alike] = shared.setdefault(found, found)
            if not days:
                kinds[ref.key] = blank[alike]
                continue
            # only the observed days differ from the group's blank days: a window of 90 days
            # with two of them observed was 900,000 days classified at 10,000 services
            patched = list(blank[alike])
            for index, day in days.items():
                if 0 <= index < count:
                    patched[index] = classify(day, index in planned)
            found = tuple(patched)
            kinds[ref.key] = shared.setdefault(found, found)
            seen[ref.key] = dates[max(days)]  # the plan's key: its strings are kept already
    return kinds, seen


def _combine(
    parts: dict[tuple[str, str], tuple[tuple[str, ...], ...]],
    make: Callable[..., tuple[str, ...]],
) -> dict[tuple[str, str], tuple[str, ...]]:
    """`{key: make(*parts[key])}`, made once per distinct parts: services share their tuples
    of days (see `day_kinds`), and so they share what is made of them."""
    made: dict[tuple[int, ...], tuple] = {}  # holds the parts, so their ids are not reused
    out = {}
    for key, args in parts.items():
        ids = tuple(map(id, args))
        found = made.get(ids)
        if found is None:
            found = made[ids] = (args, make(*args))
        out[key] = found[1]
    return out


class DayCache:
    """The kinds of the days that are over, kept between renders by the render worker.

    Summing 90 days of hourly rollups is the render's largest cost (21.6 million hours at
    10,000 services: seconds of SQLite), yet only today's and yesterday's hours can still
    change: the store writes an hour's rollup while the hour runs and flushes what is left
    soon after it ends. So the days before yesterday are worked out once and kept (a tuple of
    kinds per service, one tuple for all services with the same days), and a render sums only
    the last two days. A render for an instant before what is kept (the page rendered for the past)
    starts again from nothing.
    """

    def __init__(self) -> None:
        self.first: date | None = None  # the first day kept
        self.until: date | None = None  # the first day not kept
        self.kinds: dict[tuple[str, str], tuple[str, ...]] = {}
        self.seen: dict[tuple[str, str], date] = {}

    def day_kinds(
        self, plan: Plan, store: StoreReads, first: date, last: date
    ) -> tuple[dict[tuple[str, str], tuple[str, ...]], dict[tuple[str, str], date]]:
        """As `day_kinds`, from what is kept plus the days not yet over."""
        settled = max(first, last - timedelta(days=1))  # days before it are over
        if self.first is None or self.until is None or first < self.first or self.until > settled:
            self.first = self.until = first
            self.kinds = dict.fromkeys((ref.key for ref in plan.services), ())
            self.seen = {}
        if self.until < settled:
            new, seen = day_kinds(plan, store, self.until, settled - timedelta(days=1))
            kept = self.kinds
            kept.update(_combine({k: (kept.get(k, ()), d) for k, d in new.items()}, add))
            self.seen.update(seen)
            self.until = settled
        if first > self.first:  # the window moved on: forget the days that left it
            drop = (first - self.first).days
            self.kinds = _combine({k: (d,) for k, d in self.kinds.items()}, lambda d: d[drop:])
            self.first = first
        fresh, seen = day_kinds(plan, store, settled, last)
        kept = self.kinds
        kinds = _combine({k: (kept.get(k, ()), d) for k, d in fresh.items()}, add)
        return kinds, {**self.seen, **seen}


def load(
    plan: Plan,
    store: StoreReads | None,
    at: datetime,
    incident_limit: int = 500,
    cache: DayCache | None = None,
) -> History:
    """The bars of every service with history, and the incidents of the window, as of `at`.

    Services that were never probed (schedule-only) have no bar. Incidents opened after `at`
    are left out; those resolved after `at` are shown as still open. `cache` keeps the days
    that are over for the next call (the render worker's; see `DayCache`).
    """
    first, last = window(at, plan.zone)
    if store is None:
        return History(first, last)
    if cache is None:
        kinds, seen = day_kinds(plan, store, first, last)
    else:
        kinds, seen = cache.day_kinds(plan, store, first, last)
    bars = []
    made: dict[tuple[str, ...], tuple[tuple[Run, ...], dict[str, int]]] = {}
    for ref in plan.services:
        if seen.get(ref.key, first - timedelta(days=1)) < first and ref.service.probe is None:
            continue
        days = kinds[ref.key]
        if days not in made:  # most services share a record: their runs are worked out once
            counts = Counter(days)
            made[days] = (runs(list(days)), {kind: counts[kind] for kind in KINDS})
        bars.append(Bar(ref, *made[days]))
    since = _midnight(first, plan.zone)
    incidents = tuple(
        _as_of(record, at)
        for record in store.incidents(since, limit=incident_limit)
        if record.opened_at <= at
    )
    return History(first, last, tuple(bars), incidents)


def _as_of(record: IncidentRecord, at: datetime) -> IncidentRecord:
    if record.resolved_at is not None and record.resolved_at > at:
        return IncidentRecord(
            record.id,
            record.channel,
            record.business,
            record.direction,
            record.opened_at,
            None,
            record.reason,
            None,
            record.expected,
            record.period,
        )
    return record

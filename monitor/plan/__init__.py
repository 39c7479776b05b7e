"""What the plan expects of every service at any instant, and when that changes.

Pure functions of the validated plan and an instant, no I/O and no clock of their own: this is
where the product's correctness lives, so it is exact at every boundary (periods include their
start and exclude their end) and tested without sockets.
"""

from __future__ import annotations

import bisect
import calendar
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import cached_property
from zoneinfo import ZoneInfo

from monitor.plan.schema import Channel, Period, PlanConfig, Service

TICK = timedelta(microseconds=1)
#: How far ahead `next_change` looks for a recurring period before it gives up.
HORIZON = timedelta(days=400)
#: How far ahead `in_grace` computes a service's transitions at once.
GRACE_LOOKAHEAD = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Expectation:
    """The state the plan expects, with the rule (index in `expect`) and period that decided it."""

    state: str
    rule: int | None = None
    period: str | None = None


@dataclass(frozen=True, slots=True)
class ServiceRef:
    """A service together with its channel: the unit that is planned, probed and judged."""

    channel: Channel
    service: Service
    #: `(channel id, service id)`: made once, read on every probe, judgement and scrape.
    key: tuple[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.channel.id, self.service.id))


@dataclass(frozen=True, slots=True)
class Span:
    """A stretch of time in which a service's expected *state* holds, whichever rules decide
    it: the freeze handing over to the July batch pause, both `down`, is one span, because a
    citizen is told one pause, not two. `[since, until)`; a bound the plan did not find
    within the horizon it looked is None (held for longer than that)."""

    state: str
    since: datetime | None
    until: datetime | None

    def holds(self, at: datetime) -> bool:
        """Whether `at` lies inside the span (an unknown bound counts as open)."""
        return (self.since is None or self.since <= at) and (self.until is None or at < self.until)


@dataclass(frozen=True, slots=True)
class Transition:
    """The expectation of one service changes `from_state` -> `to_state` at `at`."""

    at: datetime
    channel: str
    service: str
    from_state: str
    to_state: str
    period: str | None


# --- periods ---------------------------------------------------------------------------------


def _in_spans(value: int, spans: Iterable[tuple[int, int]]) -> bool:
    return any(lo <= value <= hi for lo, hi in spans)


def _day_spans(spans: Iterable[tuple[int, int]], local: datetime) -> list[tuple[int, int]]:
    """Resolve negative days of month (-1 is the last day) against the month of `local`."""
    length = calendar.monthrange(local.year, local.month)[1]
    return [
        (lo + length + 1 if lo < 0 else lo, hi + length + 1 if hi < 0 else hi) for lo, hi in spans
    ]


def period_active(period: Period, at: datetime, zone: ZoneInfo) -> bool:
    """Whether `at` lies inside the period: `[start, end)` and every recurring field matching.

    Recurring fields are read on the wall clock of the period's `location` (else the plan's
    zone), as Alertmanager's time intervals are.
    """
    if period.start is not None and at < period.start:
        return False
    if period.end is not None and at >= period.end:
        return False
    if not period.recurring:
        return True
    local = at.astimezone(ZoneInfo(period.location) if period.location else zone)
    if period.weekdays is not None and not _in_spans(local.isoweekday(), period.weekdays):
        return False
    if period.months is not None and not _in_spans(local.month, period.months):
        return False
    if period.years is not None and not _in_spans(local.year, period.years):
        return False
    if period.days_of_month is not None and not _in_spans(
        local.day, _day_spans(period.days_of_month, local)
    ):
        return False
    if period.times is not None:
        seconds = local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6
        if not any(r.start_time * 60 <= seconds < r.end_time * 60 for r in period.times):
            return False
    return True


def _local_instants(day: date, clock: time, zone: ZoneInfo) -> Iterator[datetime]:
    """Both readings (fold 0 and 1) of a wall-clock time, as UTC instants."""
    for fold in (0, 1):
        yield (
            datetime.combine(day, clock, tzinfo=zone).replace(fold=fold).astimezone(ZoneInfo("UTC"))
        )


def _offset_change(day: date, zone: ZoneInfo) -> datetime | None:
    """The instant during `day` when the zone's UTC offset changes (DST), found by bisection."""
    lo = datetime.combine(day, time(), tzinfo=zone).astimezone(ZoneInfo("UTC"))
    hi = lo + timedelta(days=1, hours=2)
    if lo.astimezone(zone).utcoffset() == hi.astimezone(zone).utcoffset():
        return None
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(zone).utcoffset() == lo.astimezone(zone).utcoffset():
            lo = mid
        else:
            hi = mid
    return hi.replace(microsecond=0)


def period_boundaries(
    period: Period, start: datetime, end: datetime, zone: ZoneInfo
) -> list[datetime]:
    """Every instant in `[start, end)` at which the period may begin or stop being active.

    A superset is fine (callers compare the state on both sides); a missing instant is a bug.
    """
    found: set[datetime] = set()
    for bound in (period.start, period.end):
        if bound is not None and start <= bound < end:
            found.add(bound.astimezone(ZoneInfo("UTC")))  # `bound - TICK` must not be wall time
    if period.recurring:
        local_zone = ZoneInfo(period.location) if period.location else zone
        lo = max(start, period.start) if period.start else start
        hi = min(end, period.end) if period.end else end
        if lo < hi:
            clocks = {time()}
            for r in period.times or ():
                for minutes in (r.start_time, r.end_time):
                    if minutes < 24 * 60:
                        clocks.add(time(minutes // 60, minutes % 60))
            day = lo.astimezone(local_zone).date() - timedelta(days=1)
            last = hi.astimezone(local_zone).date() + timedelta(days=1)
            while day <= last:
                for clock in clocks:
                    for instant in _local_instants(day, clock, local_zone):
                        if lo <= instant < hi:
                            found.add(instant)
                change = _offset_change(day, local_zone)
                if change is not None and lo <= change < hi:
                    found.add(change)
                day += timedelta(days=1)
    return sorted(found)


# --- the plan --------------------------------------------------------------------------------


def _group(ref: ServiceRef) -> tuple:
    """What a service's expectations depend on: services alike in this are planned alike."""
    return (ref.service.default, ref.service.expect)


class Plan:
    """The validated plan with its questions: expected state, grace, next change, transitions."""

    def __init__(self, config: PlanConfig) -> None:
        self.config = config
        self.zone = config.monitor.tz
        #: Plan seconds per real second: 1, or a rehearsal's speed. Grace is measured between
        #: the plan's instants but describes the channels (real seconds), so it is scaled here.
        self.pace = config.rehearsal.speed if config.rehearsal is not None else 1.0
        self.grace = config.monitor.grace * self.pace
        self.services = [ServiceRef(c, s) for c in config.channels for s in c.services]
        self._by_key = {ref.key: ref for ref in self.services}
        #: Services with the same default and rules have the same expectation at every instant,
        #: so their transitions are computed once per such group (thousands of services of a
        #: real plan fall into a handful of groups).
        groups: dict[tuple, int] = {}
        self._group_of = {
            ref.key: groups.setdefault(_group(ref), len(groups)) for ref in self.services
        }
        #: Per group: `(start, end, change instants)` computed by `in_grace`, see there.
        self._grace_windows: dict[int, tuple[datetime, datetime, list[datetime]]] = {}
        #: Per group: the last span `span` found with both bounds, see there.
        self._spans: dict[int, Span] = {}

    def service(self, channel: str, service: str) -> ServiceRef:
        """The service with these ids; KeyError when the plan has none."""
        return self._by_key[(channel, service)]

    def find(self, key: tuple[str, str]) -> ServiceRef | None:
        """The service with this `(channel, service)` key; None when the plan has none (a
        reload removed it)."""
        return self._by_key.get(key)

    @cached_property
    def _periods_of(self) -> dict[tuple[str, str], list[Period]]:
        out = {}
        for ref in self.services:
            ids = dict.fromkeys(rule.during for rule in ref.service.expect)
            out[ref.key] = [self.config.periods[i] for i in ids]
        return out

    def interval(self, ref: ServiceRef) -> timedelta:
        """How often the service is observed: its probe's own interval, else the plan's; for
        a push service its `within` (a push or a silence is observed at least that often)."""
        probe, push = ref.service.probe, ref.service.push
        if push is not None:
            return push.within
        return (probe and probe.interval) or self.config.monitor.interval

    def timeout(self, ref: ServiceRef) -> timedelta:
        """How long one probe of the service may take: its own timeout, else the plan's."""
        probe = ref.service.probe
        return (probe and probe.timeout) or self.config.monitor.timeout

    def expected(self, ref: ServiceRef, at: datetime) -> Expectation:
        """The expectation at `at`: the last rule whose period is active wins, else `default`."""
        at = at.astimezone(ZoneInfo("UTC"))  # same-zone datetimes compare on the wall clock
        rules = ref.service.expect
        for index in range(len(rules) - 1, -1, -1):
            rule = rules[index]
            if period_active(self.config.periods[rule.during], at, self.zone):
                return Expectation(rule.state, index, rule.during)
        return Expectation(ref.service.default)

    def transitions(
        self, start: datetime, end: datetime, refs: Iterable[ServiceRef] | None = None
    ) -> list[Transition]:
        """Every change of expected state in `[start, end)`, in time order."""
        start, end = start.astimezone(ZoneInfo("UTC")), end.astimezone(ZoneInfo("UTC"))
        out: list[Transition] = []
        of_group: dict[int, list[Transition]] = {}
        for ref in self.services if refs is None else refs:
            group = self._group_of[ref.key]
            found = of_group.get(group)
            if found is None:
                found = of_group[group] = self._service_transitions(ref, start, end)
            channel, service = ref.key
            out.extend(
                Transition(t.at, channel, service, t.from_state, t.to_state, t.period)
                for t in found
            )
        out.sort(key=lambda t: (t.at, t.channel, t.service))
        return out

    def _service_transitions(
        self, ref: ServiceRef, start: datetime, end: datetime
    ) -> list[Transition]:
        candidates: set[datetime] = set()
        for period in self._periods_of[ref.key]:
            candidates.update(period_boundaries(period, start, end, self.zone))
        if not candidates:
            return []
        out = []
        before = self.expected(ref, min(candidates) - TICK)
        for at in sorted(candidates):
            now = self.expected(ref, at)
            if now.state != before.state:
                period = now.period or before.period
                out.append(
                    Transition(at, ref.channel.id, ref.service.id, before.state, now.state, period)
                )
            before = now
        return out

    def next_change(
        self, ref: ServiceRef, at: datetime, horizon: timedelta = HORIZON
    ) -> datetime | None:
        """The first instant after `at` at which the expected state of `ref` changes."""
        found = self._first_after(ref, at, horizon, lambda t: True)
        return found.at if found is not None else None

    def until(self, ref: ServiceRef, at: datetime, horizon: timedelta = HORIZON) -> datetime | None:
        """Until when the state expected at `at` holds: the end of its span, which is the next
        change of state (a change of rule that keeps the state is no end). None when it holds
        past `horizon`."""
        return self.next_change(ref, at, horizon)

    def since(self, ref: ServiceRef, at: datetime, horizon: timedelta = HORIZON) -> datetime | None:
        """Since when the state expected at `at` has held: the last change of state at or
        before `at`. None when it has held for longer than `horizon` before `at`."""
        at = at.astimezone(ZoneInfo("UTC"))  # absolute, not wall-clock, arithmetic below
        if not self._periods_of[ref.key]:
            return None
        window = timedelta(days=2)
        while True:
            lo = at - min(window, horizon)
            found = self._service_transitions(ref, lo, at + TICK)
            if found:
                return found[-1].at
            if window >= horizon:
                return None
            window *= 4

    def span(self, ref: ServiceRef, at: datetime) -> Span:
        """The span of the state expected at `at`: since when and until when it holds.

        The page asks it for every group of services planned alike on every render, and a
        span answers every instant inside it, so the last one found per group is kept (only
        with both bounds known: an unknown bound depends on the instant asked)."""
        at = at.astimezone(ZoneInfo("UTC"))
        group = self._group_of[ref.key]
        known = self._spans.get(group)
        if known is not None and known.holds(at):
            return known
        found = Span(self.expected(ref, at).state, self.since(ref, at), self.until(ref, at))
        if found.since is not None and found.until is not None:
            self._spans[group] = found
        return found

    def spans(self, ref: ServiceRef, start: datetime, end: datetime) -> list[Span]:
        """The spans that overlap `[start, end)`, in time order: the first reaches back to its
        own beginning and the last forward to its own end (each as far as the horizon)."""
        start, end = start.astimezone(ZoneInfo("UTC")), end.astimezone(ZoneInfo("UTC"))
        if start >= end:
            return []
        first = self.span(ref, start)
        if first.until is None or first.until >= end:
            return [first]
        out = [Span(first.state, first.since, first.until)]
        changes = self._service_transitions(ref, first.until, end)
        for index, change in enumerate(changes):
            following = changes[index + 1].at if index + 1 < len(changes) else None
            out.append(Span(change.to_state, change.at, following))
        if out[-1].until is None:
            last = out[-1]
            out[-1] = Span(last.state, last.since, self.until(ref, last.since))  # type: ignore[arg-type]
        return out

    def next_up(
        self, ref: ServiceRef, at: datetime, horizon: timedelta = HORIZON
    ) -> datetime | None:
        """When `ref` is next expected up: `at` itself when it is up then, else the first
        change to `up` after it (passing over `any`); None when none comes within `horizon`.
        This is the reopening time the page gives citizens."""
        if self.expected(ref, at).state == "up":
            return at
        found = self._first_after(ref, at, horizon, lambda t: t.to_state == "up")
        return found.at if found is not None else None

    def _first_after(
        self,
        ref: ServiceRef,
        at: datetime,
        horizon: timedelta,
        wanted: Callable[[Transition], bool],
    ) -> Transition | None:
        """The first change after `at` (within `horizon`) that `wanted` accepts, looked for in
        windows that grow fourfold, so a near change costs little and a far one is bounded."""
        at = at.astimezone(ZoneInfo("UTC"))  # absolute, not wall-clock, arithmetic below
        window = timedelta(days=2)
        lo = at + TICK
        while True:
            hi = min(at + window, at + horizon)
            for change in self._service_transitions(ref, lo, hi):
                if wanted(change):
                    return change
            if hi >= at + horizon or not self._periods_of[ref.key]:
                return None
            lo, window = hi, window * 4

    def in_grace(self, ref: ServiceRef, at: datetime) -> bool:
        """Whether `at` lies within `grace` after a planned change of this service's state."""
        return self.grace_until(ref, at) is not None

    def grace_until(self, ref: ServiceRef, at: datetime) -> datetime | None:
        """When the grace that `at` lies in ends (the last planned change at or before `at`,
        plus `grace`); None when `at` is in no grace. Metrics and the report cut their time
        here rather than work grace out again.

        Asked for every observation, so the transitions of the service's group are computed
        for a day ahead at once and kept: the changes inside a window do not depend on the
        window they are looked up in, so the answer is the same as computing `[at - grace, at]`
        every time.
        """
        at = at.astimezone(ZoneInfo("UTC"))  # absolute, not wall-clock, arithmetic below
        if self.grace <= timedelta(0):
            return None
        start, end = at - self.grace + TICK, at + TICK
        group = self._group_of[ref.key]
        known = self._grace_windows.get(group)
        if known is None or not (known[0] <= start and end <= known[1]):
            until = max(end, start + GRACE_LOOKAHEAD)
            changes = [t.at for t in self._service_transitions(ref, start, until)]
            known = self._grace_windows[group] = (start, until, changes)
        changes = known[2]
        index = bisect.bisect_left(changes, end) - 1
        if index < 0 or changes[index] < start:
            return None
        return changes[index] + self.grace

    def alike(self, ref: ServiceRef) -> int:
        """A number shared by the services planned alike (same default and rules), whose
        expectations, changes and pauses are the same at every instant: work done for one
        of them holds for all (the page works out 10,000 services through a few such)."""
        return self._group_of[ref.key]

    def next_transition(self, at: datetime) -> datetime | None:
        """The first instant after `at` at which any service's expectation changes."""
        alike = {self._group_of[ref.key]: ref for ref in self.services}
        changes = [self.next_change(ref, at) for ref in alike.values()]
        return min((c for c in changes if c is not None), default=None)


def report(plan: Plan, at: datetime) -> dict:
    """The `plan` JSON contract: every service's expectation at `at`, with grace and next change,
    how it is observed (`observed_by`) and the unset variables that keep it from being observed
    (`not_configured`, empty when it is configured or schedule-only).

    Instants are written in the plan's time zone with their offset.
    """
    services = []
    for ref in plan.services:
        expectation = plan.expected(ref, at)
        change = plan.next_change(ref, at)
        services.append(
            {
                "channel": ref.channel.id,
                "channel_name": ref.channel.name,
                "service": ref.service.id,
                "service_name": ref.service.name,
                "expected": expectation.state,
                "rule": expectation.rule,
                "period": expectation.period,
                "in_grace": plan.in_grace(ref, at),
                "next_change": change.astimezone(plan.zone).isoformat() if change else None,
                "observed_by": ref.service.observed_by,
                "not_configured": list(ref.service.unset),
            }
        )
    return {
        "at": at.astimezone(plan.zone).isoformat(),
        "timezone": plan.zone.key,
        "services": services,
    }

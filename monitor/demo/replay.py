"""Replay a plan against the simulated channels on a simulated clock.

APScheduler's timers follow the wall clock, so the replay is discrete-event: it moves the
replay clock itself to the next probe round, in large steps through quiet stretches and at the
production cadence for a few hours around every planned transition and scripted fault, so
thresholds and grace behave as they do in production. Every round goes through the same
probe -> judge -> store -> listeners path as `run`.

At each step the replay probes the services whose interval has passed on the replay clock (or
whose plan changed since their last probe), lets the offline channels' systems push, and asks
the push receiver which pushes are overdue at that instant. A browser page load costs about a
second here, against a millisecond for a GET, so browser services are loaded at the start, at
each planned change of their own and at the end (`Cadence.browser` gives them an interval
instead).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from monitor.clock import ReplayClock
from monitor.pipeline import Pipeline, Result
from monitor.plan import TICK, Plan, ServiceRef, Transition
from monitor.receiver import PushReceiver
from monitor.report import plan_pieces
from monitor.store import IncidentRecord

from .simulator import Fault, Pushers

#: A service's (channel id, service id).
Key = tuple[str, str]

DIRECTION_WORDS = {
    "unexpected_up": "应停未停 up while it should be down",
    "unexpected_down": "应开未开 down while it should be up",
}


@dataclass(frozen=True)
class Cadence:
    """How densely the replay samples time."""

    quiet: timedelta = timedelta(hours=2)
    dense: timedelta = timedelta(minutes=5)
    before: timedelta = timedelta(minutes=15)
    after: timedelta = timedelta(minutes=90)
    #: How often browser pages are loaded between their planned changes (None: only at the
    #: start, at those changes and at the end).
    browser: timedelta | None = None


def instants(
    start: datetime, end: datetime, marks: Iterable[datetime], cadence: Cadence
) -> list[datetime]:
    """Probe instants in `[start, end)`: every `quiet` step, plus every `dense` step from
    `before` ahead of each mark to `after` past it (marks themselves included)."""
    found: set[datetime] = set()
    at = start
    while at < end:
        found.add(at)
        at += cadence.quiet
    for mark in marks:
        at = mark - cadence.before
        while at <= mark + cadence.after:
            if start <= at < end:
                found.add(at)
            at += cadence.dense
    return sorted(found)


@dataclass
class ServiceTally:
    """What the replay itself saw of one service (the tests hold the report to it)."""

    observed_down: timedelta = timedelta(0)
    incidents: list[IncidentRecord] = field(default_factory=list)


@dataclass
class Replay:
    """Drives a pipeline through `[start, end)` on a replay clock."""

    plan: Plan
    pipeline: Pipeline
    clock: ReplayClock
    start: datetime
    end: datetime
    faults: list[Fault]
    cadence: Cadence = field(default_factory=Cadence)
    say: Callable[[str], None] = print
    #: Told every instant the clock moves to (the simulator in its own process follows it).
    follow: Callable[[datetime], None] | None = None
    tallies: dict[tuple[str, str], ServiceTally] = field(
        default_factory=lambda: defaultdict(ServiceTally)
    )
    incidents: list[IncidentRecord] = field(default_factory=list)
    stopped: bool = False
    #: The offline channels' systems, pushing at each step (none: no push services).
    pushers: Pushers | None = None
    #: The receiver asked at each step which pushes are overdue.
    push: PushReceiver | None = None
    #: Observations that saw something (serving or not), by kind of observation.
    seen_by: Counter[str] = field(default_factory=Counter)
    #: The kinds of probe to make (None: all); the others are never probed (the demo's
    #: simulator serves no DNS, so those services stay unknown).
    served: frozenset[str] | None = None

    def every(self, ref: ServiceRef) -> timedelta | None:
        """How often the replay probes `ref` on its clock: its interval; for browser pages
        `cadence.browser`. None: only at the start, its planned changes and the end."""
        if ref.service.observed_by == "browser":
            return self.cadence.browser
        return self.plan.interval(ref)

    def due(
        self, at: datetime, last: dict[Key, datetime], changed: set[Key], final: bool
    ) -> list[ServiceRef]:
        """The probed services to probe at `at`."""
        found = []
        for ref in self.pipeline.probed:
            if self.served is not None and ref.service.observed_by not in self.served:
                continue
            since = last.get(ref.key)
            every = self.every(ref)
            if (
                since is None
                or final
                or ref.key in changed
                or (every is not None and at - since >= every)
            ):
                found.append(ref)
        return found

    def local(self, at: datetime) -> str:
        return at.astimezone(self.plan.zone).strftime("%m-%d %H:%M")

    async def run(self) -> None:
        """Replay the whole window (or until `stopped` is set)."""
        marks = [t.at for t in self.plan.transitions(self.start, self.end)]
        for fault in self.faults:
            marks.extend([fault.start, fault.end])
        steps = instants(self.start, self.end, marks, self.cadence)
        previous = self.start - TICK
        last_serving: dict[tuple[str, str], tuple[datetime, bool]] = {}
        probed: dict[Key, datetime] = {}
        changed: set[Key] = set()
        for index, at in enumerate(steps):
            if self.stopped:
                break
            changes = self.plan.transitions(previous + TICK, at + TICK)
            self.clock.set(at)
            if self.follow is not None:
                self.follow(at)
            if changes:
                self._tell_transitions(changes)
                changed.update((t.channel, t.service) for t in changes)
                for when in sorted({t.at for t in changes}):
                    await self.pipeline.planned_transition(when)
            refs = self.due(at, probed, changed, index == len(steps) - 1)
            results = await self.pipeline.probe_all(refs) if refs else []
            for ref in refs:
                probed[ref.key] = at
                changed.discard(ref.key)
            if self.pushers is not None:
                results += await self.pushers.push(at)
            if self.push is not None:
                results += await self.push.overdue(at)
            for result in results:
                self._record(at, result, last_serving)
            previous = at
        for key, (seen_at, serving) in last_serving.items():
            if not serving:
                self.tallies[key].observed_down += self.end - seen_at
        await self.pipeline.flush()

    def _record(
        self,
        at: datetime,
        result: Result,
        last_serving: dict[tuple[str, str], tuple[datetime, bool]],
    ) -> None:
        """Tally what was seen (an observation that could not tell counts for nothing) and
        tell the incidents it opened or resolved."""
        serving = result.observation.serving
        if serving is not None:
            key = result.ref.key
            seen = last_serving.get(key)
            if seen is not None and not seen[1]:
                self.tallies[key].observed_down += at - seen[0]
            last_serving[key] = (at, serving)
            self.seen_by[result.ref.service.observed_by] += 1
        for record in result.incidents:
            self._tell_incident(result.ref, record)

    def _tell_transitions(self, changes: list[Transition]) -> None:
        groups: dict[tuple[datetime, str, str, str | None], list[Transition]] = defaultdict(list)
        for change in changes:
            groups[(change.at, change.from_state, change.to_state, change.period)].append(change)
        for (at, before, after, period), items in sorted(groups.items(), key=lambda g: g[0][0]):
            title = self.plan.config.periods[period].title if period else ""
            self.say(
                f"{self.local(at)}  plan   {len(items):3d} service(s) {before} -> {after}"
                + (f"  [{period}: {title}]" if period else "")
            )

    def _tell_incident(self, ref: ServiceRef, record: IncidentRecord) -> None:
        word = DIRECTION_WORDS[record.direction]
        name = f"[{ref.service.observed_by}] {ref.channel.name} / {ref.service.name}"
        if record.resolved_at is None:
            self.incidents.append(record)
            self.tallies[ref.key].incidents.append(record)
            opened = self.local(record.opened_at)
            self.say(f"{opened}  OPEN   #{record.id} {name}: {word} ({record.reason})")
        else:
            length = record.resolved_at - record.opened_at
            self.say(
                f"{self.local(record.resolved_at)}  CLOSE  #{record.id} {name}: {record.direction} "
                f"resolved after {_hours(length)}"
            )


def planned_downtime(plan: Plan, ref: ServiceRef, start: datetime, end: datetime) -> timedelta:
    """How long the plan expects `ref` down within `[start, end)` (as the report counts it)."""
    pieces = plan_pieces(plan, ref, start, end)
    return sum((p.end - p.start for p in pieces if p.state == "down"), timedelta(0))


def _hours(value: timedelta) -> str:
    minutes = round(value.total_seconds() / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"

"""What one change of the plan changes, service by service, the parts that hold the plan, and
how the last reload went (`ReloadStatus`, which /metrics and /healthz read).

A reload (monitor/reload.py) works a `PlanChange` out once; the pipeline, the scheduler, the
push receiver and every downstream part act on it (`UsesPlan.use_plan`). It lives below all of
them, beside the plan, so none of them imports the reload's file watching or the daemon.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from monitor.plan import Plan, ServiceRef
from monitor.plan.schema import Period

#: The resolve reason of an incident whose service a reload removed (in monitor/reasons.py).
REMOVED = "removed from the plan"

Key = tuple[str, str]
#: How far ahead a reload's log looks for services the change makes expected otherwise: an
#: operator who moves the freeze's end wants to see it, though nothing changes "now".
AHEAD = timedelta(days=7)
#: How many of those services a log line names.
_NAMED = 5


@dataclass(frozen=True, slots=True)
class PlanChange:
    """What one reload changes, service by service (keys are `(channel, service)` ids)."""

    old: Plan
    new: Plan
    at: datetime
    added: frozenset[Key]
    removed: frozenset[Key]
    #: Kept services whose own settings (probe, push, rules, names) differ.
    changed: frozenset[Key]
    #: Kept services probed at another interval now.
    rescheduled: frozenset[Key]
    #: Kept services the new plan expects something else of at `at`.
    expecting: frozenset[Key]
    #: Kept services the new plan expects something else of, or changes at other instants,
    #: within `AHEAD` of `at` (those of `expecting` among them).
    expecting_soon: frozenset[Key] = frozenset()
    #: Periods of both plans whose definition changed: `(id, old, new)`.
    moved: tuple[tuple[str, Period, Period], ...] = ()

    @classmethod
    def between(cls, old: Plan, new: Plan, at: datetime) -> PlanChange:
        """Worked out service by service (0.6 s for 10,000 services here: `PlanWatch` does
        it on a thread, so the event loop goes on probing meanwhile)."""
        moved = [
            (pid, was, new.config.periods[pid])
            for pid, was in old.config.periods.items()
            if pid in new.config.periods and _bounds(was) != _bounds(new.config.periods[pid])
        ]
        added, kept = [], []
        for ref in new.services:
            key = ref.key
            was = old.find(key)
            if was is None:
                added.append(key)
            else:
                kept.append((key, was, ref))
        return cls(
            old=old,
            new=new,
            at=at,
            added=frozenset(added),
            removed=frozenset(r.key for r in old.services if new.find(r.key) is None),
            changed=frozenset(
                k
                for k, was, now in kept
                if was.service != now.service or _names(was.channel) != _names(now.channel)
            ),
            rescheduled=frozenset(
                k
                for k, was, now in kept
                if now.service.probe is not None and old.interval(was) != new.interval(now)
            ),
            expecting=frozenset(
                k
                for k, was, now in kept
                if old.expected(was, at) != new.expected(now, at)
                or old.in_grace(was, at) != new.in_grace(now, at)
            ),
            expecting_soon=_expecting_soon(old, new, kept, moved, at),
            moved=tuple(moved),
        )

    @property
    def redo(self) -> frozenset[Key]:
        """Services to observe and judge again at once (one only probed at another interval
        waits for its slot in the new rhythm: a plan that changes the default interval must
        not probe every service in the same second)."""
        return self.added | self.changed | self.expecting

    def summary(self) -> str:
        """One log line: the counts, then each period whose span moved, old and new bounds."""
        zone = self.new.zone
        line = (
            f"{len(self.added)} added, {len(self.removed)} removed, {len(self.changed)} "
            f"changed, {len(self.expecting)} now expected otherwise, "
            f"{len(self.expecting_soon)} expected otherwise within {AHEAD.days} days, "
            f"{len(self.rescheduled)} at another interval"
        )
        if self.expecting_soon:
            keys = sorted(self.expecting_soon)
            named = ", ".join(f"{c}/{s}" for c, s in keys[:_NAMED])
            line += f" ({named}{', ...' if len(keys) > _NAMED else ''})"
        for pid, was, now in self.moved:
            line += f"; period {pid} moved: {_span(was, zone)} -> {_span(now, zone)}"
        return line


def _bounds(period: Period) -> tuple:
    """What places a period in time (its titles aside)."""
    return period.model_dump(exclude={"title", "title_en"})


def _span(period: Period, zone: object) -> str:
    """A period's bounds for a log line: `2026-12-18 17:00 .. 2026-12-21 08:00`, or
    `recurring` for one without both."""

    def at(value: datetime | None) -> str:
        return "..." if value is None else value.astimezone(zone).strftime("%Y-%m-%d %H:%M")  # type: ignore[arg-type]

    text = f"{at(period.start)} .. {at(period.end)}"
    return f"{text} (recurring)" if period.recurring else text


def _expecting_soon(
    old: Plan,
    new: Plan,
    kept: list[tuple[Key, ServiceRef, ServiceRef]],
    moved: list[tuple[str, Period, Period]],
    at: datetime,
) -> frozenset[Key]:
    """Kept services whose expectations within `AHEAD` of `at` differ between the plans:
    their state at `at`, or the instants and states of their changes. Only services whose
    rules differ or name a period that moved can differ, so only those are walked."""
    moved_ids = {pid for pid, _, _ in moved}
    end = at + AHEAD
    found = []
    for key, was, now in kept:
        periods = {rule.during for rule in (*was.service.expect, *now.service.expect)}
        if was.service.expect == now.service.expect and not periods & moved_ids:
            continue
        if _ahead(old, was, at, end) != _ahead(new, now, at, end):
            found.append(key)
    return frozenset(found)


def _ahead(plan: Plan, ref: ServiceRef, at: datetime, end: datetime) -> tuple:
    changes = plan._service_transitions(ref, at, end)
    return plan.expected(ref, at).state, tuple((t.at, t.to_state) for t in changes)


def _names(channel: object) -> tuple:
    """What of a channel its services show (labels, page): not its list of services."""
    return tuple(getattr(channel, name) for name in ("name", "name_en", "kind", "group"))


class UsesPlan(Protocol):
    """A part that holds the plan: the daemon swaps the new one in through this, all parts in
    one step of the event loop, so no observation meets half a swap."""

    def use_plan(self, change: PlanChange) -> None: ...


@dataclass
class ReloadStatus:
    """The outcome of the last reload, for /metrics and /healthz. The plan read at start
    counts as the first good load (as Prometheus counts its own configuration)."""

    successful: bool = True
    last_success: float = field(default_factory=time.time)
    problems: int = 0
    reloads: int = 0
    failures: int = 0

    def succeeded(self) -> None:
        self.successful, self.last_success, self.problems = True, time.time(), 0
        self.reloads += 1

    def failed(self, problems: int) -> None:
        self.successful, self.problems = False, problems
        self.failures += 1

    def health(self) -> dict:
        """The `config` part of /healthz."""
        body: dict = {
            "last_reload_successful": self.successful,
            "last_reload_success_timestamp_seconds": round(self.last_success, 3),
            "reloads": self.reloads,
            "failed_reloads": self.failures,
        }
        if not self.successful:
            body["problems"] = self.problems
            body["message"] = (
                "the edited plan has problems and was not applied; the previous plan is still "
                "running (the log lists the problems) / 修改后的计划有错误，未生效，"
                "仍按原计划监测（错误见日志）"
            )
        return body

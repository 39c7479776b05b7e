"""What one change of the plan changes, service by service, and the parts that hold the plan.

A reload (monitor/reload.py) works a `PlanChange` out once; the pipeline, the scheduler, the
push receiver and every downstream part act on it (`UsesPlan.use_plan`). It lives below all of
them, beside the plan, so none of them imports the reload's file watching or the daemon.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from monitor.plan import Plan

#: The resolve reason of an incident whose service a reload removed (in monitor/reasons.py).
REMOVED = "removed from the plan"

Key = tuple[str, str]


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

    @classmethod
    def between(cls, old: Plan, new: Plan, at: datetime) -> PlanChange:
        """Worked out service by service (0.6 s for 10,000 services here: `PlanWatch` does
        it on a thread, so the event loop goes on probing meanwhile)."""
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
        )

    @property
    def redo(self) -> frozenset[Key]:
        """Services to observe and judge again at once (one only probed at another interval
        waits for its slot in the new rhythm: a plan that changes the default interval must
        not probe every service in the same second)."""
        return self.added | self.changed | self.expecting

    def summary(self) -> str:
        return (
            f"{len(self.added)} added, {len(self.removed)} removed, {len(self.changed)} "
            f"changed, {len(self.expecting)} now expected otherwise, {len(self.rescheduled)} "
            "at another interval"
        )


def _names(channel: object) -> tuple:
    """What of a channel its services show (labels, page): not its list of services."""
    return tuple(getattr(channel, name) for name in ("name", "name_en", "kind", "group"))


class UsesPlan(Protocol):
    """A part that holds the plan: the daemon swaps the new one in through this, all parts in
    one step of the event loop, so no observation meets half a swap."""

    def use_plan(self, change: PlanChange) -> None: ...

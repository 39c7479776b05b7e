"""Reload: a running monitor takes up an edited plan without a restart.

`run` looks at the plan file every two seconds (and at once on SIGHUP). A changed file is
read and validated as `channel-monitor validate` does, on a thread (a large plan takes a
moment), together with the notices file against it (a plan that drops a service a notice
names would leave that notice dangling). A plan with problems is not applied: the running
plan stays, the problems are logged line by line as `validate` prints them, and the
`channel_monitor_config_last_reload_successful` gauge and `/healthz` say so until a good edit.

A good plan is handed to `Daemon.apply_plan`, the one place that swaps it into every part
(DESIGN.md, composition root). What a reload does to each service is worked out once, in a
`PlanChange` (monitor/plan/change.py): which services were added, removed, changed (their
settings or probe), which now expect something else or are probed at another interval. The
parts act on that:

- kept services keep their state, streak and open incident (the same incident id);
- removed services stop; an open incident resolves with the reason `removed from the plan`,
  and its alert resolves through the outbox like any other;
- added, changed and newly-expecting services are probed at once (as at a planned
  transition), so verdicts, metrics and the page reflect the new plan from that instant;
- interval groups are rescheduled, and the next planned transition is the new plan's.

`[[alerts]]` sinks are built at start (each has its delivery task and outbox rows under its
name), and so is the browser (`[monitor] chromium`): an edit of either is reported in the log
and takes effect at the next restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from monitor.file_watch import POLL, PolledFile
from monitor.part import Part
from monitor.plan import Plan
from monitor.plan.change import PlanChange, ReloadStatus
from monitor.plan.errors import ConfigError
from monitor.plan.load import load_config

if TYPE_CHECKING:
    from monitor.clock import Clock
    from monitor.part import PlanSource

#: Swaps a validated plan into every part (`Daemon.apply_plan`) and says what it changed.
Apply = Callable[[Plan, PlanChange], Awaitable[PlanChange]]
#: Raises ConfigError when something held beside the plan (the notices) would not hold.
Check = Callable[[Plan], Awaitable[None]]

log = logging.getLogger(__name__)


def read_plan(path: Path, alerts: bool) -> Plan:
    """Read and validate a plan file (ConfigError lists every problem)."""
    return Plan(load_config(path, alerts=alerts))


class PlanWatch(PolledFile):
    """Watches the plan file of a running monitor and reloads it when it changes."""

    name = "plan"

    def __init__(
        self,
        path: Path,
        plan: PlanSource,
        clock: Clock,
        apply: Apply,
        status: ReloadStatus,
        alerts: bool = True,
        check_also: Check | None = None,
        poll: float = POLL,
    ) -> None:
        super().__init__(path, poll)
        self.plan = plan
        self.clock = clock
        self.apply = apply
        self.status = status
        #: False for `run --no-alerts`: `[[alerts]]` are left out of the plan read.
        self.alerts = alerts
        self.check_also = check_also

    async def check(self) -> None:
        if self.changed():
            await self.reload()

    async def reload(self) -> bool:
        """Validate the file (and the notices against it); apply it when it is good."""
        status = self.status
        try:
            plan = await asyncio.to_thread(read_plan, self.path, self.alerts)
            if self.check_also is not None:
                await self.check_also(plan)
        except ConfigError as exc:
            status.failed(len(exc.problems))
            count = len(exc.problems)
            log.error(
                "plan: %s not applied, the running plan stays / 计划未生效，仍按原计划监测:\n%s\n"
                "%d problem%s found.",
                self.path,
                "\n".join(exc.problems),
                count,
                "s" if count != 1 else "",
            )
            return False
        at = self.clock.now()
        change = await asyncio.to_thread(PlanChange.between, self.plan(), plan, at)
        change = await self.apply(plan, change)
        status.succeeded()
        log.info("plan: %s reloaded: %s", self.path, change.summary())
        return True


def build(
    path: Path | None,
    plan: PlanSource,
    clock: Clock,
    apply: Apply,
    status: ReloadStatus,
    alerts: bool,
    check_also: Check | None,
) -> tuple[PlanWatch | None, Part]:
    """Watch the plan file from the web server's start to its stop; no watch (and an empty
    part) without a plan file (the demo)."""
    if path is None:
        return None, Part()
    watch = PlanWatch(Path(path), plan, clock, apply, status, alerts, check_also)
    return watch, Part(on_startup=(watch.on_startup,), on_cleanup=(watch.on_cleanup,))

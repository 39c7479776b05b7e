"""Puts the pipeline on APScheduler 3's AsyncIOScheduler for `run`.

One APScheduler job per distinct probe interval; each run spreads its services evenly over the
interval with the event loop's own timers, so 10,000 services do not fire in the same
millisecond and APScheduler's per-job cost is paid once per interval, not once per probe
(DESIGN.md). A one-shot job fires at every planned transition, so verdicts, metrics and the page
change at the instant the plan does, and the affected services are probed right away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
from collections import defaultdict, deque
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from monitor.pipeline import Pipeline
from monitor.plan import ServiceRef

if TYPE_CHECKING:
    from monitor.reload import PlanChange

log = logging.getLogger(__name__)

#: The id of an interval's job starts with this (then the interval in seconds).
ROUND = "probe-"
FLUSH_EVERY = timedelta(seconds=1)
PRUNE_EVERY = timedelta(hours=1)


class Scheduler:
    """Runs the pipeline on the wall clock until `stop`."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.aps = AsyncIOScheduler(timezone=UTC)
        self.tasks: set[asyncio.Task] = set()
        self.handles: dict[tuple[str, str], asyncio.TimerHandle] = {}
        #: Recent lags (seconds) between when a probe was due and when it started, read on
        #: `time.monotonic` (uvloop's `loop.time()` counts whole milliseconds).
        self.lags: deque[float] = deque(maxlen=10_000)
        self.last_tick: float | None = None
        self._stopped = False

    def lag_p99(self) -> float:
        """The 99th percentile (nearest rank) of the recent lags, seconds; 0 before any."""
        lags = sorted(self.lags)
        return lags[max(0, math.ceil(0.99 * len(lags)) - 1)] if lags else 0.0

    def groups(self) -> dict[timedelta, list[ServiceRef]]:
        """Probed services grouped by their interval."""
        out: dict[timedelta, list[ServiceRef]] = defaultdict(list)
        for ref in self.pipeline.probed:
            out[self.pipeline.interval(ref)].append(ref)
        return dict(out)

    def start(self) -> None:
        """Add the jobs and start; the first round of every interval begins now."""
        now = datetime.now(UTC)
        for interval, refs in sorted(self.groups().items()):
            self._add_round(interval, refs, now)
        self.aps.add_job(
            self._flush,
            IntervalTrigger(seconds=FLUSH_EVERY.total_seconds(), timezone=UTC),
            max_instances=1,
            coalesce=True,
            id="flush",
        )
        self.aps.add_job(
            self._prune,
            IntervalTrigger(seconds=PRUNE_EVERY.total_seconds(), timezone=UTC),
            next_run_time=now,
            max_instances=1,
            coalesce=True,
            id="prune",
        )
        self._schedule_after(now)
        self.aps.start()

    def _add_round(self, interval: timedelta, refs: list[ServiceRef], now: datetime) -> None:
        self.aps.add_job(
            self._round,
            IntervalTrigger(seconds=interval.total_seconds(), timezone=UTC),
            args=[refs, interval],
            next_run_time=now,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, int(interval.total_seconds())),
            id=f"{ROUND}{interval.total_seconds()}",
        )

    def use_plan(self, change: PlanChange) -> None:
        """Reschedule for a reloaded plan (the pipeline has it already). An interval kept
        keeps its rhythm, with the new services in its next round; a new interval starts its
        first round now; an interval no service has any more stops. Removed services and
        services moved to another interval lose their slot in the running round, and the next
        planned transition is the new plan's. Then whatever the reload changed is probed at
        once, as at a planned transition (never twice at a time: `_launch` checks)."""
        if self._stopped or not self.aps.running:
            return
        now = datetime.now(UTC)
        jobs = {job.id for job in self.aps.get_jobs() if job.id.startswith(ROUND)}
        wanted = set()
        for interval, refs in sorted(self.groups().items()):
            job = f"{ROUND}{interval.total_seconds()}"
            wanted.add(job)
            if job in jobs:
                self.aps.modify_job(job, args=[refs, interval])
            else:
                self._add_round(interval, refs, now)
        for job in jobs - wanted:
            self.aps.remove_job(job)
        for key in change.removed | change.rescheduled:
            handle = self.handles.pop(key, None)
            if handle is not None:
                handle.cancel()
        self._schedule_after(change.at)
        due = time.monotonic()
        for ref in self.pipeline.probed:
            if ref.key in change.redo:
                self._launch(ref, due)

    async def _round(self, refs: list[ServiceRef], interval: timedelta) -> None:
        """Start one round: each service gets its own slot within the interval."""
        if self._stopped:
            return  # a run APScheduler submitted just before `stop`: start nothing new
        loop = asyncio.get_running_loop()
        base, started = loop.time(), time.monotonic()
        self.last_tick = base
        spacing = interval.total_seconds() / max(1, len(refs))
        for index, ref in enumerate(refs):
            offset = index * spacing
            self.handles[ref.key] = loop.call_at(base + offset, self._launch, ref, started + offset)

    def _launch(self, ref: ServiceRef, due: float) -> None:
        """Start a probe of `ref`, due at `due` (`time.monotonic`)."""
        if self._stopped:
            return
        self.lags.append(time.monotonic() - due)
        loop = asyncio.get_running_loop()
        if ref.key in self.pipeline.running:
            return  # the previous probe of this service still runs: never two at once
        task = loop.create_task(self.pipeline.probe(ref))
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("probe task failed", exc_info=task.exception())

    async def _transition(self, at: datetime) -> None:
        """A planned transition is due: tell listeners, probe the services it concerns."""
        if self._stopped:
            return
        await self.pipeline.planned_transition(at)
        changed = {
            (t.channel, t.service)
            for t in self.pipeline.plan.transitions(at, at + timedelta(microseconds=1))
        }
        refs = [ref for ref in self.pipeline.probed if ref.key in changed]
        for ref in refs:
            self._launch(ref, time.monotonic())
        # schedule from just after this one, so an early wake-up cannot re-fire it
        self._schedule_after(at)

    def _schedule_after(self, at: datetime) -> None:
        upcoming = self.pipeline.plan.next_transition(max(at, self.pipeline.clock.now()))
        if upcoming is not None:
            self.aps.add_job(
                self._transition,
                DateTrigger(run_date=upcoming, timezone=UTC),
                args=[upcoming],
                id="transition",
                replace_existing=True,
                misfire_grace_time=None,
            )

    async def _flush(self) -> None:
        """The periodic write. A shutdown that cancels it mid-write is not an error: the write
        itself runs on (shielded) and `stop` flushes once more after it. A failed write (a full
        disk) is the store's to report (once, in the log, /healthz and the metrics); the
        observations wait for the next attempt."""
        with contextlib.suppress(asyncio.CancelledError, sqlite3.Error):
            await asyncio.shield(self.pipeline.flush())

    async def _prune(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # a full disk: pruning waits for the next hour
            await self.pipeline.store.call(self.pipeline.store.prune, self.pipeline.clock.now())

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop scheduling, let running probes finish (bounded), write everything."""
        self._stopped = True
        if self.aps.running:
            self.aps.shutdown(wait=False)
        for handle in self.handles.values():
            handle.cancel()
        self.handles.clear()
        if self.tasks:
            _, pending = await asyncio.wait(list(self.tasks), timeout=timeout)
            for task in pending:
                task.cancel()
        with contextlib.suppress(sqlite3.Error):  # the store's close says what could not be kept
            await self.pipeline.flush()

"""Puts the pipeline on APScheduler 3's AsyncIOScheduler for `run`.

One APScheduler job per distinct probe interval; each run starts a round that spreads its
services evenly over the interval, so 10,000 services do not fire in the same millisecond and
APScheduler's per-job cost is paid once per interval, not once per probe (DESIGN.md). One pacer
task walks the running rounds and starts each service at its slot, those due within a tick
together: no timer object per service (at 100,000 services a round of timers was 100,000
objects made at once, each living a minute for the full garbage collections to walk). A
one-shot job fires at every planned transition, so verdicts, metrics and the page change at the
instant the plan does, and the affected services are probed right away.

Probes are run by a pool of worker tasks, `WORKERS_PER_SLOT` for each slot of the
pipeline's concurrency, fed from one queue: a due probe waiting for a worker is an entry in
that queue, not a task of its own (a task, its coroutine, context and future are about ten
objects for every full collection to walk; 10,000 waiting probes made those collections
several times longer). A worker holds its probe through judging, which may wait for the store;
the slot is free by then, and the other workers keep the slots busy. Probes of a kind that
limits itself (the browser's pages) run as their own tasks and wait at their own limit, so
slow pages never hold the workers. A probe of a hung target gives its slot back after a while
(`monitor/net/slots.py`) and a stand-in worker joins the pool while it runs on, so hung targets
hold neither the slots nor the workers. When `MAX_WAITING` probes (not counting those of hung
targets, which have their own bound) are already waiting or running,
the monitor is behind and a probe that falls due is skipped (counted in `skipped`, `/healthz`
and the metrics) rather than queued without bound: its service is probed at its next slot, and
its verdict goes stale if that keeps happening, which is the truth. The lag of a probe is
counted when a worker takes it up, so time spent waiting for a worker is lag too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from monitor.clock import real_instant
from monitor.gc_watch import settle
from monitor.pipeline import Pipeline
from monitor.plan import ServiceRef
from monitor.store import SQLiteError

if TYPE_CHECKING:
    from monitor.plan.change import PlanChange

log = logging.getLogger(__name__)

#: The id of an interval's job starts with this (then the interval in seconds).
ROUND = "probe-"
FLUSH_EVERY = timedelta(seconds=1)
#: Probes waiting for a slot (or running) beyond which a due probe is skipped.
MAX_WAITING = 10_000
#: Workers per slot of the pipeline's concurrency: a worker holds its probe through judging,
#: which can wait for the store (an incident's transition is written before it is acted on),
#: while the slot (the network part) is free again; more workers than slots keep the slots busy.
WORKERS_PER_SLOT = 2
#: At most this many probes are started in one turn of the event loop (a round that is behind,
#: or a transition that concerns every service, starts in bursts, not in one long turn).
BURST = 200
#: The pacer wakes about once per GROUP due services, every NAP to TICK seconds, and starts
#: every service then due together. A wake per slot (every 5 ms at 200 probes a second) cost a
#: turn of the loop, a sleep and a context switch per probe, and the probes' connections then
#: completed one per turn too; started a group at a time, they are handled a few per turn, for
#: about half the CPU per probe at 200 a second (bench/RESULTS.md section 4). At 100,000
#: services a minute a fixed 50 ms tick made groups of 83, whose peaks held 15-35 MiB more. A
#: probe starts at most a wake after its slot (its lag counts it), as does the first of a round
#: that begins while the pacer sleeps.
GROUP = 10
NAP = 0.005
TICK = 0.05
PRUNE_EVERY = timedelta(hours=1)
#: The share of probed services judged at least once before their state is frozen, and the
#: rounds waited for it at most.
SETTLED = 0.99
SETTLE_TRIES = 3


@dataclass(slots=True)
class _Round:
    """One round of an interval: `refs[i]` is due at `base + i * spacing` (the loop's clock),
    which is `started + i * spacing` on `time.monotonic`; `next` is the first not started."""

    refs: list[ServiceRef]
    base: float
    started: float
    spacing: float
    next: int = 0
    #: Services a reload removed or moved to another interval since the round began.
    skip: set[tuple[str, str]] = field(default_factory=set)


class Scheduler:
    """Runs the pipeline on the wall clock until `stop`."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.aps = AsyncIOScheduler(timezone=UTC)
        #: Probes running as tasks of their own (kinds that limit themselves, like the browser).
        self.tasks: set[asyncio.Task] = set()
        #: Due probes waiting for a worker: (service, when it was due on `time.monotonic`).
        self.queue: asyncio.Queue[tuple[ServiceRef, float] | None] = asyncio.Queue()
        #: The services in `queue` (a service is never queued twice).
        self.queued: set[tuple[str, str]] = set()
        self.workers: list[asyncio.Task] = []
        #: Workers kept when no probe is lent (`_start_workers`); a loan adds one more.
        self.base_workers = 0
        pipeline.slots.on_lend = self._stand_in
        #: Workers running a probe now.
        self.busy = 0
        #: The running round of each interval.
        self.rounds: dict[timedelta, _Round] = {}
        #: Rounds a newer one replaced before all their services were started (`_round`).
        self.draining: list[_Round] = []
        #: Probes not started because MAX_WAITING were waiting (the monitor is behind).
        self.skipped = 0
        self._pacer: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._settling: asyncio.TimerHandle | None = None
        #: Recent lags (seconds) between when a probe was due and when it started, read on
        #: `time.monotonic` (uvloop's `loop.time()` counts whole milliseconds).
        self.lags: deque[float] = deque(maxlen=10_000)
        self.last_tick: float | None = None
        self._stopped = False

    def pending(self) -> int:
        """Probes started or waiting for a worker."""
        return len(self.tasks) + len(self.queued) + self.busy

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
        self._start_workers()
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
        self._settle_after_a_round()

    def _start_workers(self) -> None:
        """The workers, once (a round started without `start`, as a benchmark does, too)."""
        if self.workers or self._stopped:
            return
        self.base_workers = max(1, self.pipeline.concurrency * WORKERS_PER_SLOT)
        for _ in range(self.base_workers):
            self._add_worker()

    def _add_worker(self) -> None:
        number = len(self.workers)
        self.workers.append(
            asyncio.get_running_loop().create_task(self._work(), name=f"probe-worker-{number}")
        )

    def _stand_in(self) -> None:
        """A probe was lent (`monitor/net/slots.py`): its worker stays with it, so another takes
        its place; the pool shrinks back as lent probes end (`_work`)."""
        if not self._stopped and self.workers:
            self._add_worker()

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
        kept = self.groups()
        for interval, refs in sorted(kept.items()):
            job = f"{ROUND}{interval.total_seconds()}"
            wanted.add(job)
            if job in jobs:
                self.aps.modify_job(job, args=[refs, interval])
            else:
                self._add_round(interval, refs, now)
        for job in jobs - wanted:
            self.aps.remove_job(job)
        for interval in [i for i in self.rounds if i not in kept]:
            del self.rounds[interval]  # its services went or moved: it paces nothing now
        gone = change.removed | change.rescheduled
        for running in [*self.draining, *self.rounds.values()]:
            running.skip |= gone
        self._schedule_after(change.at)
        self._settle_after_a_round()
        due = time.monotonic()
        for ref in self.pipeline.probed:
            if ref.key in change.redo:
                self._launch(ref, due)

    async def _round(self, refs: list[ServiceRef], interval: timedelta) -> None:
        """Start one round: each service gets its own slot within the interval. What the
        previous round of this interval has not started yet is still started, from `draining`:
        the pacer sleeps up to a wake between slots, so the last slots of a round often come
        after its last wake, and dropped they were the same services round after round."""
        if self._stopped:
            return  # a run APScheduler submitted just before `stop`: start nothing new
        if self.aps.running and self.aps.get_job(f"{ROUND}{interval.total_seconds()}") is None:
            return  # a run submitted just before a reload removed its job: nothing to pace
        loop = asyncio.get_running_loop()
        base, started = loop.time(), time.monotonic()
        self.last_tick = base
        spacing = interval.total_seconds() / max(1, len(refs))
        previous = self.rounds.get(interval)
        if previous is not None and previous.next < len(previous.refs):
            self.draining.append(previous)
        self.rounds[interval] = _Round(refs, base, started, spacing)
        self._start_workers()
        if self._pacer is None or self._pacer.done():
            self._pacer = loop.create_task(self._pace())
        self._wake.set()

    def _settle_after_a_round(self) -> None:
        """Once every service has been probed (its counters and state made), freeze it all
        (`gc_watch.settle`): full collections then walk only what changes."""
        if self._settling is not None:
            self._settling.cancel()
        longest = max(self.groups(), default=timedelta(0)).total_seconds()
        loop = asyncio.get_running_loop()
        self._settling = loop.call_later(longest * 1.2 + 1, self._settle, longest, SETTLE_TRIES)

    def _settle(self, longest: float, tries: int, again: bool = False) -> None:
        """Freeze after the first round. A round that left services unjudged (skipped while
        the monitor was behind, as at a start that shares the machine) has their state made
        later, for every full collection to walk: then freeze once more when 99 % are judged,
        a round at a time, `tries` checks at most."""
        probed = self.pipeline.probed
        judged = sum(1 for ref in probed if ref.key in self.pipeline.states)
        done = judged >= SETTLED * len(probed) or tries <= 1 or self._stopped
        if not again or done:
            settle(collect=again)
        if done:
            self._settling = None
            return
        loop = asyncio.get_running_loop()
        self._settling = loop.call_later(longest, self._settle, longest, tries - 1, True)

    def slots(self) -> dict[tuple[str, str], float]:
        """When each service of the running rounds is due (the loop's clock), started or not."""
        return {
            ref.key: running.base + index * running.spacing
            for running in self.rounds.values()
            for index, ref in enumerate(running.refs)
            if ref.key not in running.skip
        }

    async def _pace(self) -> None:
        """Start every service at its slot, the rounds of all intervals together."""
        loop = asyncio.get_running_loop()
        while not self._stopped:
            now = loop.time()
            upcoming = math.inf
            started = 0
            for running in [*self.draining, *self.rounds.values()]:
                while running.next < len(running.refs) and started < BURST:
                    offset = running.next * running.spacing
                    if running.base + offset > now:
                        upcoming = min(upcoming, running.base + offset)
                        break
                    ref = running.refs[running.next]
                    running.next += 1
                    if ref.key not in running.skip:
                        self._launch(ref, running.started + offset)
                        started += 1
            if self.draining:
                self.draining = [r for r in self.draining if r.next < len(r.refs)]
            if started >= BURST:
                await asyncio.sleep(0)  # more are due: let what waits run first
                continue
            self._wake.clear()
            if upcoming == math.inf:
                await self._wake.wait()  # until the next round
            else:
                # a plain sleep: waiting on the event (a task and a timer each time) cost more
                # than the launching at 100,000 services a minute
                await asyncio.sleep(self._nap())

    def _nap(self) -> float:
        """Seconds until the pacer's next wake: about GROUP slots of all the rounds together."""
        rate = sum(1 / running.spacing for running in self.rounds.values() if running.spacing)
        return TICK if rate <= 0 else min(TICK, max(NAP, GROUP / rate))

    def _launch(self, ref: ServiceRef, due: float) -> None:
        """Queue a probe of `ref` for a worker, due at `due` (`time.monotonic`); a kind that
        limits itself starts as a task of its own."""
        if self._stopped:
            return
        key = ref.key
        if key in self.pipeline.running or key in self.queued:
            return  # the previous probe of this service still runs or waits: never two at once
        if self.pending() - self.pipeline.slots.lent >= MAX_WAITING:  # lent ones have a bound
            self.skipped += 1
            if self.skipped == 1 or self.skipped % 10_000 == 0:
                log.warning(
                    "%d probes are waiting: the monitor is behind; %d due probes skipped so far "
                    "/ 等待中的探测过多，监测跟不上，已跳过 %d 次到期探测",
                    self.pending(),
                    self.skipped,
                    self.skipped,
                )
            return
        probe = ref.service.probe
        prober = self.pipeline.probers.get(probe.kind) if probe is not None else None
        if getattr(prober, "limits_itself", False):
            self.lags.append(time.monotonic() - due)
            task = asyncio.get_running_loop().create_task(self.pipeline.probe(ref))
            self.tasks.add(task)
            task.add_done_callback(self._done)
            return
        self.queued.add(key)
        self.queue.put_nowait((ref, due))

    async def _work(self) -> None:
        """One worker: take the next due probe and run it, until `stop`."""
        while not self._stopped:
            item = await self.queue.get()
            if item is None:
                return  # `stop`'s word to a worker with nothing to do
            ref, due = item
            self.queued.discard(ref.key)
            self.lags.append(time.monotonic() - due)
            self.busy += 1
            try:
                await self.pipeline.probe(ref)
            except Exception:
                log.exception("probe of %s/%s failed", *ref.key)
            finally:
                self.busy -= 1
            if len(self.workers) > self.base_workers + self.pipeline.slots.lent:
                with contextlib.suppress(ValueError):  # `stop` may have let go of the list
                    self.workers.remove(asyncio.current_task())  # type: ignore[arg-type]
                return  # a stand-in no longer needed

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
        now = time.monotonic()
        for index, ref in enumerate(refs):
            self._launch(ref, now)
            if index % BURST == BURST - 1:
                await asyncio.sleep(0)
        # schedule from just after this one, so an early wake-up cannot re-fire it
        self._schedule_after(at)

    def _schedule_after(self, at: datetime) -> None:
        upcoming = self.pipeline.plan.next_transition(max(at, self.pipeline.clock.now()))
        if upcoming is not None:
            self.aps.add_job(
                self._transition,
                DateTrigger(run_date=real_instant(self.pipeline.clock, upcoming), timezone=UTC),
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
        with contextlib.suppress(asyncio.CancelledError, SQLiteError):
            await asyncio.shield(self.pipeline.flush())

    async def _prune(self) -> None:
        with contextlib.suppress(SQLiteError):  # a full disk: pruning waits for the next hour
            await self.pipeline.store.call(self.pipeline.store.prune, self.pipeline.clock.now())

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop scheduling, let running probes finish (bounded), write everything."""
        self._stopped = True
        if self.aps.running:
            self.aps.shutdown(wait=False)
        self.rounds.clear()
        self.draining.clear()
        if self._settling is not None:
            self._settling.cancel()
        if self._pacer is not None:
            self._pacer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pacer
            self._pacer = None
        # probes waiting for a worker are not started; running ones may finish (bounded)
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queued.clear()
        for _ in self.workers:
            self.queue.put_nowait(None)  # an idle worker ends; a busy one after its probe
        running = [*self.tasks, *self.workers]
        if running:
            _, late = await asyncio.wait(running, timeout=timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        self.workers = []
        with contextlib.suppress(SQLiteError):  # the store's close says what could not be kept
            await self.pipeline.flush()

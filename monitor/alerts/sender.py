"""The sender: drains the outbox, one task per sink, with retries and exponential backoff.

Each sink has its own task, so a dead or slow sink only delays its own deliveries, never another
sink's nor the probing (which runs on its own tasks and only writes rows). Within one sink,
deliveries go out in the order their transitions happened; a transient failure holds that sink's
queue until the row's next attempt (1 s, 2 s, 4 s ... up to 5 minutes, with a little jitter),
a permanent one gives that row up and goes on. A sink that asks for time (429 or 503 with
`Retry-After`, in seconds or as an HTTP date) gets at least that, at most 5 minutes
(`RETRY_AFTER_CAP`), for every delivery: its task sends nothing to it, neither the refused row
nor any queued after it nor a re-send, until then; the other sinks' tasks go on. Each delivery
is bounded as a whole (`DELIVERY_TIMEOUT`), so a sink that trickles its answer a byte at a time
cannot hold its queue for ever. Sinks that `refresh` (Alertmanager) also get every open incident
re-sent every minute, from the same task, so a re-send can never overtake the resolution it
races with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx

from monitor.alerts.alertmanager import AlertmanagerSink
from monitor.alerts.base import (
    DELIVERY_TIMEOUT,
    TIMEOUT,
    USER_AGENT,
    Sink,
    SinkError,
    within,
)
from monitor.alerts.dingtalk import DingTalkSink
from monitor.alerts.feishu import FeishuSink
from monitor.alerts.message import Alert, iso, notice_alert
from monitor.alerts.webhook import WebhookSink
from monitor.alerts.wecom import WeComSink
from monitor.judge import IncidentEvent
from monitor.plan import Plan
from monitor.plan.sinks import AlertSink
from monitor.store import Delivery, IncidentRecord, Message, Store

if TYPE_CHECKING:
    from monitor.notices import Notice, NoticeUpdate
    from monitor.plan.change import PlanChange

log = logging.getLogger(__name__)

BACKOFF_BASE = 1.0
BACKOFF_CAP = 300.0
RESEND_INTERVAL = 60.0
#: Longest sleep of an idle sink task (it is woken at once when a row is queued).
POLL = 5.0

#: One class per `type` of `[[alerts]]`.
SINK_TYPES: dict[str, type[Sink]] = {
    cls.type: cls for cls in (AlertmanagerSink, WebhookSink, WeComSink, DingTalkSink, FeishuSink)
}


def build_sink(config: AlertSink, client: httpx.AsyncClient) -> Sink:
    """The sink object for one `[[alerts]]` table."""
    return SINK_TYPES[config.type](config, client)


def new_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=TIMEOUT, follow_redirects=False, headers={"User-Agent": USER_AGENT}
    )


def backoff(
    attempts: int,
    base: float = BACKOFF_BASE,
    cap: float = BACKOFF_CAP,
    jitter: float = 0.1,
    rand: Any = random.random,
) -> float:
    """Seconds before attempt `attempts + 1`: base, 2 base, 4 base ... capped, +-jitter."""
    delay = min(cap, base * 2 ** max(0, attempts - 1))
    return delay * (1 + jitter * (2 * rand() - 1))


def alert_for(plan: Plan, record: IncidentRecord, kind: str, at: datetime, reason: str) -> Alert:
    """The snapshot of one incident transition, with names from the plan."""
    try:
        ref = plan.service(record.channel, record.business)
        channel, service = ref.channel, ref.service
        names = (channel.name, channel.name_en, service.name, service.name_en)
    except KeyError:  # the plan no longer has this service: its ids must do
        names = (record.channel, "", record.business, "")
    period = plan.config.periods.get(record.period) if record.period else None
    resolved = record.resolved_at if kind == "resolved" else None
    return Alert(
        dedup_key=f"incident-{record.id}-{kind}",
        kind=kind,
        direction=record.direction,
        channel=record.channel,
        channel_name=names[0],
        channel_name_en=names[1],
        business=record.business,
        service_name=names[2],
        service_name_en=names[3],
        expected=record.expected,
        period=record.period,
        period_title=period.title if period else "",
        period_title_en=period.title_en if period else "",
        reason=reason,
        opened_at=iso(record.opened_at),
        resolved_at=iso(resolved) if resolved else None,
        at=iso(at),
        timezone=plan.zone.key,
        incident=record.id,
        rehearsal=plan.config.rehearsal is not None,
    )


class AlertSender:
    """Writes outbox rows in the incident's transaction (`hook`) and delivers them."""

    def __init__(
        self,
        plan: Plan,
        store: Store,
        configs: Sequence[AlertSink],
        *,
        client: httpx.AsyncClient | None = None,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        jitter: float = 0.1,
        resend_interval: float = RESEND_INTERVAL,
        poll: float = POLL,
        close_timeout: float = 2.0,
        delivery_timeout: float = DELIVERY_TIMEOUT,
    ) -> None:
        self.plan = plan
        self.store = store
        self.client = client or new_client()
        self.sinks = [build_sink(c, self.client) for c in configs]
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.jitter = jitter
        self.resend_interval = resend_interval
        self.poll = poll
        self.close_timeout = close_timeout
        self.delivery_timeout = delivery_timeout
        self.tasks: list[asyncio.Task] = []
        self._wakes: dict[str, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._started = False
        #: Delivered alerts per sink since start (for tests and diagnostics).
        self.delivered: dict[str, int] = {s.name: 0 for s in self.sinks}
        #: Per sink that asked for time (`Retry-After`): until when (wall clock) nothing at
        #: all is sent to it. A robot that answers 429 refuses the next message as well.
        self.paused_until: dict[str, float] = {}

    # --- inside the incident's transaction (store thread) ----------------------------------

    def hook(self, record: IncidentRecord, event: IncidentEvent) -> None:
        """Queue the transition for every sink that wants it; runs before the commit."""
        alert = alert_for(self.plan, record, event.kind, event.at, event.reason)
        targets = [sink.name for sink in self.sinks if sink.wants(alert)]
        if targets:
            self.store.outbox.enqueue(targets, alert.dedup_key, alert.to_json(), time.time())
            self._wake_soon()

    def use_plan(self, change: PlanChange) -> None:
        """A reload: names in alerts from the new plan. Sinks stay as started: each has its
        delivery task and its outbox rows under its name, so an edited `[[alerts]]` list
        takes effect at the next restart (the daemon says so in the log)."""
        self.plan = change.new

    async def enqueue_notices(self, updates: Sequence[tuple[Notice, int, NoticeUpdate]]) -> int:
        """Queue updates of operators' notices (`notify = true`), said as the plan running
        now names their services; how many were new."""
        return await self.enqueue([notice_alert(self.plan, *update) for update in updates])

    async def enqueue(self, alerts: Sequence[Alert]) -> int:
        """Queue messages that are not incident transitions (updates of operators' notices)
        for every sink that takes them; the outbox keeps one row per sink and dedup key, so
        each is sent once, also across restarts. Returns how many rows are new."""
        await self.start()

        messages = [
            Message(tuple(s.name for s in self.sinks if s.wants(a)), a.dedup_key, a.to_json())
            for a in alerts
        ]
        count = await self.store.call(self.store.outbox.add, messages, time.time())
        if count:
            self._wake_all()
        return count

    def _wake_soon(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        for event in self._wakes.values():
            event.set()

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start one task per sink (idempotent)."""
        if self._started or self._closing:
            return
        self._started = True  # before any await: on_startup and a listener call may race
        self._loop = asyncio.get_running_loop()
        waiting = await self.store.call(self.store.outbox.pending)
        names = {sink.name for sink in self.sinks}
        for name, count in sorted(waiting.items()):
            if name in names:
                log.info("alerts: %d pending delivery(ies) for sink %s", count, name)
            else:
                log.warning(
                    "alerts: %d pending delivery(ies) for sink %s, which is no longer "
                    "configured; they stay in the outbox",
                    count,
                    name,
                )
        for sink in self.sinks:
            self._wakes[sink.name] = asyncio.Event()
            self.tasks.append(asyncio.create_task(self._work(sink), name=f"alerts-{sink.name}"))

    async def on_startup(self, _app: object) -> None:
        """aiohttp `on_startup` hook: start with the daemon's web server."""
        await self.start()

    async def close(self) -> None:
        """Let each sink finish what it is sending (bounded), then stop; pending rows stay."""
        self._closing = True
        self._wake_all()
        if self.tasks:
            _, late = await asyncio.wait(self.tasks, timeout=self.close_timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            self.tasks.clear()
        await self.client.aclose()

    # --- Listener protocol: nothing to do per observation, but make sure we run ------------

    async def observed(self, _result: object) -> None:
        await self.start()

    async def transition(self, _at: datetime) -> None:
        await self.start()

    # --- one task per sink -----------------------------------------------------------------

    async def _work(self, sink: Sink) -> None:
        loop = asyncio.get_running_loop()
        wake = self._wakes[sink.name]
        next_refresh = loop.time() if sink.refreshes else None
        while not self._closing:
            wake.clear()
            upcoming = None
            try:
                await self.drain(sink)
                if (
                    next_refresh is not None
                    and loop.time() >= next_refresh
                    and not self._closing
                    and self._pause_left(sink) <= 0
                ):
                    ok = await self.refresh(sink)
                    wait = self.resend_interval if ok else min(self.resend_interval, self.poll)
                    next_refresh = loop.time() + wait
                upcoming = await self.store.call(self.store.outbox.next_attempt, sink.name)
            except Exception:  # never let one sink's task die
                log.exception("alerts: sender of sink %s failed; going on", sink.name)
            delay = self.poll
            if upcoming is not None:
                delay = min(delay, upcoming - time.time())
            if next_refresh is not None:
                delay = min(delay, next_refresh - loop.time())
            pause = self._pause_left(sink)
            if pause > 0:  # nothing is due before the sink's pause ends, whatever is queued
                delay = max(delay, pause)
            if not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), max(delay, 0.01))

    def _pause_left(self, sink: Sink) -> float:
        """Seconds until the sink's own `Retry-After` ends (0 or less: not paused)."""
        return self.paused_until.get(sink.name, 0.0) - time.time()

    def _pause(self, sink: Sink, asked: float | None) -> None:
        """Hold every delivery to `sink` for the `asked` seconds (already capped at
        `RETRY_AFTER_CAP` by `base.retry_after`)."""
        if asked is not None and asked > 0:
            until = time.time() + asked
            self.paused_until[sink.name] = max(self.paused_until.get(sink.name, 0.0), until)

    async def drain(self, sink: Sink) -> None:
        """Send every due row of one sink, in order, until one fails transiently or the sink
        is paused by its own `Retry-After`."""
        outbox = self.store.outbox
        while not self._closing and self._pause_left(sink) <= 0:
            rows = await self.store.call(outbox.due, sink.name, time.time())
            if not rows:
                return
            for row in rows:
                if self._closing or self._pause_left(sink) > 0:
                    return
                try:
                    answer = await within(
                        sink.send(Alert.from_json(row.payload)), self.delivery_timeout
                    )
                except SinkError as exc:
                    if exc.permanent:
                        await self.store.call(outbox.give_up, row.id, time.time(), str(exc))
                        log.error(
                            "alerts: %s to sink %s given up after %d attempt(s): %s",
                            row.dedup_key,
                            sink.name,
                            row.attempts + 1,
                            exc,
                        )
                        continue
                    await self._retry(sink, row, str(exc), exc.retry_after)
                    return
                except Exception as exc:
                    log.exception("alerts: sink %s raised unexpectedly", sink.name)
                    await self._retry(sink, row, f"internal error ({type(exc).__name__})")
                    return
                await self.store.call(outbox.delivered, row.id, time.time())
                self.delivered[sink.name] = self.delivered.get(sink.name, 0) + 1
                log.info("alerts: %s delivered to sink %s (%s)", row.dedup_key, sink.name, answer)

    async def _retry(
        self, sink: Sink, row: Delivery, error: str, asked: float | None = None
    ) -> None:
        delay = backoff(row.attempts + 1, self.backoff_base, self.backoff_cap, self.jitter)
        if asked is not None:  # never sooner than the sink asked (already capped at 5 minutes)
            delay = max(delay, asked)
            self._pause(sink, asked)
        await self.store.call(self.store.outbox.retry, row.id, time.time() + delay, error)
        log.warning(
            "alerts: %s to sink %s failed (attempt %d: %s); next try in %.1f s",
            row.dedup_key,
            sink.name,
            row.attempts + 1,
            error,
            delay,
        )

    async def refresh(self, sink: Sink) -> bool:
        """Re-send every open incident this sink takes; False when the sink failed."""
        records = await self.store.call(self.store.open_incidents)
        alerts = [
            alert_for(self.plan, r, "opened", r.opened_at, r.reason)
            for r in records
            if r.direction in sink.config.directions
        ]
        try:
            await within(sink.refresh(alerts), self.delivery_timeout)
        except SinkError as exc:
            self._pause(sink, exc.retry_after)
            log.warning(
                "alerts: re-sending %d open alert(s) to sink %s failed: %s",
                len(alerts),
                sink.name,
                exc,
            )
            return False
        return True

"""Citizens subscribe by e-mail to a service or a whole channel, and are told, in their
language, when it pauses and reopens as planned, shortly before (`remind_before`), and when it
is down while it should be open.

`build(...)` is the daemon's one call: from the plan source, the store and the clock it makes
the API's routes (`api.py`), the store's incident hook and the planner and sender tasks
(`events.py`, `sender.py`), and hands them back as a `Part`. Without `[subscriptions]` in the
plan nothing is built. The key that seals addresses comes from the environment (`keys.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from monitor.clock import RealClock
from monitor.part import Part
from monitor.subscriptions import events
from monitor.subscriptions.api import EXPIRES, Api
from monitor.subscriptions.keys import KeyProblem, Keys
from monitor.subscriptions.sender import SubscriptionSender

if TYPE_CHECKING:
    from collections.abc import Sequence

    from monitor.clock import Clock
    from monitor.notices import Notice, NoticeUpdate
    from monitor.plan import Plan
    from monitor.plan.subscriptions import SubscriptionSettings
    from monitor.store import Store

__all__ = ["KeyProblem", "Keys", "Subscriptions", "build"]

log = logging.getLogger(__name__)
#: Sent mails' rows are kept this long (seconds), then deleted with their events.
KEEP_SENT = 7 * 86400.0


class Subscriptions:
    """The planner (planned changes and reminders into the outbox), the sender, the API."""

    def __init__(
        self,
        plan: Callable[[], Plan],
        store: Store,
        clock: Clock,
        settings: SubscriptionSettings,
        keys: Keys,
    ) -> None:
        self.plan, self.store, self.clock, self.settings = plan, store, clock, settings
        self.keys = keys
        self.sender = SubscriptionSender(plan, store, settings, keys)
        self.api = Api(plan, store, keys, self.sender.nudge)
        self.cursor: datetime = clock.now() - events.CATCH_UP
        self.task: asyncio.Task | None = None
        self.wake = asyncio.Event()
        self.closing = False
        self.started = False

    async def step(self, now: datetime) -> int:
        """Queue what became due since the last step (changes, reminders); expire
        unconfirmed subscriptions and forget old sent mails. Returns rows queued."""
        start, self.cursor = self.cursor, max(self.cursor, now + events.TICK)
        if start >= self.cursor:
            return 0
        stamp = time.time()
        queued = await self.store.call(
            events.planned,
            self.plan(),
            self.store,
            start,
            self.cursor,
            self.settings.remind_before,
            stamp,
        )
        subs = self.store.subscribers
        await self.store.call(subs.expire, stamp - EXPIRES)
        await self.store.call(subs.forget_sent, stamp - KEEP_SENT)
        if queued:
            log.info("subscriptions: %d message(s) queued", queued)
            self.sender.nudge()
        return queued

    async def notices(self, updates: Sequence[tuple[Notice, int, NoticeUpdate]]) -> int:
        """Queue updates of operators' notices for the subscribers of the channels they name
        (the notices' watcher calls this, handed over by the daemon); how many rows are new."""
        queued = await self.store.call(events.queue_notices, self.store, updates, time.time())
        if queued:
            log.info("subscriptions: %d notice message(s) queued", queued)
            self.sender.nudge()
        return queued

    async def _plan_loop(self) -> None:
        while not self.closing:
            self.wake.clear()
            now = self.clock.now()
            try:
                await self.step(now)
                due = await asyncio.to_thread(
                    events.next_wake, self.plan(), now, self.settings.remind_before
                )
            except Exception:
                log.exception("subscriptions: planning failed; going on")
                due = None
            delay = events.MAX_SLEEP
            if due is not None:
                delay = min(delay, (due - self.clock.now()).total_seconds())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), max(delay, 0.05))

    async def start(self) -> None:
        """Start sending; plan on the real clock (a replayed one steps at its transitions)."""
        if self.started:
            return
        self.started = True
        await self.sender.start()
        if isinstance(self.clock, RealClock):
            self.task = asyncio.create_task(self._plan_loop(), name="subscriptions-planner")

    async def on_startup(self, _app: object) -> None:
        await self.start()

    # --- Listener: a planned transition steps the planner (the replay's clock) -------------

    async def observed(self, _result: object) -> None:
        return None

    async def transition(self, at: datetime) -> None:
        if isinstance(self.clock, RealClock):
            self.wake.set()
        else:
            await self.step(at)

    async def close(self) -> None:
        self.closing = True
        self.wake.set()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.sender.close()

    def part(self) -> Part:
        return Part(
            listener=self,
            routes=self.api.routes(),
            on_startup=(self.on_startup,),
            incident_hook=events.incident_hook(self.plan, self.store, self.sender.nudge),
        )


def build(
    plan: Callable[[], Plan], settings: SubscriptionSettings | None, store: Store, clock: Clock
) -> tuple[Subscriptions | None, Part]:
    """The subscriptions of a running monitor, or none (an empty part) without
    `[subscriptions]`; KeyProblem when the key is missing or wrong."""
    if settings is None:
        return None, Part()
    subscriptions = Subscriptions(plan, store, clock, settings, Keys.from_environment())
    log.info("subscriptions: mailed through %s:%d", settings.host, settings.port)
    return subscriptions, subscriptions.part()

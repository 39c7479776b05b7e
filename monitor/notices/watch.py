"""The running monitor's side of operators' notices: watch the file, show it, send updates.

`build(...)` loads `notices.toml` once (a broken file stops the start, as a broken plan
does) and then polls its modification time every couple of seconds: a changed file is
validated first (also when the plan is reloaded: a plan that would break the notices is not
applied), and only a good one replaces the notices shown (a broken edit is logged
with the same messages `channel-monitor notice validate` prints, and the page keeps the last
good notices); the page is re-rendered at once. Polling a stat is a few microseconds and
needs no dependency; the file is small and changes by hand.

A notice with `notify = true` has each of its updates sent once to the robot and webhook
sinks (not Alertmanager), through the alert outbox: one row per sink and update
(`notice-<id>-<index>-<unix time>`), so a restart never sends it again. An update is sent
when its `at` has come, and only within `NOTIFY_WINDOW` of it, so a monitor started on a
fresh store does not page everyone with last week's updates.

Every update of a notice that names services is also handed, `notify` or not, to the callable
the daemon gives as `tell_subscribers` (the subscriptions' queue): the notice is public words
for citizens already, and those who subscribed to one of its channels asked to be told. The
board knows only the callable, never the subscriptions package (parts do not import each
other); the subscriptions' store keeps each update once per subscriber across restarts.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from monitor.file_watch import POLL, PolledFile
from monitor.notices import EMPTY, Notice, NoticesFile, NoticeUpdate, dedup_key, load_notices
from monitor.part import Part
from monitor.plan.errors import ConfigError

if TYPE_CHECKING:
    from monitor.clock import Clock
    from monitor.part import PlanSource
    from monitor.plan import Plan
    from monitor.store import Store

#: Queues updates of notices in the outbox as messages (`AlertSender.enqueue_notices`): how
#: many were new. The board knows what is due, the sender how it is said.
Enqueue = Callable[[Sequence[tuple[Notice, int, NoticeUpdate]]], Awaitable[int]]

log = logging.getLogger(__name__)

#: Updates older than this when the monitor first sees them are history, not news.
NOTIFY_WINDOW = timedelta(hours=6)


class NoticeBoard(PolledFile):
    """The notices a running monitor shows, re-read when their file changes."""

    name = "notices"

    def __init__(
        self,
        path: Path,
        plan: PlanSource,
        clock: Clock,
        store: Store,
        enqueue: Enqueue | None = None,
        render: Callable[[], None] | None = None,
        poll: float = POLL,
        tell_subscribers: Enqueue | None = None,
    ) -> None:
        super().__init__(path, poll)
        #: The plan running now (a reload swaps it).
        self.plan = plan
        self.clock = clock
        self.store = store
        #: Where updates with `notify = true` go (the alert sender's outbox); None: nowhere.
        self.enqueue = enqueue
        #: Asks for a render of the page (the site's listener); None: no page.
        self.render = render
        #: Where every update of a notice naming services goes, `notify` or not: the citizens
        #: subscribed to those channels (handed over by the daemon); None: no subscriptions.
        self.tell_subscribers = tell_subscribers
        self.reloads = 0
        self.errors = 0
        self.current: NoticesFile = load_notices(self.path, plan(), self._incident_ids())
        self._queued: set[str] = set()
        self._told: set[str] = set()
        self._next_due: datetime | None = None

    def _incident_ids(self) -> set[int]:
        return {record.id for record in self.store.incidents(limit=1_000_000)}

    async def validate_against(self, plan: Plan) -> None:
        """ConfigError when the notices would not hold against `plan` (a reload checks this
        before it applies a plan: a notice must not name a service the plan dropped)."""
        ids = await self.store.call(self._incident_ids)
        load_notices(self.path, plan, ids)

    # --- one look at the file ---------------------------------------------------------------

    async def check(self) -> None:
        """Re-read the file if it changed, show an update whose time has come, then queue
        the updates that are due."""
        if self.changed():
            await self.reload()
        now = self.clock.now()
        if self._next_due is not None and now >= self._next_due:
            self._request_render()
        self._next_due = self._upcoming(now)
        await self.notify()

    def _upcoming(self, now: datetime) -> datetime | None:
        """The earliest update dated after `now` (written ahead of its time)."""
        later = [u.at for n in self.current.notices for u in n.updates if u.at > now]
        return min(later, default=None)

    def _request_render(self) -> None:
        if self.render is not None:
            self.render()

    async def reload(self) -> bool:
        """Validate the file and show it; a broken one leaves the last good notices."""
        try:
            ids = await self.store.call(self._incident_ids)
            fresh = load_notices(self.path, self.plan(), ids)
        except ConfigError as exc:
            self.errors += 1
            log.error(
                "notices: %s not applied, the notices shown stay as they were:\n%s",
                self.path,
                "\n".join(exc.problems),
            )
            return False
        self.current = fresh if self.path.exists() else EMPTY
        self.reloads += 1
        log.info("notices: %s re-read, %d notice(s)", self.path, len(fresh.notices))
        self._request_render()
        return True

    async def notify(self) -> int:
        """Queue every due update not yet queued: those of notices with `notify = true` for
        the sinks, those of notices naming services for the subscribers; how many were new."""
        now = self.clock.now()
        count = 0
        if self.enqueue is not None:
            count += await self._hand(self.enqueue, self._queued, now, lambda n: n.notify)
        if self.tell_subscribers is not None:
            told = self._told
            count += await self._hand(self.tell_subscribers, told, now, lambda n: bool(n.services))
        return count

    async def _hand(
        self, to: Enqueue, sent: set[str], now: datetime, wanted: Callable[[Notice], bool]
    ) -> int:
        due = [
            (notice, index, update)
            for notice in self.current.notices
            if wanted(notice)
            for index, update in enumerate(notice.updates)
            if now - NOTIFY_WINDOW <= update.at <= now
            and dedup_key(notice, index, update) not in sent
        ]
        if not due:
            return 0
        count = await to(due)
        sent.update(dedup_key(*item) for item in due)
        return count


def build(
    path: Path | None,
    plan: PlanSource,
    clock: Clock,
    store: Store,
    enqueue: Enqueue | None,
    render: Callable[[], None] | None,
    tell_subscribers: Enqueue | None = None,
) -> tuple[NoticeBoard | None, Part]:
    """The notices of a running monitor, watched from the web server's start to its stop;
    no board (and an empty part) without a notices path. A broken file raises ConfigError."""
    if path is None:
        return None, Part()
    board = NoticeBoard(
        Path(path), plan, clock, store, enqueue, render, tell_subscribers=tell_subscribers
    )
    return board, Part(on_startup=(board.on_startup,), on_cleanup=(board.on_cleanup,))

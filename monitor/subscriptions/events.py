"""What is queued for subscribers, and when: the plan's changes at their instants, the
reminders `remind_before` them, and incidents of the `unexpected_down` kind.

Every instant is the plan's own (`Plan.transitions`, `Plan.next_up`, `Plan.next_transition`):
a change at 08:30 of 53 services is one event, and each subscriber gets one row of it naming
the services it chose. An event's key is its instant (and the reminder's lead), so offering it
again, after a restart that looks back `CATCH_UP`, queues nothing twice.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from monitor.judge import IncidentEvent
    from monitor.notices import Notice, NoticeUpdate
    from monitor.plan import Plan, Transition
    from monitor.store import IncidentRecord, Store

#: How far back a start looks for changes it may have missed while the monitor was down.
CATCH_UP = timedelta(minutes=15)
#: The longest the planner sleeps (a reload may bring a nearer change).
MAX_SLEEP = 60.0
TICK = timedelta(microseconds=1)


def change_of(t: Transition) -> str | None:
    """What a citizen is told of a planned change: paused, reopened, or nothing (a change to
    or from `any`, which promises nothing, is not news, except when it lands on up or down)."""
    if t.to_state == "down":
        return "paused"
    if t.to_state == "up":
        return "reopened"
    return None


def items_at(plan: Plan, changes: Sequence[Transition]) -> list[dict]:
    """The event's items: each changed service, and for a pause the plan's reopening."""
    out = []
    for t in changes:
        change = change_of(t)
        if change is None:
            continue
        item: dict = {"channel": t.channel, "service": t.service, "change": change}
        if change == "paused":
            ref = plan.find((t.channel, t.service))
            reopens = plan.next_up(ref, t.at) if ref is not None else None
            item["reopens"] = reopens.isoformat() if reopens else None
        out.append(item)
    return out


def by_instant(changes: Sequence[Transition]) -> dict[datetime, list[Transition]]:
    grouped: dict[datetime, list[Transition]] = defaultdict(list)
    for t in changes:
        grouped[t.at].append(t)
    return grouped


def queue_event(store: Store, key: str, payload: dict, now: float) -> int:
    """Offer one event to every confirmed subscriber of its services (store thread)."""
    subs = store.subscribers
    items = payload["items"]
    chosen = subs.choosers({i["channel"] for i in items})
    if not chosen:
        return 0
    index: dict[tuple[str, str], int] = {
        (i["channel"], i["service"]): n for n, i in enumerate(items)
    }
    whole: dict[str, list[int]] = defaultdict(list)
    for n, i in enumerate(items):
        whole[i["channel"]].append(n)
    offers: dict[int, list[int]] = {}
    for ident, picks in chosen.items():
        found: set[int] = set()
        for channel, service in picks:
            if service:
                if (channel, service) in index:
                    found.add(index[(channel, service)])
            else:
                found.update(whole[channel])
        if found:
            offers[ident] = sorted(found)
    if not offers:
        return 0
    return subs.offer(key, json.dumps(payload, ensure_ascii=False), offers, now)


def planned(
    plan: Plan,
    store: Store,
    start: datetime,
    end: datetime,
    reminders: Sequence[timedelta],
    now: float,
) -> int:
    """Queue the changes in `[start, end)` and the reminders of changes `remind` after it."""
    count = 0
    for at, changes in sorted(by_instant(plan.transitions(start, end)).items()):
        items = items_at(plan, changes)
        if items:
            payload = {"kind": "plan", "at": at.isoformat(), "items": items}
            count += queue_event(store, f"plan:{at.isoformat()}", payload, now)
    for lead in reminders:
        window = plan.transitions(start + lead, end + lead)
        for at, changes in sorted(by_instant(window).items()):
            items = items_at(plan, changes)
            if items:
                payload = {"kind": "reminder", "at": at.isoformat(), "items": items}
                key = f"remind:{int(lead.total_seconds())}:{at.isoformat()}"
                count += queue_event(store, key, payload, now)
    return count


def next_wake(plan: Plan, at: datetime, reminders: Sequence[timedelta]) -> datetime | None:
    """The next instant anything is due: a change, or a change's reminder."""
    found = [plan.next_transition(at)]
    found += [
        (change - lead) if (change := plan.next_transition(at + lead)) else None
        for lead in reminders
    ]
    return min((f for f in found if f is not None), default=None)


def notice_key(notice: Notice, index: int, update: NoticeUpdate) -> str:
    """The event key of one update of a notice: stable while updates are only appended, so an
    update offered again (the watcher after a restart) is queued for no one twice."""
    return f"notice:{notice.id}:{index}:{int(update.at.timestamp())}"


def notice_payload(notice: Notice, update: NoticeUpdate) -> dict:
    """An update of an operators' notice as kept for subscribers: the operators' public words
    (both languages; each subscriber reads their own) and the channels it concerns."""
    return {
        "kind": "notice",
        "at": update.at.isoformat(),
        "title": notice.title,
        "title_en": notice.title_en,
        "text": update.text,
        "text_en": update.text_en,
        "channels": sorted({ref.partition("/")[0] for ref in notice.services}),
    }


def queue_notices(
    store: Store, updates: Sequence[tuple[Notice, int, NoticeUpdate]], now: float
) -> int:
    """Offer updates of notices to the confirmed subscribers of any service of the channels
    they name (store thread); a notice naming no service concerns no one in particular and
    is left to the page. Returns how many rows are new."""
    subs = store.subscribers
    count = 0
    for notice, index, update in updates:
        payload = notice_payload(notice, update)
        if not payload["channels"]:
            continue
        chosen = subs.choosers(payload["channels"])
        if chosen:
            text = json.dumps(payload, ensure_ascii=False)
            offers: dict[int, Sequence[int]] = dict.fromkeys(chosen, ())
            count += subs.offer(notice_key(notice, index, update), text, offers, now)
    return count


def incident_hook(plan: Callable[[], Plan], store: Store, wake: Callable[[], None]):
    """The store's incident hook: a service down while it should be open (or open again) is
    queued for its subscribers in the incident's own transaction."""

    def hook(record: IncidentRecord, event: IncidentEvent) -> None:
        if record.direction != "unexpected_down":
            return
        payload = {
            "kind": "incident",
            "state": event.kind,
            "at": event.at.isoformat(),
            "channel": record.channel,
            "service": record.business,
        }
        key = f"incident-{record.id}-{event.kind}"
        text = json.dumps(payload, ensure_ascii=False)
        if store.subscribers.offer_service(key, text, record.channel, record.business, time.time()):
            wake()

    return hook

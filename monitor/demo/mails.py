"""The demo's subscribers: a few made-up addresses subscribed to services the replay pauses and
reopens, mailed through a relay of the demo's own (aiosmtpd on a free port of 127.0.0.1, which
keeps what it receives in memory), and the mails it received listed at the end, one line each.

Whatever `[subscriptions]` the plan has is replaced by the local relay, so a demo of a real plan
never mails anyone. The key that seals addresses is made up for the run when the environment
has none. On the replay's clock the planner steps at the plan's transitions, so the mails are
those of the freeze's start and end, as the plan says; reminders are left out, as they would
arrive together with the change they announce.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from aiosmtpd.smtp import SMTP as SMTPServer

from monitor.plan import Plan
from monitor.plan.subscriptions import SubscriptionSettings
from monitor.store import Store
from monitor.subscriptions.keys import ENV, Keys

if TYPE_CHECKING:
    from monitor.daemon import Daemon

#: The demo's subscribers: (address, language, how many services each chooses).
PEOPLE = (
    ("wang.fang@example.cn", "zh", 2),
    ("li.na@example.cn", "zh", 1),
    ("sam@example.org", "en", 1),
)
#: A service is offered to the demo's subscribers when it changes this often in the replay, or
#: less: the freeze's start and end, not a hall's office hours day after day.
AT_MOST = 2


class Options(Protocol):
    """What of the demo's options the mails need (its `DemoOptions`)."""

    host: str
    port: int


@dataclass
class Received:
    """What the local relay received: (recipients, subject) of each message, in order."""

    mails: list[tuple[str, str]] = field(default_factory=list)

    async def handle_DATA(self, _server: object, _session: object, envelope) -> str:
        parsed = message_from_bytes(envelope.original_content, policy=default_policy)
        self.mails.append((", ".join(envelope.rcpt_tos), str(parsed["Subject"])))
        return "250 OK"


@dataclass
class DemoMails:
    """The relay and the plan that mails through it."""

    plan: Plan
    received: Received
    server: asyncio.AbstractServer

    async def summary(self, daemon: Daemon) -> str:
        """Send what is still queued (the sender may not run without the web server), then
        the mails received, one line each: recipient and subject."""
        subscriptions = daemon.subscriptions
        if subscriptions is not None:
            with contextlib.suppress(Exception):
                while await subscriptions.sender.drain_once():
                    pass
        mails = self.received.mails
        lines = [f"mails to the demo's subscribers, through the relay at 127.0.0.1: {len(mails)}"]
        lines += [f"  {to:<22} {subject}" for to, subject in mails]
        return "\n".join(lines)


def choices(plan: Plan, start: datetime, end: datetime) -> list[str]:
    """`channel/service` of services that change between `start` and `end`, at most `AT_MOST`
    times, those of the busiest instant (the freeze's start) first."""
    changes = [t for t in plan.transitions(start, end) if t.to_state in ("up", "down")]
    often = Counter((t.channel, t.service) for t in changes)
    busiest = Counter(t.at for t in changes if t.to_state == "down").most_common(1)
    first = busiest[0][0] if busiest else None
    ordered = sorted(changes, key=lambda t: (t.at != first, t.at))
    return list(
        dict.fromkeys(
            f"{t.channel}/{t.service}" for t in ordered if often[t.channel, t.service] <= AT_MOST
        )
    )


async def start_mails(
    plan: Plan,
    db: Path,
    stack: contextlib.ExitStack,
    options: Options,
    start: datetime,
    end: datetime,
) -> tuple[Plan, DemoMails]:
    """Start the relay (stopped by `stack`), give the plan `[subscriptions]` through it with
    links to the demo's own server, and subscribe the demo's people, confirmed, in the store
    at `db`, to services that change between `start` and the replay's end."""
    received = Received()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTPServer(received), "127.0.0.1", 0)
    stack.callback(server.close)
    port = server.sockets[0].getsockname()[1]
    settings = SubscriptionSettings.model_validate(
        {
            "smtp": f"smtp://127.0.0.1:{port}",
            "from": "湖北人社 <noreply@example.gov.cn>",
            "public_url": f"http://{options.host}:{options.port}",
            # the replay steps from transition to transition: a reminder would come with the
            # change it announces, not before it
            "remind_before": [],
        }
    )
    plan = Plan(plan.config.model_copy(update={"subscriptions": settings}))
    os.environ.setdefault(ENV, Keys.generate())  # this process only: the demo's made-up key
    keys = Keys.from_environment()
    offered = choices(plan, start, end)
    if offered:
        store = Store(db)
        try:
            at, taken = 0, []
            for address, lang, count in PEOPLE:
                chosen = [offered[(at + n) % len(offered)] for n in range(count)]
                at += count
                taken.append(keys.request(address, chosen, lang))
            store.subscribers.add_confirmed_many(taken, time.time())
        finally:
            store.close()
    return plan, DemoMails(plan, received, server)

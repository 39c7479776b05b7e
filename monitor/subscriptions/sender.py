"""Delivery of the subscription outbox: paced to the relay, over SMTP sessions kept open.

Rows are claimed in batches (committed before anything is sent, see monitor/store/
subscribers.py), spread over `sessions` SMTP sessions that stay open from batch to batch, and
each mail waits for its turn under one pace (`rate` a second) for all sessions. A 4xx answer
or a lost connection retries the row with exponential backoff (the session is opened again);
a 5xx answer gives it up. Partners' webhooks get a signed POST the way the webhook sink signs
its alerts. The loop sleeps until the next row is due, or until woken by a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parseaddr
from typing import TYPE_CHECKING

import aiosmtplib
import httpx

from monitor.subscriptions.mail import Composer, webhook_body

if TYPE_CHECKING:
    from monitor.plan import Plan
    from monitor.plan.subscriptions import SubscriptionSettings
    from monitor.store import Mail, Store
    from monitor.subscriptions.keys import Keys

log = logging.getLogger(__name__)

BACKOFF_BASE = 2.0
BACKOFF_CAP = 600.0
#: Rows claimed at once per session.
PER_SESSION = 50
POLL = 5.0
SMTP_TIMEOUT = 30.0


class Failed(Exception):
    """A delivery that failed; `permanent` ones are given up."""

    def __init__(self, text: str, permanent: bool) -> None:
        super().__init__(text)
        self.permanent = permanent


class Pace:
    """At most `rate` sends a second across every session (each takes the next free slot)."""

    def __init__(self, rate: float) -> None:
        self.step = 1.0 / rate
        self.next = 0.0

    async def turn(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        at = max(now, self.next)
        self.next = at + self.step
        if at > now:
            await asyncio.sleep(at - now)


class Session:
    """One SMTP session to the relay, opened when first needed and kept for the next mails."""

    def __init__(self, settings: SubscriptionSettings) -> None:
        self.settings = settings
        self.smtp: aiosmtplib.SMTP | None = None
        self.sender = parseaddr(settings.sender)[1]

    async def _open(self) -> aiosmtplib.SMTP:
        s = self.settings
        smtp = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            use_tls=s.security == "tls",
            start_tls=s.security == "starttls",
            timeout=SMTP_TIMEOUT,
        )
        await smtp.connect()
        if s.username:
            await smtp.login(s.username, s.password or "")
        return smtp

    async def send(self, recipient: str, message: bytes) -> None:
        try:
            if self.smtp is None or not self.smtp.is_connected:
                self.smtp = await self._open()
            await self.smtp.sendmail(self.sender, [recipient], message)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            raise Failed(f"refused ({codes})", all(c >= 500 for c in codes)) from None
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code >= 500:
                raise Failed(f"relay answered {exc.code}", True) from None
            await self.close()
            raise Failed(f"relay answered {exc.code}", False) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self.close()
            raise Failed(f"relay unreachable ({type(exc).__name__})", False) from None

    async def close(self) -> None:
        smtp, self.smtp = self.smtp, None
        if smtp is not None and smtp.is_connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(smtp.quit(), 2)
            smtp.close()


class SubscriptionSender:
    """Drains the subscription outbox."""

    def __init__(
        self,
        plan: Callable[[], Plan],
        store: Store,
        settings: SubscriptionSettings,
        keys: Keys,
        *,
        poll: float = POLL,
        backoff_base: float = BACKOFF_BASE,
    ) -> None:
        self.plan = plan
        self.store = store
        self.settings = settings
        self.keys = keys
        self.poll = poll
        self.backoff_base = backoff_base
        self.sessions = [Session(settings) for _ in range(settings.sessions)]
        self.composer = Composer(settings, keys)
        self.pace = Pace(settings.rate)
        self.client: httpx.AsyncClient | None = None
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.closing = False
        #: Mails and webhook calls delivered since start.
        self.delivered = 0

    async def start(self) -> None:
        if self.task is None:
            given_up = await self.store.call(self.store.subscribers.interrupted, time.time())
            if given_up:
                log.warning(
                    "subscriptions: %d mail(s) were being sent when the monitor stopped; "
                    "not sent again, so no one gets one twice",
                    given_up,
                )
            self.task = asyncio.create_task(self._run(), name="subscriptions-sender")

    def nudge(self) -> None:
        self.wake.set()

    async def close(self) -> None:
        self.closing = True
        self.wake.set()
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, 5)
            except TimeoutError:
                self.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.task
            self.task = None
        for session in self.sessions:
            await session.close()
        if self.client is not None:
            await self.client.aclose()

    async def _run(self) -> None:
        subs = self.store.subscribers
        while not self.closing:
            self.wake.clear()
            try:
                sent = await self.drain_once()
                if sent:
                    continue
                upcoming = await self.store.call(subs.next_attempt)
            except Exception:
                log.exception("subscriptions: the sender failed; going on")
                upcoming = None
            delay = self.poll if upcoming is None else min(self.poll, upcoming - time.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), max(delay, 0.01))

    async def drain_once(self) -> int:
        """Claim one batch and send it over the sessions; how many rows it held."""
        subs = self.store.subscribers
        limit = PER_SESSION * len(self.sessions)
        mails = await self.store.call(subs.claim, time.time(), limit)
        if not mails:
            return 0
        shares = [mails[i :: len(self.sessions)] for i in range(len(self.sessions))]
        done: list[int] = []
        pairs = zip(self.sessions, shares, strict=True)
        await asyncio.gather(*(self._send_share(s, share, done) for s, share in pairs))
        await self.store.call(subs.delivered, done, time.time())
        self.delivered += len(done)
        log.info("subscriptions: %d of %d message(s) delivered", len(done), len(mails))
        return len(mails)

    async def _send_share(self, session: Session, mails: list[Mail], done: list[int]) -> None:
        subs = self.store.subscribers
        for mail in mails:
            await self.pace.turn()
            try:
                await self._send(session, mail)
            except Failed as exc:
                if exc.permanent:
                    await self.store.call(subs.give_up, mail.id, time.time(), str(exc))
                    log.warning("subscriptions: a message was given up: %s", exc)
                else:
                    delay = min(BACKOFF_CAP, self.backoff_base * 2**mail.attempts)
                    delay *= 1 + 0.1 * (2 * random.random() - 1)
                    await self.store.call(subs.retry, mail.id, time.time() + delay, str(exc))
                    log.warning("subscriptions: sending failed (%s); again in %.0f s", exc, delay)
                continue
            except Exception as exc:  # a row that cannot be made into a message
                log.exception("subscriptions: a message could not be made")
                await self.store.call(subs.give_up, mail.id, time.time(), type(exc).__name__)
                continue
            done.append(mail.id)

    async def _send(self, session: Session, mail: Mail) -> None:
        plan = self.plan()
        if mail.medium == "webhook":
            await self._post(plan, mail)
            return
        if self.composer.settings is not self.settings:  # settings replaced (tests)
            self.composer = Composer(self.settings, self.keys)
        recipient, message = self.composer.compose(plan, mail, datetime.now(UTC))
        log.debug("subscriptions: mailing %s", recipient)
        await session.send(recipient, message)

    async def _post(self, plan: Plan, mail: Mail) -> None:
        """A partner's webhook, signed as the webhook sink signs: HMAC-SHA256 over
        `"{timestamp}." + body` with the secret told at `subscription add`."""
        if self.client is None:
            self.client = httpx.AsyncClient(timeout=10, follow_redirects=False)
        body = json.dumps(webhook_body(plan, mail), ensure_ascii=False).encode()
        stamp = str(int(time.time()))
        secret = self.keys.webhook_secret(mail.nonce).encode()
        signature = hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": f"{mail.event_key}:{mail.subscriber}",
            "X-Channel-Monitor-Timestamp": stamp,
            "X-Channel-Monitor-Signature": f"sha256={signature}",
        }
        try:
            answer = await self.client.post(
                self.keys.open(mail.address), content=body, headers=headers
            )
        except httpx.HTTPError as exc:
            raise Failed(f"webhook unreachable ({type(exc).__name__})", False) from None
        if answer.status_code >= 500 or answer.status_code == 429:
            raise Failed(f"webhook answered {answer.status_code}", False)
        if answer.status_code >= 300:
            raise Failed(f"webhook answered {answer.status_code}", True)

"""One outbox row made into what is sent: a mail in the subscriber's language, or a partner's
JSON. Names and times come from the plan running now and from the event as queued, where the
plan's own answers were written (`reopens` is `Plan.next_up`); nothing is worked out here."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, parseaddr
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from monitor.subscriptions.keys import Keys
from monitor.subscriptions.words import WORDS, when

if TYPE_CHECKING:
    from monitor.plan import Plan
    from monitor.plan.subscriptions import SubscriptionSettings
    from monitor.store import Mail


def service_name(plan: Plan, key: str, lang: str) -> str:
    """`channel/service` (or a whole channel) as the plan names it, in `lang`."""
    channel_id, _, service_id = key.partition("/")
    channel = next((c for c in plan.config.channels if c.id == channel_id), None)
    if channel is None:
        return key
    channel_name = channel.name_en or channel.name if lang == "en" else channel.name
    if not service_id:
        return channel_name
    service = next((s for s in channel.services if s.id == service_id), None)
    if service is None:
        return key
    name = service.name_en or service.name if lang == "en" else service.name
    return f"{channel_name} {name}" if lang == "zh" else f"{name} ({channel_name})"


@dataclass(frozen=True, slots=True)
class Links:
    confirm: str
    unsubscribe: str


def links(settings: SubscriptionSettings, keys: Keys, mail: Mail) -> Links:
    base = f"{settings.public_url}/api/subscriptions"
    return Links(
        f"{base}/confirm/{keys.token('confirm', mail.nonce, mail.round)}",
        f"{base}/unsubscribe/{keys.token('unsubscribe', mail.nonce)}",
    )


def content(plan: Plan, mail: Mail, link: Links) -> tuple[str, str]:
    """Subject and text of the row's message in the subscriber's language."""
    lang = mail.lang if mail.lang in WORDS else "zh"
    w, zone = WORDS[lang], plan.zone
    event = json.loads(mail.payload)
    kind = event["kind"]
    if kind == "confirm":
        choices = event.get("choices", [])
        listed = "\n".join(f"· {service_name(plan, c, lang)}" for c in choices) or "·"
        return w["confirm_subject"], w["confirm_body"].format(services=listed, link=link.confirm)
    if kind == "notice":
        suffix = "_en" if lang == "en" else ""
        title, text = event[f"title{suffix}"], event[f"text{suffix}"]
        at = when(datetime.fromisoformat(event["at"]), zone, lang)
        return w["subject_notice"].format(title=title), w["notice_body"].format(at=at, text=text)
    if kind == "incident":
        name = service_name(plan, f"{event['channel']}/{event['service']}", lang)
        opened = event["state"] == "opened"
        subject = w["subject_down" if opened else "subject_up"].format(service=name)
        return subject, w["down_line" if opened else "up_line"].format(service=name)
    items = event["items"]
    chosen = [items[i] for i in mail.items] if mail.items else items
    names = [service_name(plan, f"{i['channel']}/{i['service']}", lang) for i in chosen]
    more = w["more"].format(count=len(names)) if len(names) > 1 else ""
    changes = [i["change"] for i in chosen]
    word = "/".join(w[c] for c in dict.fromkeys(changes))
    lines = []
    for item, name in zip(chosen, names, strict=True):
        if kind == "reminder":
            at = when(datetime.fromisoformat(event["at"]), zone, lang)
            lines.append(w[f"remind_{item['change']}"].format(service=name, at=at))
        elif item["change"] == "paused" and item.get("reopens"):
            reopens = when(datetime.fromisoformat(item["reopens"]), zone, lang)
            lines.append(w["paused_line"].format(service=name, reopens=reopens))
        elif item["change"] == "paused":
            lines.append(w["paused_open_end"].format(service=name))
        else:
            lines.append(w["reopened_line"].format(service=name))
    if kind == "reminder":
        subject = w["subject_remind"].format(
            word=w["reminder"],
            service=names[0],
            more=more,
            at=when(datetime.fromisoformat(event["at"]), zone, lang),
            change=word,
        )
    else:
        subject = w["subject_plan"].format(word=word, service=names[0], more=more)
    return subject, "\n".join(lines)


def email(
    plan: Plan, settings: SubscriptionSettings, keys: Keys, mail: Mail, now: datetime
) -> EmailMessage:
    """The mail of one row, with RFC 8058 one-click unsubscribe headers and a visible link."""
    link = links(settings, keys, mail)
    subject, text = content(plan, mail, link)
    w = WORDS[mail.lang if mail.lang in WORDS else "zh"]
    message = EmailMessage()
    message["From"] = settings.sender
    message["To"] = keys.open(mail.address)
    message["Subject"] = subject
    message["Date"] = format_datetime(now)
    digest = hashlib.sha256(f"{mail.event_key}:{mail.subscriber}".encode()).hexdigest()[:32]
    message["Message-ID"] = f"<{digest}@{urlsplit(settings.public_url).hostname}>"
    message["List-Unsubscribe"] = f"<{link.unsubscribe}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message["Auto-Submitted"] = "auto-generated"
    # base64: 7-bit safe for any relay, as `Composer` sends it
    message.set_content(text + w["footer"].format(link=link.unsubscribe), cte="base64")
    return message


#: An address that can stand in a To header as it is (no quoting, no encoded words).
_PLAIN = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+\Z")


class Composer:
    """Mails as the bytes sent, fast: the part every subscriber of an event shares (From and
    a Subject in encoded words, folded by the email package, the text) is made once per event,
    items and language, and each mail adds only its own ASCII headers (To, Date, Message-ID,
    List-Unsubscribe) and its base64 text with its own unsubscribe link.

    Folding headers with the email package was most of the sender's time on the bench
    machine (bench/RESULTS.md, "Subscribers mailed at 08:30"); 100,000 mails at one instant
    share a handful of subjects. A confirmation (its link is its own), or an address that
    would need quoting or encoding, is made whole by `email` as before. The result parses
    as `email` would make it.
    """

    #: Shared parts kept; more events than this at once start the cache afresh.
    KEEP = 512

    def __init__(self, settings: SubscriptionSettings, keys: Keys) -> None:
        self.settings, self.keys = settings, keys
        self.envelope_from = parseaddr(settings.sender)[1]
        self.host = urlsplit(settings.public_url).hostname
        self.shared: dict[tuple, tuple[bytes, str, str]] = {}

    def compose(self, plan: Plan, mail: Mail, now: datetime) -> tuple[str, bytes]:
        """(recipient, the message's bytes with CRLF line ends) of one row."""
        to = self.keys.open(mail.address)
        link = links(self.settings, self.keys, mail)
        if mail.event_key.startswith("confirm:") or not _PLAIN.match(to):
            message = email(plan, self.settings, self.keys, mail, now)
            return to, message.as_bytes(policy=SMTP_POLICY)
        key = (mail.event_key, mail.items, mail.lang)
        shared = self.shared.get(key)
        if shared is None:
            if len(self.shared) >= self.KEEP:
                self.shared.clear()
            shared = self.shared[key] = self._shared(plan, mail, link)
        head, text, footer = shared
        digest = hashlib.sha256(f"{mail.event_key}:{mail.subscriber}".encode()).hexdigest()[:32]
        own = (
            f"To: {to}\r\nDate: {format_datetime(now)}\r\n"
            f"Message-ID: <{digest}@{self.host}>\r\n"
            f"List-Unsubscribe: <{link.unsubscribe}>\r\n\r\n"
        ).encode()
        body = (text + footer.format(link=link.unsubscribe) + "\n").encode()
        lines = base64.encodebytes(body).replace(b"\n", b"\r\n")
        return to, head + own + lines

    def _shared(self, plan: Plan, mail: Mail, link: Links) -> tuple[bytes, str, str]:
        subject, text = content(plan, mail, link)
        w = WORDS[mail.lang if mail.lang in WORDS else "zh"]
        message = EmailMessage()
        message["From"] = self.settings.sender
        message["Subject"] = subject
        message["Auto-Submitted"] = "auto-generated"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        message["MIME-Version"] = "1.0"
        message["Content-Type"] = 'text/plain; charset="utf-8"'
        message["Content-Transfer-Encoding"] = "base64"
        head = message.as_bytes(policy=SMTP_POLICY).split(b"\r\n\r\n", 1)[0] + b"\r\n"
        return head, text, w["footer"]


def webhook_body(plan: Plan, mail: Mail) -> dict:
    """What a partner's webhook receives: the event with the plan's names, both languages."""
    event = json.loads(mail.payload)
    if "items" in event and mail.items:
        event["items"] = [event["items"][i] for i in mail.items]
    for item in event.get("items", [event] if "service" in event else []):
        key = f"{item['channel']}/{item['service']}"
        item["name"], item["name_en"] = service_name(plan, key, "zh"), service_name(plan, key, "en")
    return {"version": 1, "dedup_key": f"{mail.event_key}:{mail.subscriber}", **event}

"""The public API: `POST /api/subscriptions`, and the confirm and unsubscribe links.

The answer to a subscription is 202 whether the address is known or not, so nothing can be
learnt by asking. Bad input is a 400 with a sentence in both languages, a body over
`MAX_BODY` a 413, and asking too often, from one client or for one address, a 429 with
`Retry-After`. A link's GET only shows a page with one button; only its POST acts, so a mail
scanner that opens links confirms and unsubscribes nothing. The one-click POST of RFC 8058
(`List-Unsubscribe=One-Click`) is that same POST.
"""

from __future__ import annotations

import html
import json
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from email.headerregistry import Address
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from aiohttp import web

from monitor.store import Request
from monitor.store.subscribers import FULL
from monitor.subscriptions.keys import Keys, normalise
from monitor.subscriptions.words import LANGS, WORDS

if TYPE_CHECKING:
    from monitor.plan import Plan
    from monitor.store import Store

log = logging.getLogger(__name__)

MAX_BODY = 4096
MAX_CHOICES = 100
MAX_ADDRESS = 254
#: Unconfirmed addresses kept at once; past it new ones are refused (429) until some expire.
PENDING_CAP = 10_000
EXPIRES = 48 * 3600.0
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,64}\Z")


class Limiter:
    """At most `count` events per key within `window` seconds (a sliding log per key)."""

    def __init__(self, count: int, window: float, clock: Callable[[], float] = time.monotonic):
        self.count, self.window, self.clock = count, window, clock
        self.seen: dict[object, deque[float]] = {}

    def retry_after(self, key: object) -> float | None:
        """None, and the event counted, when allowed; else seconds until it would be."""
        now = self.clock()
        log_ = self.seen.setdefault(key, deque())
        while log_ and log_[0] <= now - self.window:
            log_.popleft()
        if len(log_) >= self.count:
            return log_[0] + self.window - now
        log_.append(now)
        if len(self.seen) > 100_000:  # forget keys whose events all passed
            for stale in [k for k, v in self.seen.items() if not v or v[-1] <= now - self.window]:
                del self.seen[stale]
        return None


class BadInput(Exception):
    """A 400: the message is the sentence the client gets."""


def _problem(status: int, zh: str, en: str, **headers: str) -> web.Response:
    return web.json_response(
        {"error": en, "error_zh": zh}, status=status, headers={**headers, **_CORS}
    )


_CORS = {"Access-Control-Allow-Origin": "*"}


def parse_choices(plan: Plan, raw: list[str]) -> tuple[str, ...]:
    """`channel/service` or `channel`, each known to the plan running now."""
    if not raw:
        raise BadInput("choose at least one service in `services` / 请至少选择一项服务")
    if len(raw) > MAX_CHOICES:
        raise BadInput(f"at most {MAX_CHOICES} services at once / 一次最多 {MAX_CHOICES} 项")
    out = []
    for choice in raw:
        if not isinstance(choice, str) or len(choice) > 200:
            raise BadInput("each service is a string `channel/service` / 服务须为“渠道/服务”")
        channel, slash, service = choice.partition("/")
        if (slash and plan.find((channel, service)) is None) or not any(
            c.id == channel for c in plan.config.channels
        ):
            raise BadInput("a service named in `services` is not in the plan / 所选服务不在计划中")
        out.append(choice)
    return tuple(dict.fromkeys(out))


def parse_address(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadInput("`email` is missing / 请填写邮箱")
    text = value.strip()
    bad = BadInput("`email` is not an e-mail address / 邮箱地址格式不对")
    if len(text) > MAX_ADDRESS or any(ch in text for ch in "\r\n<>,; ") or text.count("@") != 1:
        raise bad
    try:
        Address(addr_spec=text)
    except (ValueError, IndexError):
        raise bad from None
    if "." not in text.rpartition("@")[2]:
        raise bad
    return text


async def read_form(request: web.Request) -> dict[str, list]:
    """The body, form-encoded or JSON, as lists of values; BadInput or an oversize marker."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise OverflowError
    body = await request.content.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise OverflowError
    kind = request.content_type
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput("the body is not UTF-8 / 请求内容须为 UTF-8") from None
    if kind == "application/json":
        try:
            data = json.loads(text)
        except ValueError:
            raise BadInput("the body is not JSON / 请求内容不是合法的 JSON") from None
        if not isinstance(data, dict):
            raise BadInput("the body is a JSON object / 请求内容须为 JSON 对象")
        services = data.get("services", [])
        return {
            "email": [data.get("email")],
            "services": services if isinstance(services, list) else [services],
            "lang": [data.get("lang", "zh")],
        }
    if kind in ("application/x-www-form-urlencoded", ""):
        fields = parse_qs(text, keep_blank_values=True, max_num_fields=MAX_CHOICES + 10)
        return {
            "email": fields.get("email", [None])[-1:],
            "services": fields.get("services", []),
            "lang": fields.get("lang", ["zh"])[-1:],
        }
    raise BadInput("send the form form-encoded or as JSON / 请以表单或 JSON 提交")


def page(lang: str, title: str, text: str, button: str | None = None, status: int = 200):
    """A small page in the subscriber's language; `button` adds a form POSTing to itself."""
    form = (
        f'<form method="post"><button type="submit">{html.escape(button)}</button></form>'
        if button
        else ""
    )
    body = (
        f'<!doctype html><html lang="{"zh-CN" if lang == "zh" else "en"}"><head>'
        '<meta charset="utf-8"><meta name="viewport" content="width=device-width">'
        '<meta name="referrer" content="no-referrer"><link rel="icon" href="data:,">'
        f"<title>{html.escape(title)}</title></head><body><main><h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(text)}</p>{form}</main></body></html>"
    )
    return web.Response(
        text=body,
        status=status,
        content_type="text/html",
        headers={"Cache-Control": "no-store", "X-Robots-Tag": "noindex"},
    )


def _lang(request: web.Request) -> str:
    asked = request.query.get("lang", "")
    if asked in LANGS:
        return asked
    return "en" if request.headers.get("Accept-Language", "zh")[:2] == "en" else "zh"


class Api:
    """The handlers, on the plan source, the store and the keys."""

    def __init__(
        self,
        plan: Callable[[], Plan],
        store: Store,
        keys: Keys,
        wake: Callable[[], None],
        *,
        per_client: Limiter | None = None,
        per_address: Limiter | None = None,
        pending_cap: int = PENDING_CAP,
    ) -> None:
        self.plan, self.store, self.keys, self.wake = plan, store, keys, wake
        self.per_client = per_client or Limiter(10, 600.0)
        self.per_address = per_address or Limiter(3, 3600.0)
        self.pending_cap = pending_cap

    def routes(self) -> tuple:
        base = "/api/subscriptions"
        return (
            ("POST", base, self.subscribe),
            ("GET", base + "/confirm/{token}", self.confirm_page),
            ("POST", base + "/confirm/{token}", self.confirm),
            ("GET", base + "/unsubscribe/{token}", self.unsubscribe_page),
            ("POST", base + "/unsubscribe/{token}", self.unsubscribe),
        )

    async def subscribe(self, request: web.Request) -> web.StreamResponse:
        wait = self.per_client.retry_after(request.remote)
        if wait is not None:
            return _problem(
                429,
                "提交过于频繁，请稍后再试",
                "too many requests from this client; try again later",
                **{"Retry-After": str(int(wait) + 1)},
            )
        try:
            form = await read_form(request)
            address = parse_address((form["email"] or [None])[0])
            lang = (form["lang"] or ["zh"])[0]
            if lang not in LANGS:
                raise BadInput("`lang` is zh or en / 语言须为 zh 或 en")
            choices = parse_choices(self.plan(), form["services"])
        except OverflowError:
            return _problem(413, "请求内容过大", f"the body is larger than {MAX_BODY} bytes")
        except BadInput as exc:
            en, _, zh = str(exc).partition(" / ")
            return _problem(400, zh, en)
        lookup = self.keys.lookup(address)
        wait = self.per_address.retry_after(lookup)
        if wait is not None:
            return _problem(
                429,
                "该地址的请求过于频繁，请稍后再试",
                "too many requests for this address; try again later",
                **{"Retry-After": str(int(wait) + 1)},
            )
        nonce = self.keys.nonce()
        asked = Request(
            lookup=lookup,
            address=self.keys.seal(normalise(address)),
            medium="email",
            lang=lang,
            choices=choices,
            nonce=nonce,
            unsubscribe_hash=self.keys.unsubscribe_hash(nonce),
        )
        outcome = await self.store.call(
            self.store.subscribers.ask, asked, self.keys.confirm_hash, time.time(), self.pending_cap
        )
        if outcome == FULL:
            log.warning(
                "subscriptions: %d unconfirmed addresses wait; refusing more", self.pending_cap
            )
            return _problem(
                429,
                "待确认的订阅过多，请稍后再试",
                "too many subscriptions wait for confirmation; try again later",
                **{"Retry-After": "3600"},
            )
        self.wake()
        w = WORDS[lang]
        if request.content_type == "application/json":
            return web.json_response(
                {"status": "accepted", "message": w["page_accepted"]}, status=202, headers=_CORS
            )
        return page(lang, w["page_accepted"], w["page_accepted"], status=202)

    async def confirm_page(self, request: web.Request) -> web.StreamResponse:
        w = WORDS[_lang(request)]
        return page(_lang(request), w["page_confirm"], w["page_confirm_text"], w["page_confirm"])

    async def confirm(self, request: web.Request) -> web.StreamResponse:
        lang, token = _lang(request), request.match_info["token"]
        w = WORDS[lang]
        ok = _TOKEN.match(token) and await self.store.call(
            self.store.subscribers.confirm, Keys.token_hash(token), time.time(), EXPIRES
        )
        if not ok:
            return page(lang, w["page_unknown"], w["page_unknown"], status=404)
        return page(lang, w["page_confirm"], w["page_confirmed"])

    async def unsubscribe_page(self, request: web.Request) -> web.StreamResponse:
        lang = _lang(request)
        w = WORDS[lang]
        return page(lang, w["page_unsubscribe"], w["page_unsubscribe_text"], w["page_unsubscribe"])

    async def unsubscribe(self, request: web.Request) -> web.StreamResponse:
        lang, token = _lang(request), request.match_info["token"]
        w = WORDS[lang]
        await request.content.read(MAX_BODY)  # `List-Unsubscribe=One-Click`, or a button's
        ok = _TOKEN.match(token) and await self.store.call(
            self.store.subscribers.unsubscribe, Keys.token_hash(token)
        )
        if not ok:
            return page(lang, w["page_unknown"], w["page_unknown"], status=404)
        return page(lang, w["page_unsubscribe"], w["page_unsubscribed"])

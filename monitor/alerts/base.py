"""The one small interface every sink implements, and the error that tells the sender what to do.

A sink turns an `Alert` into one HTTP request and decides whether the answer means delivered.
It raises `SinkError` otherwise, with `permanent=True` when sending the same thing again cannot
help (a rejected payload, an unknown robot key, a bad signature): the sender gives that delivery
up and moves on. Anything else (connection errors, timeouts, 5xx, 429, rate limits) is retried
with backoff; a 429 or 503 that says `Retry-After` is retried no sooner than it asks (at most
`RETRY_AFTER_CAP` later). Messages never hold the sink's URL or secret: they are logged and
printed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Coroutine
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, TypeVar

import httpx

from monitor.alerts.message import Alert
from monitor.plan.sinks import AlertSink

USER_AGENT = "channel-monitor/0.1 (+alerts)"
#: Per network operation; a sink that trickles its answer passes every one of them, so the
#: sender also bounds each whole delivery (`sender.DELIVERY_TIMEOUT`).
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
#: The longest one delivery (or one re-send) may take, connection to last byte of the answer.
DELIVERY_TIMEOUT = 30.0
#: The longest wait a `Retry-After` can impose (a sink asking for a day is asking too much).
RETRY_AFTER_CAP = 300.0
#: The most of a sink's answer that is read: robots answer a few hundred bytes; a sink that
#: sends more is not waited on for the rest, nor held in memory.
MAX_ANSWER = 64 * 1024

T = TypeVar("T")

# httpx logs every request with its full URL at INFO; robot URLs carry their keys.
logging.getLogger("httpx").setLevel(logging.WARNING)


class SinkError(Exception):
    """A delivery that did not succeed; `permanent` says retrying cannot help, `retry_after`
    (seconds) how long the sink asked us to wait before the next try."""

    def __init__(
        self, message: str, permanent: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


async def within(delivery: Coroutine[Any, Any, T], seconds: float = DELIVERY_TIMEOUT) -> T:
    """Await one delivery for at most `seconds` in all (httpx bounds each read, not the
    whole answer); a timeout is a transient SinkError."""
    try:
        return await asyncio.wait_for(delivery, seconds)
    except TimeoutError:
        raise SinkError(f"no complete answer within {seconds:g} s") from None


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delay-seconds or an HTTP date), capped at
    RETRY_AFTER_CAP; None when it is absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # HTTP dates are GMT
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(0.0, seconds), RETRY_AFTER_CAP)


class Sink(ABC):
    """One configured `[[alerts]]` entry."""

    type: ClassVar[str]
    #: Whether open incidents are re-sent periodically (Alertmanager forgets silent alerts).
    refreshes: ClassVar[bool] = False
    #: Whether operators' notices go here too (robots and webhooks; not Alertmanager).
    takes_notices: ClassVar[bool] = True

    def __init__(self, config: AlertSink, client: httpx.AsyncClient) -> None:
        self.config = config
        self.client = client

    @property
    def name(self) -> str:
        return self.config.name

    def wants(self, alert: Alert) -> bool:
        """Whether this sink takes this alert (its directions, `send_resolved`)."""
        if alert.test:
            return True
        if alert.is_notice:
            return self.takes_notices
        if alert.direction not in self.config.directions:
            return False
        return not (alert.resolved and not self.config.send_resolved)

    @abstractmethod
    async def send(self, alert: Alert) -> str:
        """Deliver one alert; return a short description of the answer; raise SinkError."""

    async def refresh(self, alerts: list[Alert]) -> None:
        """Re-send what is still open (only sinks with `refreshes`)."""
        return None

    async def post(
        self, url: str, body: Any, *, params: dict | None = None, headers: dict | None = None
    ) -> httpx.Response:
        """POST JSON; a 2xx answer is returned, anything else raises SinkError."""
        content = body if isinstance(body, bytes) else json_bytes(body)
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL:  # not an HTTPError; its message may quote a part of the URL
            raise SinkError("invalid URL", permanent=True) from None
        if params:  # merged: httpx's `params=` would replace the URL's own query (the token)
            target = target.copy_merge_params(params)
        try:
            request = self.client.build_request(
                "POST",
                target,
                content=content,
                headers={"Content-Type": "application/json; charset=utf-8", **(headers or {})},
            )
            response = await self.client.send(request, stream=True)
            try:
                answer = bytearray()
                async for chunk in response.aiter_bytes():
                    answer += chunk
                    if len(answer) > MAX_ANSWER:
                        break
            finally:
                await response.aclose()
            response = httpx.Response(
                response.status_code,
                # decoded already: the copy must not be decoded again
                headers=[
                    (k, v)
                    for k, v in response.headers.multi_items()
                    if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
                ],
                content=bytes(answer[:MAX_ANSWER]),
                request=request,
            )
        except httpx.TimeoutException:
            raise SinkError("timeout") from None
        except httpx.ConnectError:
            raise SinkError("connection failed") from None
        except httpx.HTTPError as exc:  # the message of an httpx error may name the URL
            raise SinkError(f"request failed ({type(exc).__name__})") from None
        if 200 <= response.status_code < 300:
            return response
        status = response.status_code
        permanent = 400 <= status < 500 and status not in (408, 425, 429)
        wait = retry_after(response.headers.get("Retry-After")) if status in (429, 503) else None
        raise SinkError(f"HTTP {status}{_snippet(response)}", permanent=permanent, retry_after=wait)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def robot_answer(
    response: httpx.Response, code_keys: tuple[str, ...], transient: frozenset[int]
) -> str:
    """Chinese robots answer HTTP 200 with an error code in the body; 0 means delivered."""
    try:
        data = response.json()
    except ValueError:
        raise SinkError(f"HTTP {response.status_code}, answer is not JSON") from None
    if not isinstance(data, dict):
        raise SinkError(f"HTTP {response.status_code}, unexpected answer")
    for key in code_keys:
        if key in data:
            code = data[key]
            break
    else:
        raise SinkError(f"HTTP {response.status_code}, answer without an error code")
    if code == 0:
        return f"HTTP {response.status_code}, {code_keys[0]} 0"
    message = next((str(data[k]) for k in ("errmsg", "msg", "StatusMessage") if k in data), "")
    text = f"{code_keys[0]} {code}: {_short(message)}"
    raise SinkError(text, permanent=code not in transient)


def json_bytes(body: Any) -> bytes:
    """Compact UTF-8 JSON, Chinese kept as it is."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    # robots echo hints and request ids, not keys; cut before any URL all the same
    for marker in ("http://", "https://"):
        if marker in text:
            text = text[: text.index(marker)].rstrip(" ,;:")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _snippet(response: httpx.Response) -> str:
    try:
        text = response.text
    except Exception:
        return ""
    text = _short(text)
    return f" ({text})" if text else ""

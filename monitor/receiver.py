"""The receiving end of the push kind (monitor/kinds/push.py): `POST /push/<channel>/<service>`
and the silence timers.

The receiver answers:

| status | when | records anything |
| --- | --- | --- |
| 202 | accepted and judged | yes: the observation |
| 400 | not a JSON object of `serving` (bool), `reason` (<= 200 chars), `count` (>= 0) | no |
| 400 | arrays or objects nested more than 32 deep (refused before parsing) | no |
| 401 | no `Authorization: Bearer`, a wrong token, or a push whose token is not configured | no |
| 404 | no such service, or it is probed or schedule-only | no |
| 413 | the body is larger than 64 KiB (never read further) | no |
| 429 | more than 10 pushes within one second for one service | no |
| 408 | the body did not arrive within 10 seconds | no |
| 503 | the push could not be judged now (a fault of the monitor, logged; try again) | no |

Any text a client can send is kept: a lone UTF-16 surrogate in a reason (`"\\udc80"`, as an agent
that cuts a UTF-16 string in the middle of a pair sends) becomes U+FFFD, the replacement
character, where the body is parsed; a pair split over two escapes is joined. SQLite stores
UTF-8, which has no lone surrogates: kept as they came, they made the store's write fail.

Tokens are compared in constant time (`hmac.compare_digest`) and never logged, stored or shown.
Reasons: `push` (a heartbeat), `pushed: <the pusher's reason>` (or `pushed: count <n>` when only
a count came), `no push for <within>`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from monitor.fields import format_duration
from monitor.keyed_locks import KeyedLocks
from monitor.observation import Observation, not_configured
from monitor.part import Part

if TYPE_CHECKING:
    from aiohttp import web

    from monitor.pipeline import Pipeline, Result
    from monitor.plan import Plan, ServiceRef
    from monitor.plan.change import PlanChange

log = logging.getLogger(__name__)

#: The largest push body read (larger ones are refused with 413, unread).
MAX_BODY = 64 * 1024
#: At most this many pushes per service within `RATE_WINDOW` seconds.
RATE_LIMIT = 10
RATE_WINDOW = 1.0
#: The longest `reason` a push may carry.
MAX_REASON = 200
#: The deepest nesting of arrays and objects a push body may have (a reason, a count and a flag
#: need 1). Checked before parsing: JSON nested 30,000 deep exhausted the parser's recursion.
MAX_DEPTH = 32
#: How long a push body may take to arrive (408 after).
BODY_TIMEOUT = 10.0
ROUTE = "/push/{channel}/{service}"

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_BODY_KEYS = ("serving", "reason", "count")

Key = tuple[str, str]


class PushRefused(Exception):
    """A push that is not accepted: its HTTP status and a sentence in both languages."""

    def __init__(self, status: int, en: str, zh: str) -> None:
        super().__init__(en)
        self.status, self.en, self.zh = status, en, zh

    def response(self) -> web.Response:
        from aiohttp import web  # (the server's; importing the kind loads no HTTP stack)

        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        if self.status == 429:
            headers = {"Retry-After": "1"}
        body = {"error": self.en, "error_zh": self.zh}
        return web.json_response(body, status=self.status, headers=headers)


def not_pushed() -> PushRefused:
    """404: nothing at this address is observed by push (also: a reload just removed it)."""
    return PushRefused(
        404, "no service observed by push at this address", "此地址没有以推送方式观测的服务"
    )


@dataclass(frozen=True, slots=True)
class Report:
    """What one push body says."""

    serving: bool = True
    reason: str = "push"


def parse_body(raw: bytes) -> Report:
    """The report of a push body; raises PushRefused(400) saying what is wrong.

    `serving` wins when given; else a `count` says serving when it is above 0 (a counter that
    still moves is business still taken); an empty body is a heartbeat: serving."""
    if not raw.strip():
        return Report()
    if too_deep(raw):
        raise _bad(
            f"the body is nested more than {MAX_DEPTH} levels deep",
            f"请求体嵌套超过 {MAX_DEPTH} 层",
        )
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _bad("the body is not JSON", "请求体不是 JSON") from None
    if not isinstance(data, dict):
        raise _bad("the body must be a JSON object", "请求体必须是 JSON 对象")
    unknown = [clean_text(key) for key in data if key not in _BODY_KEYS]
    if unknown:
        raise _bad(
            f"unknown field {json.dumps(unknown[0])[:60]}; expected serving, reason, count",
            f"未知字段 {json.dumps(unknown[0], ensure_ascii=False)[:60]}；"
            "可用字段为 serving、reason、count",
        )
    serving, reason, count = data.get("serving"), data.get("reason"), data.get("count")
    if serving is not None and not isinstance(serving, bool):
        raise _bad("serving must be true or false", "serving 必须是 true 或 false")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise _bad("count must be a whole number of at least 0", "count 必须是不小于 0 的整数")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
        raise _bad(
            f"reason must be a string of at most {MAX_REASON} characters",
            f"reason 必须是不超过 {MAX_REASON} 个字符的字符串",
        )
    if serving is None:
        serving = count > 0 if count is not None else True
    text = _CONTROL.sub(" ", clean_text(reason)).strip() if reason else ""
    if not text and count is not None:
        text = f"count {count}"
    return Report(serving, f"pushed: {text}" if text else "push")


def clean_text(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD (a pair split in two code points is
    joined into its character). JSON's `\\uXXXX` escapes can say a lone surrogate, Python's
    `str` holds it, and UTF-8 (the store's, the log's, the page's) cannot encode it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def too_deep(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects nest more than `limit` deep in `raw` (brackets inside strings
    do not count). One pass over the bytes, and none when there are too few brackets."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    depth, in_string, escaped = 0, False, False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # closing quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte == 0x5B or byte == 0x7B:  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte == 0x5D or byte == 0x7D:  # ] }
            depth -= 1
    return False


def _bad(en: str, zh: str) -> PushRefused:
    return PushRefused(400, en, zh)


def bearer_matches(header: str | None, token: bytes) -> bool:
    """Whether an `Authorization` header carries `token` as a Bearer token (constant time)."""
    if not header:
        return False
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    offered = value.strip().encode("utf-8", "surrogateescape")
    return hmac.compare_digest(offered, token)


class RateLimit:
    """At most `limit` events per key within any `window` seconds (a sliding window)."""

    def __init__(self, limit: int = RATE_LIMIT, window: float = RATE_WINDOW) -> None:
        self.limit, self.window = limit, window
        self._seen: dict[Key, deque[float]] = {}

    def allow(self, key: Key, now: float) -> bool:
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = deque(maxlen=self.limit)
        if len(seen) == self.limit and now - seen[0] < self.window:
            return False
        seen.append(now)
        return True


async def read_capped(request: web.Request, cap: int = MAX_BODY) -> bytes | None:
    """The body, or None when it is over `cap` bytes (checked on Content-Length first, and
    never more than `cap` + 1 bytes read whatever the header said)."""
    length = request.content_length
    if length is not None and length > cap:
        return None
    chunks: list[bytes] = []
    size = 0
    while size <= cap:
        chunk = await request.content.read(cap + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return None if size > cap else b"".join(chunks)


class PushReceiver:
    """`POST /push/<channel>/<service>` and the `within` timers of every push service."""

    def __init__(
        self,
        pipeline: Pipeline,
        monotonic: Callable[[], float] | None = None,
        watch_silence: bool = True,
    ) -> None:
        """`watch_silence` False leaves the `within` timers off: on a replayed clock (the demo)
        the replay asks `overdue(at)` at its own simulated instants instead."""
        self.pipeline = pipeline
        self.watch_silence = watch_silence
        #: How long a push body may take to arrive (seconds).
        self.body_timeout = BODY_TIMEOUT
        #: The clock of the rate limit (seconds); the event loop's when None.
        self.monotonic = monotonic
        self._set_services(pipeline.plan)
        self._rate = RateLimit()
        self._judging = KeyedLocks()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        #: The instant each configured service's `within` runs from: its last push, its last
        #: observed silence, or the start.
        self._since: dict[Key, datetime] = {}
        self._tasks: set[asyncio.Task] = set()
        self._stopped = False

    def _set_services(self, plan: Plan) -> None:
        self.services: dict[Key, ServiceRef] = {
            ref.key: ref for ref in plan.services if ref.service.push is not None
        }
        #: Tokens of the configured push services (a `${NAME}` left unset: none, so 401).
        self._tokens: dict[Key, bytes] = {
            key: ref.service.push.token.encode("utf-8")
            for key, ref in self.services.items()
            if ref.service.push is not None and not ref.service.unset
        }

    def use_plan(self, change: PlanChange) -> None:
        """A reload: push to the new plan's services from now on. A removed service answers
        404 and its `within` clock stops; a new (or changed) one starts its clock now, or is
        judged not configured now; a kept one keeps its clock and its silence."""
        self._set_services(change.new)
        fresh = change.added | change.changed
        for key in list(self._timers):
            if key not in self.services or key in fresh:
                self._timers.pop(key).cancel()
        if self._stopped:
            return
        now = self.pipeline.clock.now()
        for key in list(self._since):
            if key not in self._tokens:
                del self._since[key]
        for key, ref in self.services.items():
            if key not in fresh:
                continue
            if key in self._tokens:
                self._since[key] = now
                self._arm(ref)
            else:
                task = asyncio.get_running_loop().create_task(
                    self.pipeline.judge(ref, not_configured(ref, self.pipeline.clock.now()))
                )
                self._tasks.add(task)
                task.add_done_callback(self._done)

    # --- lifecycle --------------------------------------------------------------------------

    def part(self) -> Part:
        """Serve the route; arm the timers when the web server starts, stop them when it
        stops; take up an edited plan."""
        return Part(
            plan_user=self,
            routes=(("POST", ROUTE, self.handle),),
            on_startup=(self._on_startup,),
            on_shutdown=(self._on_shutdown,),
        )

    async def _on_startup(self, _app: web.Application) -> None:
        await self.start()

    async def _on_shutdown(self, _app: web.Application) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start every configured push service's `within` clock now; say of the others that
        they are not configured (judged `unknown`, reason `not configured: set NAME`)."""
        self._stopped = False
        now = self.pipeline.clock.now()
        for key, ref in self.services.items():
            if key in self._tokens:
                self._since[key] = now
                self._arm(ref)
            else:
                await self.pipeline.judge(ref, not_configured(ref, self.pipeline.clock.now()))

    async def stop(self) -> None:
        """Cancel the timers; let silence observations already being judged finish."""
        self._stopped = True
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    # --- one push ---------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        """`POST /push/<channel>/<service>`: 202 with the verdict, or the refusal's status."""
        key = (request.match_info["channel"], request.match_info["service"])
        authorization = request.headers.get("Authorization")
        try:
            result = await self.receive(key, authorization, lambda: self._read(request))
        except PushRefused as refused:
            log.debug("push to %s/%s refused: %d", *_printable(key), refused.status)
            return refused.response()
        except Exception:  # the monitor's fault, not the pusher's: say so, and to retry
            log.exception("push to %s/%s could not be judged", *_printable(key))
            return PushRefused(
                503,
                "the monitor could not take the push now; send it again",
                "监测程序暂时无法接收推送，请重新发送",
            ).response()
        log.debug("push to %s/%s: %s", *_printable(key), result.observation.reason)
        body = push_answer(result)
        from aiohttp import web  # (the server's; importing the kind loads no HTTP stack)

        return web.json_response(body, status=202)

    async def _read(self, request: web.Request) -> bytes | None:
        """The body (None when over the cap), within `body_timeout` or PushRefused(408)."""
        try:
            async with asyncio.timeout(self.body_timeout):
                return await read_capped(request)
        except TimeoutError:  # a pusher that trickles its body holds nothing for long
            raise PushRefused(
                408, "the body did not arrive in time", "请求体未能按时收到"
            ) from None

    async def receive(
        self, key: Key, authorization: str | None, read: Callable[[], Awaitable[bytes | None]]
    ) -> Result:
        """Check, read, judge; raises PushRefused, and then nothing is recorded. `read` gives
        the body, or None when it is over the cap; it is called only once the token matched.
        The HTTP route and the demo's simulated kiosks both come through here."""
        ref = self._check(key, authorization)
        raw = await read()
        if raw is None:
            raise PushRefused(
                413,
                f"the body is larger than {MAX_BODY // 1024} KiB",
                f"请求体超过 {MAX_BODY // 1024} KiB",
            )
        result = await self.accept(ref, parse_body(raw))
        if result is None:  # a reload removed the service while its push was judged
            raise not_pushed()
        return result

    def _check(self, key: Key, authorization: str | None) -> ServiceRef:
        """The service pushed to, or PushRefused: 404, then 401, then 429."""
        ref = self.services.get(key)
        if ref is None:
            raise not_pushed()
        token = self._tokens.get(key)
        if token is None or not bearer_matches(authorization, token):
            raise PushRefused(
                401,
                "missing or wrong token (Authorization: Bearer <token>)",
                "缺少令牌或令牌错误（Authorization: Bearer <令牌>）",
            )
        if not self._rate.allow(key, self._now()):
            raise PushRefused(
                429,
                f"more than {RATE_LIMIT} pushes a second for this service",
                f"该服务每秒推送超过 {RATE_LIMIT} 次",
            )
        return ref

    async def accept(self, ref: ServiceRef, report: Report) -> Result | None:
        """Judge one accepted push as an observation now; restart the service's clock."""
        async with self._judging.hold(ref.key):
            observation = Observation(self.pipeline.clock.now(), report.serving, report.reason)
            self._since[ref.key] = observation.at
            result = await self.pipeline.judge(ref, observation)
            self._arm(ref)
        return result

    async def overdue(self, at: datetime, keys: Iterable[Key] | None = None) -> list[Result]:
        """Observe, at `at`, the silence of every configured push service (of `keys`, when
        given) that has had no push for its `within`: the deadline check, asked with an
        instant by `run`'s timers and by the replay at each of its steps."""
        results = []
        for key in list(self._since if keys is None else keys):
            since, ref = self._since.get(key), self.services.get(key)
            if since is None or ref is None or key not in self._tokens:
                continue  # a reload removed it, or left it not configured
            push = ref.service.push
            assert push is not None
            if at - since < push.within:
                continue
            async with self._judging.hold(key):
                if at - self._since[key] >= push.within:  # no push came while waiting
                    result = await self._silent(ref, at)
                    if result is not None:
                        results.append(result)
        return results

    # --- silence ----------------------------------------------------------------------------

    def _arm(self, ref: ServiceRef) -> None:
        """(Re)start the service's timer for the rest of its `within` (no timers when a replay
        asks `overdue` itself, none for a service a reload removed)."""
        if self._stopped or not self.watch_silence or ref.key not in self.services:
            return
        push = ref.service.push
        assert push is not None
        old = self._timers.pop(ref.key, None)
        if old is not None:
            old.cancel()
        left = self._since[ref.key] + push.within - self.pipeline.clock.now()
        loop = asyncio.get_running_loop()
        self._timers[ref.key] = loop.call_later(max(left.total_seconds(), 0.0), self._silence, ref)

    def _silence(self, ref: ServiceRef) -> None:
        self._timers.pop(ref.key, None)
        if self._stopped:
            return
        task = asyncio.get_running_loop().create_task(self._timer_fired(ref))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    async def _timer_fired(self, ref: ServiceRef) -> None:
        """A timer's deadline came: ask `overdue` now. When it finds nothing (a push came
        meanwhile, or the wall clock lags the loop's by a hair) and no push re-armed the
        timer, wait for the rest of the `within`."""
        found = await self.overdue(self.pipeline.clock.now(), (ref.key,))
        if not found and ref.key not in self._timers:
            self._arm(ref)

    async def _silent(self, ref: ServiceRef, at: datetime) -> Result | None:
        """Judge the silence of `ref` at `at` and start its `within` again (caller holds the
        service's lock)."""
        push = ref.service.push
        assert push is not None
        reason = f"no push for {format_duration(push.within)}"
        self._since[ref.key] = at
        result = await self.pipeline.judge(ref, Observation(at, False, reason))
        self._arm(ref)  # and again after each further `within` of silence
        return result

    async def silence(self, ref: ServiceRef) -> Result | None:
        """Judge a silence of `ref` now, due or not (`overdue` asks whether it is due)."""
        async with self._judging.hold(ref.key):
            return await self._silent(ref, self.pipeline.clock.now())

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("push: judging a silence failed", exc_info=task.exception())

    # --- helpers ----------------------------------------------------------------------------

    def _now(self) -> float:
        if self.monotonic is not None:
            return self.monotonic()
        return asyncio.get_running_loop().time()


def _printable(key: Key) -> tuple[str, str]:
    """Ids from a request path, cut and cleaned for a log line (they are the caller's text)."""
    return tuple(_CONTROL.sub("?", clean_text(part))[:64] for part in key)  # type: ignore[return-value]


def push_answer(result: Result) -> dict:
    """The body of an accepted push: what this push said and whether it agrees with the
    plan, apart from the state of the service's incident. `verdict` (the service's
    confirmed verdict, which follows the incident) stays for the pushers written against it;
    a pusher that reports "down" during a freeze reads `matches_plan: true` even while the
    incident its earlier "up" pushes opened is still `open` (it resolves after
    `success_threshold` agreeing pushes)."""
    from monitor.judge import mismatch

    incident = result.judgement.state.incident
    return {
        "accepted": True,
        "channel": result.ref.channel.id,
        "service": result.ref.service.id,
        "at": result.observation.at.isoformat(),
        "serving": result.observation.serving,
        "expected": result.expectation.state,
        "matches_plan": mismatch(result.expectation, result.observation.serving) is None,
        "incident": {
            "open": incident is not None,
            "direction": incident.direction.value if incident is not None else None,
        },
        "verdict": result.verdict.value,
    }

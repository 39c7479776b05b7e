"""Simulated channels: each service answers the way its real channel would be observed,
following the plan on the replay clock, with faults (`faults.py`) that break it on demand.

Every probe keeps the plan's own checks, so each answer is made for them (`answers.py`): a
page holds a text the probe's `body_matches` finds, or its maintenance notice while paused; a
back end answers JSON its `json` conditions accept, or fail; a query gives a value its
`serving_if` accepts, or not. The routes:

- `GET|POST /page/<channel>/<service>`: a web page (kind http): a normal page while serving,
  the cutover notice while paused (a 503 when the probe reads no text that would show it).
- `GET /portal/<channel>/<service>`: a portal built by script (kind browser): its HTML holds
  no notice at all; its script fetches `<page>/state` and writes "open" or the notice, so only
  a browser sees it.
- `GET /app/<channel>/<service>/status`, `POST /app/<channel>/<service>`: the back end of an
  app, the WeChat account or the Alipay mini-program (kind http with `json`):
  `{"code": 0, "data": {"open": true}}` while serving, a maintenance code while paused.
- `GET|POST /prometheus/api/v1/query`: the tax system's Prometheus (kind prometheus): the
  increase of the payment counter, > 0 while serving, 0 while paused.

The query endpoint answers Prometheus' instant-query JSON for the service whose probe asks
that query (else the one its `channel` and `business` labels name), at the query's `time`.
Offline channels are not served here: `Pushers` plays their own systems, pushing to the
monitor. DNS is not served at all (the demo leaves those services unknown).

A fault overrides the plan for its window with one of four behaviours: `up` and `down` (the
channel serves, or shows itself paused, whatever the plan says), `slow` (it answers
`SLOW_SECONDS` late, after the probe's timeout, which the demo caps at `SLOW_TIMEOUT` for
such a service; a push comes too late, i.e. not at all) and `silent` (the connection is closed
without an answer, a query has no data, a push system sends nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import multiprocessing
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from monitor.clock import Clock
from monitor.pipeline import Result
from monitor.plan import Plan, ServiceRef
from monitor.plan.schema import PlanConfig
from monitor.receiver import MAX_BODY, PushReceiver, PushRefused

from .answers import json_answer, query_value, text_matching

MAINTENANCE_TEXT = "系统切换中，本业务暂停办理 / Service suspended during the system cutover"
MAINTENANCE_PATTERN = "暂停办理"
#: The code the simulated back ends answer while a service is paused.
MAINTENANCE_CODE = 50301
#: Payments counted in ten minutes by a simulated tax system that is taking them.
PAYMENTS = 17
OPEN_TEXT = "业务办理 / Service open"
#: What a fault can make a service do (see the module).
BEHAVIOURS = ("up", "down", "slow", "silent")
#: How late a `slow` service answers, and the timeout the demo gives its probe (so the replay
#: waits a second for it, not the probe's own ten or thirty).
SLOW_SECONDS = 1.5
SLOW_TIMEOUT = timedelta(seconds=1)

_LABEL = re.compile(r'\b(channel|business)\s*=\s*"([^"]*)"')

_PORTAL = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><link rel="icon" href="data:,">
<title>服务平台</title></head><body><main id="app">加载中 Loading</main>
<script>
fetch(location.pathname + "/state").then(r => r.json()).then(s => {
  const notice = document.createElement("p");
  notice.id = "notice";
  notice.textContent = s.open ? s.text : s.notice;
  document.getElementById("app").replaceChildren(notice);
});
</script></body></html>
"""


@dataclass(frozen=True, slots=True)
class Fault:
    """A departure from the plan: the service behaves as `behaviour` says during
    [start, end) (one of BEHAVIOURS)."""

    channel: str
    service: str
    start: datetime
    end: datetime
    behaviour: str
    story: str
    story_en: str

    @property
    def serving(self) -> bool:
        """Whether the service is seen serving during the fault."""
        return self.behaviour == "up"

    @property
    def direction(self) -> str:
        """The incident direction this fault causes where the plan expects the opposite."""
        return "unexpected_up" if self.serving else "unexpected_down"


class Simulator:
    """The simulated channels of a plan on a clock."""

    def __init__(
        self,
        plan: Plan,
        clock: Clock,
        faults: Sequence[Fault] = (),
        tokens: Mapping[tuple[str, str], str] | None = None,
    ) -> None:
        self.plan = plan
        self.clock = clock
        self.faults = list(faults)
        #: Bearer tokens the back ends require, by service (as the plan's probes send them).
        self.tokens = dict(tokens or {})
        self.requests = 0
        #: The service each prometheus probe's query stands for (the first, if shared).
        self.queries: dict[str, ServiceRef] = {}
        for ref in plan.services:
            probe = ref.service.probe
            if probe is not None and probe.kind == "prometheus":
                self.queries.setdefault(probe.query.strip(), ref)

    def behaviour(self, channel: str, service: str, at: datetime) -> str:
        """What the simulated service does at `at`: a fault's behaviour if one is active,
        else what the plan expects (`up`, or `down` while it pauses the service)."""
        for fault in self.faults:
            if (
                fault.channel == channel
                and fault.service == service
                and fault.start <= at < fault.end
            ):
                return fault.behaviour
        expected = self.plan.expected(self.plan.service(channel, service), at).state
        return "down" if expected == "down" else "up"

    def serving(self, channel: str, service: str, at: datetime) -> bool:
        """Whether the simulated service serves at `at` (see `behaviour`)."""
        return self.behaviour(channel, service, at) == "up"

    async def _now(self, request: web.Request) -> tuple[ServiceRef, bool]:
        """Count the request, find its service (404 when there is none), play a `slow` or
        `silent` fault, and say whether it serves."""
        self.requests += 1
        channel, service = request.match_info["channel"], request.match_info["service"]
        try:
            ref = self.plan.service(channel, service)
        except KeyError:
            raise web.HTTPNotFound() from None
        behaviour = self.behaviour(channel, service, self.clock.now())
        return ref, await _play(request, behaviour)

    async def page(self, request: web.Request) -> web.Response:
        ref, serving = await self._now(request)
        probe = ref.service.probe
        status = (getattr(probe, "expect_status", None) or (200,))[0]
        matches = getattr(probe, "body_matches", None)
        hides = getattr(probe, "body_not_matches", None)
        if serving:
            text = OPEN_TEXT + " " + ((text_matching(matches) or "") if matches else "")
        else:
            text = MAINTENANCE_TEXT
            notice = text_matching(hides) if hides else None
            if hides and notice is not None and not re.search(hides, text):
                text += " " + notice
            if getattr(probe, "method", "GET") == "HEAD" or (notice is None and not matches):
                status = 503  # nothing in the body would show the pause to this probe
        return web.Response(
            text=f"<html><body>{text}</body></html>", content_type="text/html", status=status
        )

    async def portal(self, request: web.Request) -> web.Response:
        await self._now(request)
        return web.Response(text=_PORTAL, content_type="text/html")

    async def portal_state(self, request: web.Request) -> web.Response:
        ref, serving = await self._now(request)
        probe = ref.service.probe
        wanted = getattr(probe, "text_matches", None)
        hides = getattr(probe, "text_not_matches", None)
        text = OPEN_TEXT + " " + ((text_matching(wanted) or "") if wanted else "")
        notice = MAINTENANCE_TEXT
        if hides and not re.search(hides, notice):
            notice += " " + (text_matching(hides) or "")
        return web.json_response({"open": serving, "text": text, "notice": notice})

    async def app_status(self, request: web.Request) -> web.Response:
        key = (request.match_info["channel"], request.match_info["service"])
        token = self.tokens.get(key)
        offered = request.headers.get("Authorization", "")
        if token is not None and not hmac.compare_digest(offered, f"Bearer {token}"):
            self.requests += 1
            return web.json_response({"code": 401, "msg": "unauthorised"}, status=401)
        ref, serving = await self._now(request)
        conditions = getattr(ref.service.probe, "json_conditions", ())
        body = json_answer(conditions, serving) if conditions else None
        if body is None:  # conditions the simulator builds no answer for: its own
            body = {"code": 0, "data": {"open": True}}
            if not serving:
                body = {"code": MAINTENANCE_CODE, "data": {"open": False}}
        body.setdefault("msg", "ok" if serving else MAINTENANCE_TEXT)
        return web.json_response(body)

    async def query(self, request: web.Request) -> web.Response:
        """Prometheus' `/api/v1/query`: the increase of the payment counter of the service
        that asks this query (else the one its labels name), at the query's `time` (the replay
        clock when absent), such that the probe's `serving_if` holds exactly while serving."""
        self.requests += 1
        form = await request.post() if request.method == "POST" else request.query
        text = str(form.get("query") or request.query.get("query") or "")
        try:
            at = datetime.fromtimestamp(float(str(form.get("time"))), UTC)
        except (TypeError, ValueError):
            at = self.clock.now()
        ref = self.queries.get(text.strip())
        if ref is None:
            labels = dict(_LABEL.findall(text))
            with contextlib.suppress(KeyError):
                ref = self.plan.service(labels.get("channel", ""), labels.get("business", ""))
        result: list[dict[str, Any]] = []  # no such series: an empty vector
        if ref is not None:
            behaviour = self.behaviour(ref.channel.id, ref.service.id, at)
            if behaviour == "slow":
                await asyncio.sleep(SLOW_SECONDS)
            if behaviour != "silent":
                comparison = getattr(ref.service.probe, "serving_if", None)
                serving = behaviour in ("up", "slow")
                value: float = PAYMENTS if serving else 0
                if comparison is not None:
                    value = query_value(comparison, serving, PAYMENTS)
                result = [{"metric": {}, "value": [at.timestamp(), f"{value:g}"]}]
        data = {"resultType": "vector", "result": result}
        return web.json_response({"status": "success", "data": data})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/page/{channel}/{service}", self.page)
        app.router.add_post("/page/{channel}/{service}", self.page)
        app.router.add_get("/portal/{channel}/{service}", self.portal)
        app.router.add_get("/portal/{channel}/{service}/state", self.portal_state)
        app.router.add_get("/app/{channel}/{service}/status", self.app_status)
        app.router.add_post("/app/{channel}/{service}", self.app_status)
        app.router.add_route("*", "/prometheus/api/v1/query", self.query)
        return app


async def _play(request: web.Request, behaviour: str) -> bool:
    """Play a `slow` fault (answer late) or a `silent` one (close the connection without an
    answer); say whether the service serves."""
    if behaviour == "slow":
        await asyncio.sleep(SLOW_SECONDS)
    elif behaviour == "silent":
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError("silent fault: the connection is closed unanswered")
    return behaviour in ("up", "slow")


class SharedClock:
    """The replay clock's instant, shared with the simulator's process through shared memory."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.value.value, UTC)


@dataclass(frozen=True)
class World:
    """What the simulator's process needs to build its Simulator (picklable)."""

    config: PlanConfig
    faults: tuple[Fault, ...]
    tokens: Mapping[tuple[str, str], str]

    def simulator(self, clock: Clock) -> Simulator:
        return Simulator(Plan(self.config), clock, self.faults, self.tokens)


def serve_in_process(world: World, instant: Any, requests: Any, ready: Any, stop: Any) -> None:
    """Entry point of the simulator's own process: serve on a free loopback port, report the
    port through `ready`, count requests in `requests`, and return when `stop` is set."""
    asyncio.run(_serve(world, instant, requests, ready, stop))


async def _serve(world: World, instant: Any, requests: Any, ready: Any, stop: Any) -> None:
    simulator = world.simulator(SharedClock(instant))
    runner = web.AppRunner(simulator.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    ready.put(runner.addresses[0][1])
    loop = asyncio.get_running_loop()
    try:
        while not await loop.run_in_executor(None, stop.wait, 0.2):
            requests.value = simulator.requests
    finally:
        requests.value = simulator.requests
        await runner.cleanup()


class SimulatorProcess:
    """Runs the simulator in a child process, so it has the second core to itself."""

    def __init__(
        self,
        config: PlanConfig,
        faults: Sequence[Fault],
        start: datetime,
        tokens: Mapping[tuple[str, str], str] | None = None,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.instant = context.Value("d", start.timestamp(), lock=False)
        self.requests = context.Value("q", 0, lock=False)
        self._ready = context.Queue()
        self._stop = context.Event()
        self.process = context.Process(
            target=serve_in_process,
            args=(
                World(config, tuple(faults), dict(tokens or {})),
                self.instant,
                self.requests,
                self._ready,
                self._stop,
            ),
            name="channel-monitor-simulator",
            daemon=True,
        )
        self.port = 0

    def start(self, timeout: float = 30.0) -> int:
        self.process.start()
        self.port = self._ready.get(timeout=timeout)
        return self.port

    def set(self, at: datetime) -> None:
        """Move the simulated channels' clock (called with the replay clock)."""
        self.instant.value = at.timestamp()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


# --- the offline channels' own systems ---------------------------------------------------------

#: How each offline channel's systems report: `state` pushes serving true/false with a reason,
#: `count` pushes the payments taken since the last push, `agent` sends a bare heartbeat while
#: the function is on and falls silent while it is off (the monitor's `within` notices).
PUSH_STYLES = {
    "gov-service-hall": "state",
    "si-service-hall": "state",
    "si-bank-outlets": "state",
    "tax-service-hall": "count",
    "tax-bank-outlets": "count",
    ("self-service-kiosks", "si-contribution"): "count",
    ("self-service-kiosks", "medical-premium"): "count",
    "self-service-kiosks": "agent",
}
PAUSED_REASON = "窗口暂停受理 counter paused for the cutover"


def push_style(ref: ServiceRef) -> str:
    """How the simulated systems of `ref`'s channel push (see PUSH_STYLES)."""
    return PUSH_STYLES.get(ref.key) or PUSH_STYLES.get(ref.channel.id, "state")


def push_body(style: str, serving: bool) -> bytes | None:
    """What a system of `style` sends while `serving` or not; None: it sends nothing."""
    if style == "agent":
        return b"" if serving else None
    if style == "count":
        return json.dumps({"count": PAYMENTS if serving else 0}).encode()
    report: dict[str, Any] = {"serving": serving}
    if not serving:
        report["reason"] = PAUSED_REASON
    return json.dumps(report, ensure_ascii=False).encode()


class Pushers:
    """The halls', banks', kiosks' and POS machines' own systems: at each replay step each
    pushes what it sees to the monitor's receiver, through the same checks as
    `POST /push/<channel>/<service>` (token, size, body, rate), with the plan's token."""

    def __init__(self, simulator: Simulator, receiver: PushReceiver) -> None:
        self.simulator = simulator
        self.receiver = receiver
        self.refs = [
            ref
            for ref in receiver.services.values()
            if ref.service.push is not None and not ref.service.unset
        ]
        self.sent = 0
        #: Refusals by HTTP status (none is expected: a refusal is a bug the demo reports).
        self.refused: dict[int, int] = {}

    async def push(self, at: datetime) -> list[Result]:
        """Every configured push service's system reports once at `at`."""
        results = []
        for ref in self.refs:
            behaviour = self.simulator.behaviour(ref.channel.id, ref.service.id, at)
            if behaviour in ("slow", "silent"):
                continue  # a push too late is one not made: the receiver's `within` finds it
            body = push_body(push_style(ref), behaviour == "up")
            if body is None:
                continue
            push = ref.service.push
            assert push is not None
            self.sent += 1
            try:
                result = await self.receiver.receive(ref.key, f"Bearer {push.token}", _capped(body))
            except PushRefused as refused:
                self.refused[refused.status] = self.refused.get(refused.status, 0) + 1
                continue
            results.append(result)
        return results


def _capped(body: bytes) -> Any:
    """A `read` for PushReceiver.receive: the body, or None when over the receiver's cap."""

    async def read() -> bytes | None:
        return body if len(body) <= MAX_BODY else None

    return read

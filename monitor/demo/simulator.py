"""Simulated channels: one HTTP route per service of the plan, following the plan on the
replay clock, with scripted faults that break it in both directions.

A service the plan expects up answers 200 with a normal page; one the plan expects down
answers 200 with a maintenance notice (as real portals do during a cutover), which the demo's
probes recognise with `body_not_matches`. A fault overrides the plan for its window.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from monitor.clock import Clock
from monitor.config import PlanConfig
from monitor.plan import Plan

MAINTENANCE_TEXT = "系统切换中，本业务暂停办理 / Service suspended during the system cutover"
MAINTENANCE_PATTERN = "暂停办理"


@dataclass(frozen=True, slots=True)
class Fault:
    """A scripted departure from the plan: the service `serving` or not during [start, end)."""

    channel: str
    service: str
    start: datetime
    end: datetime
    serving: bool
    story: str
    story_en: str

    @property
    def direction(self) -> str:
        """The incident direction this fault should cause."""
        return "unexpected_up" if self.serving else "unexpected_down"


class Simulator:
    """The simulated channels of a plan on a clock."""

    def __init__(self, plan: Plan, clock: Clock, faults: Sequence[Fault] = ()) -> None:
        self.plan = plan
        self.clock = clock
        self.faults = list(faults)
        self.requests = 0

    def serving(self, channel: str, service: str, at: datetime) -> bool:
        """What the simulated service does at `at`: a fault if one is active, else the plan."""
        for fault in self.faults:
            if (
                fault.channel == channel
                and fault.service == service
                and fault.start <= at < fault.end
            ):
                return fault.serving
        return self.plan.expected(self.plan.service(channel, service), at).state != "down"

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        channel, service = request.match_info["channel"], request.match_info["service"]
        try:
            self.plan.service(channel, service)
        except KeyError:
            raise web.HTTPNotFound() from None
        if self.serving(channel, service, self.clock.now()):
            return web.Response(
                text="<html><body>业务办理 / Service open</body></html>", content_type="text/html"
            )
        return web.Response(
            text=f"<html><body>{MAINTENANCE_TEXT}</body></html>", content_type="text/html"
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{channel}/{service}", self.handle)
        return app


class SharedClock:
    """The replay clock's instant, shared with the simulator's process through shared memory."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.value.value, UTC)


def serve_in_process(
    config: PlanConfig, faults: Sequence[Fault], instant: Any, requests: Any, ready: Any, stop: Any
) -> None:
    """Entry point of the simulator's own process: serve on a free loopback port, report the
    port through `ready`, count requests in `requests`, and return when `stop` is set."""
    asyncio.run(_serve(config, faults, instant, requests, ready, stop))


async def _serve(
    config: PlanConfig, faults: Sequence[Fault], instant: Any, requests: Any, ready: Any, stop: Any
) -> None:
    simulator = Simulator(Plan(config), SharedClock(instant), faults)
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

    def __init__(self, config: PlanConfig, faults: Sequence[Fault], start: datetime) -> None:
        context = multiprocessing.get_context("spawn")
        self.instant = context.Value("d", start.timestamp(), lock=False)
        self.requests = context.Value("q", 0, lock=False)
        self._ready = context.Queue()
        self._stop = context.Event()
        self.process = context.Process(
            target=serve_in_process,
            args=(config, list(faults), self.instant, self.requests, self._ready, self._stop),
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

"""Simulated channels: one HTTP route per service of the plan, following the plan on the
replay clock, with scripted faults that break it in both directions.

A service the plan expects up answers 200 with a normal page; one the plan expects down
answers 200 with a maintenance notice (as real portals do during a cutover), which the demo's
probes recognise with `body_not_matches`. A fault overrides the plan for its window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from aiohttp import web

from monitor.clock import Clock
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

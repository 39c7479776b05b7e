"""The monitor's one HTTP server: `/healthz`, and the routes the parts hand the daemon
(`/metrics`, `POST /push/...`, the page).

The daemon builds it and adds each part's routes and hooks (`add`); the server knows no part
and no part knows it. `/healthz` answers what the daemon's health callable says, so what is
healthy is decided where the parts are known.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from monitor.part import Part

log = logging.getLogger(__name__)

#: The body of `/healthz` and its status (200, or 503 while the monitor cannot keep what it
#: observes).
Health = Callable[[], tuple[dict, int]]


class Server:
    """One aiohttp application on `host:port` (port 0: any free one, read back at start)."""

    def __init__(self, host: str, port: int, health: Health) -> None:
        self.host = host
        self.port = port
        self.health = health
        self.app = web.Application()
        self.app.router.add_get("/healthz", self.healthz)
        self.runner: web.AppRunner | None = None

    def add(self, part: Part) -> None:
        """Serve a part's routes (in the order added: the page's catch-all comes last) and
        run its hooks with the server's start and stop."""
        for method, path, handler in part.routes:
            self.app.router.add_route(method, path, handler)
        self.app.on_startup.extend(part.on_startup)
        self.app.on_shutdown.extend(part.on_shutdown)
        self.app.on_cleanup.extend(part.on_cleanup)

    async def healthz(self, _request: web.Request) -> web.Response:
        body, status = self.health()
        return web.json_response(body, status=status)

    async def start(self) -> None:
        """Listen, after every part's start hook ran."""
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = self.runner.addresses[0][1]
        log.info("listening on http://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening and run the parts' stop hooks; nothing when it never started."""
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

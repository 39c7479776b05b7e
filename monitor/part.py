"""What a downstream part hands the composition root (`monitor/daemon.py`).

A part (metrics, alerts, the site, notices, the plan watch, the push receiver) is built from
narrow arguments (the plan source, the clock, the store, the pipeline's state) and hands back
a `Part`: its pipeline listener, whether it holds the plan, the routes it serves and the hooks
it needs at the web server's start and stop. Only the daemon puts parts together, so no part
imports the daemon or looks another part up, and the pipeline gets one fixed tuple of
listeners instead of a list that anyone may append to.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from monitor.pipeline import Listener
    from monitor.plan import Plan
    from monitor.plan.change import UsesPlan

#: The plan running now: a reload swaps it, so a part that needs the plan later asks this.
PlanSource = Callable[[], "Plan"]

#: An aiohttp `on_startup` / `on_cleanup` / `on_shutdown` callback (it receives the app).
Hook = Callable[[Any], Awaitable[None]]
#: `(method, path, handler)` of one route on the monitor's web server.
Route = tuple[str, str, Callable[..., Awaitable[Any]]]


@dataclass(frozen=True, slots=True)
class Part:
    """One part's connections to the rest, all optional; the daemon wires them in order."""

    #: Told of every judged observation and every planned transition.
    listener: Listener | None = None
    #: Takes up an edited plan (`use_plan`) in the daemon's one step of a reload.
    plan_user: UsesPlan | None = None
    routes: tuple[Route, ...] = ()
    on_startup: tuple[Hook, ...] = ()
    on_shutdown: tuple[Hook, ...] = ()
    on_cleanup: tuple[Hook, ...] = ()
    #: Called by the store inside an incident's own transaction (the alert outbox).
    incident_hook: Callable[..., None] | None = None

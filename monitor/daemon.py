"""`channel-monitor run`: the long-running monitor, and the one place that puts it together.

Builds the plan's store, probers, pipeline and scheduler, then each downstream part from narrow
arguments (the plan source, the clock, the store, the pipeline's state): every part hands back
a `Part` (monitor/part.py) with its listener, routes and hooks, and only this module wires
them. It serves `/healthz` (and the parts' routes: `/metrics`, `/push`, the site) on one
aiohttp server, swaps in an edited plan
(`apply_plan`, on a change of the file or SIGHUP), and shuts down cleanly on SIGINT or SIGTERM:
scheduling stops, running probes finish (bounded by their timeout), buffered
observations are written, the store is closed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import monitor.site
import monitor.subscriptions
from monitor import DEFAULT_PORT, alerts, metrics, reload
from monitor.alerts.sender import AlertSender
from monitor.clock import Clock, RealClock, runs_in_real_time
from monitor.gc_watch import GcPauses
from monitor.notices import NoticesFile
from monitor.notices import watch as notice_watch
from monitor.part import Part
from monitor.pipeline import Listener, Pipeline, make_probers
from monitor.plan import Plan
from monitor.plan.change import PlanChange, UsesPlan
from monitor.receiver import PushReceiver
from monitor.scheduler import Scheduler
from monitor.server import Server, connection_share
from monitor.site.publish import tidy
from monitor.store import DEFAULT_SIZE_LIMIT, Store

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
#: How long a stop may spend removing the page's work folder (`run` stops within 10 s).
TIDY_SECONDS = 2.0


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `:PORT` or `PORT` -> (host, port); raises ValueError with a clear message."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or DEFAULT_HOST
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f'"{text}" is not HOST:PORT, e.g. "127.0.0.1:{DEFAULT_PORT}"')
    return host, int(port)


@dataclass
class Daemon:
    """Everything `run` starts, so tests can start and stop it in-process too."""

    plan: Plan
    db_path: Path
    site_dir: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    clock: Clock = field(default_factory=RealClock)
    #: False for `run --no-alerts`: a monitor in one location of several, judged centrally
    #: through Prometheus, sends no alerts of its own.
    alerts: bool = True
    #: Operators' notices (monitor/notices/__init__.py): shown on the page, watched while running.
    notices_path: Path | None = None
    #: The plan file, watched and reloaded while running (monitor/reload.py); None: never.
    plan_path: Path | None = None
    #: `run --store-limit`: past it the oldest history is dropped (Store.prune_for_size).
    store_limit: int | None = DEFAULT_SIZE_LIMIT

    def __post_init__(self) -> None:
        # StoreError: no traceback
        self.store = Store(self.db_path, exclusive=True, size_limit=self.store_limit)
        probers = make_probers(self.plan.config.monitor.chromium)
        self.pipeline = Pipeline(self.plan, self.store, self.clock, probers=probers)
        self.scheduler = Scheduler(self.pipeline)
        # the server keeps to its share of the open-files limit: the probes' slots and the
        # most probes lent beside them keep their descriptors whatever the clients hold
        kept = self.pipeline.concurrency + self.pipeline.slots.most_lent
        self.server = Server(self.host, self.port, self.health, connection_share(kept))
        #: The web application the parts' routes are served on (monitor/server.py).
        self.app = self.server.app
        self.started = time.monotonic()
        self.gc_pauses = GcPauses()
        self.reloads = reload.ReloadStatus()
        self.wire(self.build_parts())

    def current_plan(self) -> Plan:
        """The plan source every part asks: the plan running now (a reload swaps it)."""
        return self.plan

    def build_parts(self) -> list[Part]:
        """Every downstream part, built from narrow arguments, in the order they are told of
        an observation and take up an edited plan."""
        plan, clock, store = self.current_plan, self.clock, self.store
        watched = self.plan_path is not None
        self.metrics, metrics_part = metrics.build(
            self.plan,
            self.pipeline,
            clock,
            self.scheduler,
            store,
            self.reloads if watched else None,
        )
        server = self.server
        self.metrics.connections_refused = lambda: server.refused
        self.sender: AlertSender | None = None
        alerts_part = Part()
        if self.alerts:  # the outbox hook on the store and the alert sender
            self.sender, alerts_part = alerts.build(self.plan, store, clock)
        # citizens' subscriptions: the API's routes (before the page's catch-all), the
        # incident hook, the planner and the mail sender; none without [subscriptions]
        self.subscriptions, subscriptions_part = monitor.subscriptions.build(
            plan, self.plan.config.subscriptions, store, clock
        )
        # the page: re-rendered on changes, served at GET /; the notices: on the page and, with
        # `notify`, to the robots (each asks the other through a callable, never by lookup)
        self.site, site_part = monitor.site.build(
            self.site_dir, self.db_path, clock, plan, self.pipeline, self._notices_shown
        )
        self.notice_board, notices_part = notice_watch.build(
            self.notices_path,
            plan,
            clock,
            store,
            self.sender.enqueue_notices if self.sender is not None else None,
            self.site.request,
            # updates of notices naming services, to the citizens subscribed to their channels
            self.subscriptions.notices if self.subscriptions is not None else None,
        )
        # POST /push/<channel>/<service>, and the silences: timed on the real clock; on a
        # replayed one (the demo) the rate limit counts its seconds and the replay asks
        # `push.overdue(at)` at each step, with no wall-clock timers
        real = runs_in_real_time(clock)  # `run`, and `rehearse` on its shifted clock
        on_clock = None if real else (lambda: clock.now().timestamp())
        self.push = PushReceiver(self.pipeline, monotonic=on_clock, watch_silence=real)
        # the plan file, polled; SIGHUP nudges it
        board = self.notice_board
        self.plan_watch, watch_part = reload.build(
            self.plan_path,
            plan,
            clock,
            self.apply_plan,
            self.reloads,
            self.alerts,
            board.validate_against if board is not None else None,
        )
        return [
            metrics_part,
            alerts_part,
            subscriptions_part,
            site_part,
            notices_part,
            self.push.part(),
            Part(plan_user=self.scheduler),  # the scheduler last: it probes at once
            watch_part,
        ]

    def _notices_shown(self) -> NoticesFile | None:
        return self.notice_board.current if self.notice_board is not None else None

    def wire(self, parts: list[Part]) -> None:
        """Connect the parts: one fixed tuple of listeners for the pipeline, the order in
        which a reload swaps the plan in, the store's incident hooks, routes and hooks."""
        self.listeners: tuple[Listener, ...] = tuple(
            p.listener for p in parts if p.listener is not None
        )
        self.pipeline.listeners = self.listeners
        #: The parts a reload swaps the new plan into, in order (`apply_plan`).
        users = [p.plan_user for p in parts if p.plan_user is not None]
        self.plan_users: tuple[UsesPlan, ...] = (self.pipeline, *users)
        for part in parts:
            if part.incident_hook is not None:
                self.store.incident_hooks.append(part.incident_hook)
            self.server.add(part)

    async def apply_plan(self, plan: Plan, change: PlanChange | None = None) -> PlanChange:
        """Swap a validated plan into every part (monitor/reload.py says what that does).

        The removed services' open incidents are resolved first, while every part still
        knows their names (the resolved alert carries them) and their judging is held; then
        all parts take the new plan in one step of the event loop, with nothing awaited in
        between, so no observation is judged against half a swap. `change` may be worked out
        beforehand (off the loop) from the plan running now."""
        if change is None or change.old is not self.plan or change.new is not plan:
            change = PlanChange.between(self.plan, plan, self.clock.now())
        async with self.pipeline.holding(change.removed):
            await self.pipeline.retire(change)
            self.plan = plan
            for part in self.plan_users:
                part.use_plan(change)
        old, new = change.old.config, plan.config
        if old.alerts != new.alerts or old.monitor.chromium != new.monitor.chromium:
            log.warning(
                "plan: [[alerts]] sinks and [monitor] chromium take effect at the next restart"
                " / 告警接收方和 chromium 设置的修改在重启后生效"
            )
        if old.subscriptions != new.subscriptions:  # the relay, pace, links and reminders
            log.warning(
                "plan: [subscriptions] changes take effect at the next restart; until then "
                "mails go as the plan of the start says (services and times are the new plan's)"
                " / 订阅设置的修改在重启后生效"
            )
        return change

    def health(self) -> tuple[dict, int]:
        """The age of the last scheduler tick (seconds), so a watchdog can tell; 503 while the
        store refuses writes (a full disk, or any other failed write: `store.error` says
        which): probing goes on, but nothing is kept. The web server's connections show how
        close it is to its share of descriptors. A refused
        edit of the plan shows in `config` and keeps 200: the previous plan still runs."""
        tick = self.scheduler.last_tick
        age = None if tick is None else round(asyncio.get_running_loop().time() - tick, 3)
        store = self.store
        body: dict = {
            "status": "ok" if store.healthy else "store_failing",
            "last_tick_age_seconds": age,
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "probed_services": len(self.pipeline.probed),
            "observations_judged": self.pipeline.judged,
            "scheduler_lag_p99_seconds": round(self.scheduler.lag_p99(), 4),
            "probes_skipped": self.scheduler.skipped,
            "probes_lent": self.pipeline.slots.lent,
            "gc": self.gc_pauses.health(),
            "store": {
                "healthy": store.healthy,
                "last_write_timestamp_seconds": round(store.last_write, 3),
                "pending_observations": store.pending,
                "dropped_observations": store.dropped,
            },
        }
        connections = self.server.connections
        body["server"] = {  # the web server's share of the open-files limit (server.py)
            "connections_open": connections.open,
            "most_connections": connections.most,
            "connections_refused": connections.refused,
        }
        if self.plan_watch is not None:  # `run`: whether the last edit of the plan applied
            body["config"] = self.reloads.health()
        if not store.healthy:
            body["store"]["error"] = store.write_error
            body["message"] = (
                "the store refuses writes (a full disk, or a value it could not encode: "
                "store.error says which): observations wait in memory, are written again at "
                "the next flush, and the oldest are dropped past the buffer / "
                "存储无法写入（磁盘已满或数据无法编码，见 store.error）：观测结果暂存内存并重试，"
                "超出缓冲的最早结果会被丢弃"
            )
        return body, 200 if store.healthy else 503

    async def start(self, schedule: bool = True, serve: bool = True) -> None:
        """Resume open incidents, start serving, start scheduling (the demo drives the
        pipeline itself and passes `schedule=False`)."""
        resumed = await self.pipeline.resume()
        if resumed:
            log.info("resumed %d open incident(s) from the store", resumed)
        if serve:
            await self.server.start()
            self.port = self.server.port
        else:
            await self.push.start()  # (when serving, the app's start does it)
        if schedule:
            self.scheduler.start()
        self.gc_pauses.install()

    async def stop(self) -> None:
        """Stop in order, losing nothing that was observed. How long each step took is
        logged: a stop that is slow (a probe in flight, the page's last render, a large last
        write) says which step held it."""
        laps = _Laps()
        await self.scheduler.stop()
        laps.lap("probes")
        self.gc_pauses.remove()
        for listener in self.listeners:
            close = getattr(listener, "close", None)
            if close is not None:
                await close()
        laps.lap("page and alerts")
        await self.pipeline.close()  # every kind's prober
        if self.server.runner is not None:
            await self.server.stop()
        else:
            await self.push.stop()
        laps.lap("probers and web server")
        self.store.close()  # writes what is buffered; says what a full disk made it lose
        laps.lap("store")
        try:  # nothing publishes any more: no work folder left behind (what is left of it
            # after TIDY_SECONDS, of a version of 100,000 badges, goes with the next publish)
            if not tidy(self.site_dir, seconds=TIDY_SECONDS):
                log.info(
                    "the rest of the work folder beside %s goes at the next start", self.site_dir
                )
        except OSError as exc:
            log.warning("could not remove the work folder beside %s: %s", self.site_dir, exc)
        log.info("stopped in %.1f s (%s)", laps.total(), laps)


class _Laps:
    """Seconds taken by the steps of a stop, in order."""

    def __init__(self) -> None:
        self.began = self.mark = time.monotonic()
        self.steps: list[tuple[str, float]] = []

    def lap(self, step: str) -> None:
        now = time.monotonic()
        self.steps.append((step, now - self.mark))
        self.mark = now

    def total(self) -> float:
        return time.monotonic() - self.began

    def __str__(self) -> str:
        return ", ".join(f"{step} {seconds:.1f} s" for step, seconds in self.steps)


async def serve(daemon: Daemon) -> None:
    """Run until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if daemon.plan_watch is not None:  # `kill -HUP`: reload the plan now
        loop.add_signal_handler(signal.SIGHUP, daemon.plan_watch.nudge)
    await daemon.start()
    print(f"channel-monitor: listening on http://{daemon.host}:{daemon.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await daemon.stop()

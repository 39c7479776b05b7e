"""`channel-monitor demo`: replay a plan on simulated channels through the same path as `run`.

The plan is the one given (`--config`, else `channels.toml` here, else the 2022 plan shipped
with the package). The demo sets its `${NAME}` variables as an operator sets them to the real
channels (addresses to the simulator, tokens to fresh random ones), points every probe at the
simulator's route for its service, and replays the plan's window (the faults file's `[replay]`
window, else from six hours before the plan's first dated period bound to a day after its
last) on a replay clock: it writes the site, serves `/metrics` and the site while it runs, and
tells the story as it goes. The simulated channels follow the plan exactly unless a faults
file (`--faults`, `faults.py`) makes some depart from it; the shipped plan comes with its four
2022 faults.

Every kind of observation is exercised as the plan sets it: web pages and JSON back ends by
HTTP, script-built portals by browser (when Chromium and Playwright are here; else those
services stay `unknown` and the demo says so), counters through the simulator's Prometheus
query endpoint, and offline channels by pushes from their simulated systems through the push
receiver. The simulator serves no DNS: services observed by `dns` stay `unknown`, in one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import shlex
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from monitor.clock import ReplayClock
from monitor.daemon import Daemon
from monitor.fields import fill_in, format_duration
from monitor.plan import Plan
from monitor.plan.schema import Channel, PlanConfig, Service
from monitor.report import build_report, open_readonly
from monitor.report.formats import as_text

from .faults import FaultScript, load_faults, shipped_faults
from .mails import start_mails
from .replay import Cadence, Replay
from .simulator import SLOW_TIMEOUT, Fault, Pushers, Simulator, SimulatorProcess

BEIJING_OFFSET = "+08:00"
#: The 2022 window (also in the shipped faults file's `[replay]` table).
REPLAY_START = datetime.fromisoformat("2022-06-22T12:00:00" + BEIJING_OFFSET)
REPLAY_END = datetime.fromisoformat("2022-07-26T12:00:00" + BEIJING_OFFSET)
#: Where the "same report again" command writes the shipped plan (never over channels.toml).
SHIPPED_COPY = "plan-2022.toml"
#: Around a plan's dated periods, the replay starts this much before the first bound...
LEAD = timedelta(hours=6)
#: ... and ends this much after the last one, replaying at most LONGEST in all.
TAIL = timedelta(days=1)
LONGEST = timedelta(days=400)

#: Kinds of observation, in the order the demo names them: the kinds its simulator serves
#: (plus push, played by the channels' own simulated systems). No resolver: no `dns`.
KINDS = ("http", "browser", "prometheus", "push")
#: The kinds of probe the simulator answers; a probe of another kind is never made.
SERVED = frozenset({"http", "browser", "prometheus"})

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def unset_names(config: PlanConfig) -> list[str]:
    """Every environment variable the plan's probes and pushes wait for, in plan order."""
    names = (name for c in config.channels for s in c.services for name in s.unset)
    return list(dict.fromkeys(names))


def address_names(config: PlanConfig) -> set[str]:
    """The variables named in a probe's address (the rest are tokens, keys and the like)."""
    return {
        name
        for channel in config.channels
        for service in channel.services
        if service.probe is not None and isinstance(getattr(service.probe, "url", None), str)
        for name in _VARIABLE.findall(service.probe.url)
    }


def simulator_tokens(config: PlanConfig) -> dict[str, str]:
    """A fresh random value for every unset variable of the plan that is not in an address
    (push tokens, bearer tokens, keys in headers or bodies)."""
    addresses = address_names(config)
    return {n: secrets.token_urlsafe(24) for n in unset_names(config) if n not in addresses}


def simulator_addresses(config: PlanConfig, base_url: str) -> dict[str, str]:
    """The simulator's base address for every unset address variable (`simulated` then
    gives each probe its own route there)."""
    return {name: base_url for name in unset_names(config) if name in address_names(config)}


def route(channel: Channel, service: Service) -> str:
    """The simulator's path for a probed service (see simulator.py)."""
    probe = service.probe
    ids = f"{channel.id}/{service.id}"
    if probe is None or probe.kind == "http":
        if getattr(probe, "json_conditions", ()):
            post = getattr(probe, "method", "GET") == "POST"
            return f"/app/{ids}" if post else f"/app/{ids}/status"
        return f"/page/{ids}"
    if probe.kind == "browser":
        return f"/portal/{ids}"
    return "/prometheus"


def each_service(config: PlanConfig, change: Callable[[Channel, Service], Service]) -> PlanConfig:
    """The plan with every service replaced by `change(channel, service)`."""
    channels = [
        channel.model_copy(update={"services": tuple(change(channel, s) for s in channel.services)})
        for channel in config.channels
    ]
    return config.model_copy(update={"channels": tuple(channels)})


def with_environment(config: PlanConfig, env: Mapping[str, str]) -> PlanConfig:
    """The plan as `run` would load it with `env` set: each `${NAME}` in a probe's or push's
    address, headers, body, query or token filled in from `env` where it names a variable."""

    def filled(way: Any) -> Any:
        update: dict[str, Any] = {}
        for name in ("url", "body", "query", "token"):
            value = getattr(way, name, None)
            if isinstance(value, str):
                update[name] = fill_in(value, env)
        if getattr(way, "headers", None):
            update["headers"] = {k: fill_in(v, env) for k, v in way.headers.items()}
        return way.model_copy(update=update)

    def change(_channel: Channel, service: Service) -> Service:
        if not service.unset:
            return service
        update = {"probe": filled(service.probe)} if service.probe else {}
        if service.push is not None:
            update["push"] = filled(service.push)
        return service.model_copy(update=update)

    return each_service(config, change)


def kept_home(
    config: PlanConfig, base_url: str, slow: Sequence[tuple[str, str]] = ()
) -> PlanConfig:
    """The plan with every probe the simulator serves pointed at its route for the service
    (real addresses too, such as the portals' homepages: the demo never reaches beyond this
    machine), and the services in `slow` (those with a `slow` fault) given a timeout of at
    most SLOW_TIMEOUT, so the replay does not wait out their own."""

    def change(channel: Channel, service: Service) -> Service:
        probe = service.probe
        if probe is None or service.unset or probe.kind not in SERVED:
            return service
        update: dict[str, Any] = {"url": base_url + route(channel, service)}
        if (channel.id, service.id) in slow:
            timeout = probe.timeout or config.monitor.timeout
            update["timeout"] = min(timeout, SLOW_TIMEOUT)
        if update["url"] == probe.url and "timeout" not in update:
            return service
        return service.model_copy(update={"probe": probe.model_copy(update=update)})

    return each_service(config, change)


def plan_window(plan: Plan) -> tuple[datetime, datetime]:
    """The window a replay of `plan` covers without a faults file that names one: from LEAD
    before the first dated bound of its periods to TAIL after the last (at most LONGEST);
    a plan of recurring periods only gets a week from the start of today."""
    bounds = [
        bound
        for period in plan.config.periods.values()
        for bound in (period.start, period.end)
        if bound is not None
    ]
    if not bounds:
        today = datetime.now(plan.zone).replace(hour=0, minute=0, second=0, microsecond=0)
        return today, today + timedelta(days=7)
    start = min(bounds) - LEAD
    return start, min(max(bounds) + TAIL, start + LONGEST)


def is_shipped(config: PlanConfig) -> bool:
    """Whether `config` is the 2022 plan shipped with the package (a copy of it too), whatever
    the machine's `[monitor] chromium` says."""
    from monitor.plan.shipped import load_shipped

    shipped = load_shipped()
    monitor = config.monitor.model_copy(update={"chromium": shipped.monitor.chromium})
    return config.model_copy(update={"monitor": monitor}) == shipped


def faults_for(config: PlanConfig, path: Path | None, shipped: bool = False) -> FaultScript:
    """The faults to play: the file given, else the 2022 ones for the shipped plan (`shipped`,
    or a plan equal to it), else none."""
    plan = Plan(config)
    if path is not None:
        return load_faults(path, plan)
    if shipped or is_shipped(config):
        return shipped_faults(plan)
    return FaultScript(())


def bearer_tokens(config: PlanConfig) -> dict[tuple[str, str], str]:
    """The Bearer token each probed back end is asked with (the simulator checks it)."""
    found = {}
    for channel in config.channels:
        for service in channel.services:
            header = (getattr(service.probe, "headers", None) or {}).get("Authorization", "")
            if header.startswith("Bearer ") and "${" not in header:
                found[(channel.id, service.id)] = header.removeprefix("Bearer ")
    return found


def browser_line(plan: Plan) -> str | None:
    """One line on how the demo's browser services are judged here (None: there are none)."""
    from monitor.kinds.browser import missing_parts

    count = sum(1 for ref in plan.services if ref.service.observed_by == "browser")
    if not count:
        return None
    what = missing_parts(plan.config.monitor.chromium)
    if what is not None:
        return (
            f"  browser: not available here ({what}); the {count} services observed by "
            "browser stay unknown 浏览器不可用，这些服务判定为 unknown"
        )
    return (
        f"  browser: headless Chromium loads the {count} script-built portal pages at the start,"
        " at their planned changes and at the end"
    )


def closing_report(
    plan: Plan, db: Path, end: datetime, cadence: Cadence, start: datetime = REPLAY_START
) -> str:
    """The demo's closing table: `channel-monitor report` on the replay's own store.

    The replay probes every `cadence.quiet` through quiet stretches, so an observation stands
    for up to that long here (in production twice the probe interval): the report then counts
    the same down time the story tells. Browser pages, loaded only at their planned changes,
    leave the time between those loads unobserved.
    """
    store = open_readonly(db)
    try:
        report = build_report(plan, store, start, end, cover=cadence.quiet)
    finally:
        store.close()
    return as_text(report)


@dataclass
class DemoOptions:
    """What the command line chose."""

    config: PlanConfig
    site: Path
    db: Path | None
    host: str
    port: int
    serve: bool
    linger: bool
    cadence: Cadence
    #: Operators' notices shown on the page (monitor/notices/__init__.py); no file, no notices.
    notices: Path | None = None
    #: Where the replay stops (the tests stop a short replay early); None: the faults file's
    #: `[replay]` window, else `plan_window`.
    end: datetime | None = None
    #: The plan file as given on the command line; None: the plan shipped with the package.
    plan_path: str | None = None
    #: Where the replay starts; None: as `end`.
    start: datetime | None = None
    #: `--faults FILE`; None: the 2022 faults for the shipped plan, no fault for any other.
    faults_path: Path | None = None
    #: The faults, when already read (the command reads them first, to refuse a bad file).
    script: FaultScript | None = None

    def window(self, script: FaultScript) -> tuple[datetime, datetime]:
        """The replayed window: as chosen, else the faults file's, else the plan's."""
        start, end = plan_window(Plan(self.config))
        start = self.start or script.start or start
        end = self.end or script.end or end
        return start, max(end, start)


def again(options: DemoOptions, end: datetime, start: datetime = REPLAY_START) -> str:
    """The command that prints the closing report again, runnable from the current folder.

    `report` reads `channels.toml` unless told otherwise, so any other plan is named with
    `--config`; the shipped plan has no file of its own to name, so the command writes it out
    first. Without `--db` the store is gone when the demo ends, and the line says so.
    """
    if options.db is None:
        return (
            "the store was temporary; run the demo with --db PATH to keep it and print this "
            "report again / 数据库为临时文件；加 --db PATH 运行 demo 可保留它并再次输出本报告"
        )
    command = (
        f"channel-monitor report --db {shlex.quote(str(options.db))} "
        f"--from {start:%Y-%m-%dT%H:%M} --until {end:%Y-%m-%dT%H:%M} "
        f"--cover {format_duration(options.cadence.quiet)}"
    )
    if options.plan_path is None:
        command = (
            f"channel-monitor plan --example > {SHIPPED_COPY} && {command} --config {SHIPPED_COPY}"
        )
    elif Path(options.plan_path) != Path("channels.toml"):
        command += f" --config {shlex.quote(options.plan_path)}"
    return f"the same report again / 再次输出本报告: {command}"


def dns_line(plan: Plan) -> str | None:
    """One line on the services observed by dns (None: there are none)."""
    count = sum(1 for ref in plan.services if ref.service.observed_by == "dns")
    if not count:
        return None
    return (
        f"  dns: the simulator serves no DNS; the {count} services observed by dns stay "
        "unknown 模拟器不提供 DNS，这些服务判定为 unknown"
    )


async def run_demo(options: DemoOptions) -> Replay:
    """Run the whole demo; returns the replay (its tallies and incidents) for tests."""
    script = options.script or faults_for(
        options.config, options.faults_path, shipped=options.plan_path is None
    )
    start, stop_at = options.window(script)
    faults: list[Fault] = list(script.faults)
    clock = ReplayClock(start)
    tokens = simulator_tokens(options.config)
    with_tokens = with_environment(options.config, tokens)
    # the simulator's process needs its address before the probes can be pointed at it, so
    # it gets the plan with its tokens first; it finds each service by route, not by address
    simulator = SimulatorProcess(with_tokens, faults, start, bearer_tokens(with_tokens))
    loop = asyncio.get_running_loop()
    sim_port = await loop.run_in_executor(None, simulator.start)
    base_url = f"http://127.0.0.1:{sim_port}"
    env = {**tokens, **simulator_addresses(options.config, base_url)}
    slow = [(f.channel, f.service) for f in faults if f.behaviour == "slow"]
    probed = Plan(kept_home(with_environment(options.config, env), base_url, slow))

    with contextlib.ExitStack() as stack:
        db = options.db
        if db is None:
            db = (
                Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="channel-monitor-")))
                / "demo.db"
            )
        stack.callback(simulator.stop)
        probed, mails = await start_mails(probed, db, stack, options, start, stop_at)
        daemon = Daemon(
            probed,
            db_path=db,
            site_dir=options.site,
            host=options.host,
            port=options.port,
            clock=clock,
            notices_path=options.notices,
        )
        replay = Replay(probed, daemon.pipeline, clock, start, stop_at, faults, options.cadence)
        replay.served = SERVED
        replay.follow = simulator.set
        replay.push = daemon.push
        replay.pushers = Pushers(Simulator(probed, clock, faults), daemon.push)
        stop = asyncio.Event()

        def interrupt() -> None:
            replay.stopped = True
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, interrupt)
        started = time.monotonic()
        try:
            await daemon.start(schedule=False, serve=options.serve)
            zone = probed.zone
            window = (
                f"{start.astimezone(zone):%Y-%m-%d %H:%M} to "
                f"{stop_at.astimezone(zone):%Y-%m-%d %H:%M}"
            )
            print(f"channel-monitor demo: replaying {window} ({zone.key})")
            counts = f"{len(probed.services)} services on {len(probed.config.channels)} channels"
            print(f"  {counts}, simulated at 127.0.0.1:{sim_port}")
            kinds = Counter(ref.service.observed_by for ref in probed.services)
            shown = (*KINDS, *(k for k in kinds if k not in KINDS and k != "schedule"))
            print("  observed by " + ", ".join(f"{k} {kinds[k]}" for k in (*shown, "schedule")))
            print(f"  variables set for the simulator: {', '.join(env) or 'none'}")
            waiting = unset_names(probed.config)
            if waiting:
                print(f"  still unset (those services stay unknown): {', '.join(waiting)}")
            for line in (browser_line(probed), dns_line(probed)):
                if line:
                    print(line)
            if options.serve:
                print(f"  metrics and site: http://{daemon.host}:{daemon.port}/")
            for fault in faults:
                print(f"  scripted fault: {fault.story_en}")
            if not faults:
                print("  no faults: every simulated channel follows the plan (--faults FILE)")
            print()
            await replay.run()
            await daemon.pipeline.planned_transition(clock.now())
            elapsed = time.monotonic() - started
            print()
            if replay.stopped:
                reached = clock.now().astimezone(probed.zone)
                print(f"interrupted at {reached:%m-%d %H:%M}: the summary covers the replay so far")
            end = stop_at if not replay.stopped else clock.now()
            if end > start:
                print(closing_report(probed, db, end, options.cadence, start))
                print()
            for record in replay.incidents:
                ref = probed.service(record.channel, record.business)
                print(
                    f"incident #{record.id} seen by [{ref.service.observed_by}]: "
                    f"{ref.channel.name} / {ref.service.name}, {record.direction}"
                )
            print(await mails.summary(daemon))
            seen = ", ".join(f"{k} {replay.seen_by[k]}" for k in KINDS)
            pushers = replay.pushers
            refused = sum(pushers.refused.values())
            print(
                f"replayed in {elapsed:.1f} s: {simulator.requests.value} requests to the "
                f"simulator, {pushers.sent} pushes"
                + (f" ({refused} refused: {pushers.refused})" if refused else "")
                + f", {len(replay.incidents)} incident(s); observations by kind: {seen}; "
                f"site written to {options.site}"
            )
            print(again(options, end, start))
            if options.serve and options.linger and not replay.stopped:
                print(f"serving http://{daemon.host}:{daemon.port}/ until Ctrl-C")
                await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await daemon.stop()
    return replay

"""`channel-monitor demo`: load the real plan, set its `${NAME}` variables to the simulator's
addresses and to fresh tokens (as an operator sets them to the channels' own), replay
2022-06-22 12:00 to 2022-07-26 12:00 (Beijing time) through the same path as `run`, write the
site, serve `/metrics` and the site while it runs, and tell the story as it goes.

Every kind of observation is exercised as the plan sets it: web pages and JSON back ends by
HTTP, the script-built portal by browser (when Chromium and Playwright are here; else those
services stay `unknown` and the demo says so), the tax system's payment counter through the
simulator's Prometheus query endpoint, and the offline channels by pushes from their simulated
systems through the push receiver."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shlex
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from monitor.clock import ReplayClock
from monitor.daemon import Daemon
from monitor.fields import fill_in, format_duration
from monitor.plan import Plan
from monitor.plan.schema import Channel, PlanConfig, Service
from monitor.report import build_report, open_readonly
from monitor.report.formats import as_text

from .faults import scripted_faults
from .mails import start_mails
from .replay import Cadence, Replay
from .simulator import Pushers, Simulator, SimulatorProcess

BEIJING_OFFSET = "+08:00"
REPLAY_START = datetime.fromisoformat("2022-06-22T12:00:00" + BEIJING_OFFSET)
REPLAY_END = datetime.fromisoformat("2022-07-26T12:00:00" + BEIJING_OFFSET)
#: Where the "same report again" command writes the shipped plan (never over channels.toml).
SHIPPED_COPY = "plan-2022.toml"


#: What the simulator serves for each address variable of the shipped plan (under its base).
SIMULATED_ADDRESSES = {
    "SI12333_HUBEI_URL": "/page/si-12333",
    "HUBEI_ZWFW_ITEMS_URL": "/page/hubei-zwfw",
    "LOCAL_HALLS_STATUS_URL": "/page/local-online-halls",
    "HRSS_PLATFORM_URL": "/portal/hrss-gov-platform",
    "EHUIBAN_API_URL": "/app/ehuiban",
    "ALIPAY_HRSS_API_URL": "/app/alipay-smart-hrss",
    "HUBEI12333_API_URL": "/app/hubei-12333-wechat",
    "ETAX_PROMETHEUS_URL": "/prometheus",
}
#: Kinds of observation, in the order the demo names them. Not the registry's: the demo replays
#: the kinds its simulator serves, and it has no resolver to serve `dns` from.
KINDS = ("http", "browser", "prometheus", "push")


def unset_names(config: PlanConfig) -> list[str]:
    """Every environment variable the plan's probes and pushes wait for, in plan order."""
    names = (name for c in config.channels for s in c.services for name in s.unset)
    return list(dict.fromkeys(names))


def simulator_tokens(config: PlanConfig) -> dict[str, str]:
    """A fresh random value for every unset `..._TOKEN` variable of the plan."""
    return {n: secrets.token_urlsafe(24) for n in unset_names(config) if n.endswith("_TOKEN")}


def simulator_addresses(config: PlanConfig, base_url: str) -> dict[str, str]:
    """The simulator's address for every unset address variable the demo knows."""
    return {
        name: base_url + SIMULATED_ADDRESSES[name]
        for name in unset_names(config)
        if name in SIMULATED_ADDRESSES
    }


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


def kept_home(config: PlanConfig, base_url: str) -> PlanConfig:
    """The plan with every probe that names a real address (the portals' homepages) pointed at
    the simulator's page of its service instead: the demo never reaches beyond this machine."""

    def change(channel: Channel, service: Service) -> Service:
        probe = service.probe
        if probe is None or service.unset or probe.url.startswith(base_url):
            return service
        url = f"{base_url}/page/{channel.id}/{service.id}"
        return service.model_copy(update={"probe": probe.model_copy(update={"url": url})})

    return each_service(config, change)


def bearer_tokens(config: PlanConfig) -> dict[tuple[str, str], str]:
    """The Bearer token each probed back end is asked with (the simulator checks it)."""
    found = {}
    for channel in config.channels:
        for service in channel.services:
            header = (service.probe.headers if service.probe else {}).get("Authorization", "")
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


def closing_report(plan: Plan, db: Path, end: datetime, cadence: Cadence) -> str:
    """The demo's closing table: `channel-monitor report` on the replay's own store.

    The replay probes every `cadence.quiet` through quiet stretches, so an observation stands
    for up to that long here (in production twice the probe interval): the report then counts
    the same down time the story tells. Browser pages, loaded only at their planned changes,
    leave the time between those loads unobserved.
    """
    store = open_readonly(db)
    try:
        report = build_report(plan, store, REPLAY_START, end, cover=cadence.quiet)
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
    #: Where the replay stops (the tests stop a short replay early).
    end: datetime = field(default=REPLAY_END)
    #: The plan file as given on the command line; None: the plan shipped with the package.
    plan_path: str | None = None


def again(options: DemoOptions, end: datetime) -> str:
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
        f"--from {REPLAY_START:%Y-%m-%dT%H:%M} --until {end:%Y-%m-%dT%H:%M} "
        f"--cover {format_duration(options.cadence.quiet)}"
    )
    if options.plan_path is None:
        command = (
            f"channel-monitor plan --example > {SHIPPED_COPY} && {command} --config {SHIPPED_COPY}"
        )
    elif Path(options.plan_path) != Path("channels.toml"):
        command += f" --config {shlex.quote(options.plan_path)}"
    return f"the same report again / 再次输出本报告: {command}"


async def run_demo(options: DemoOptions) -> Replay:
    """Run the whole demo; returns the replay (its tallies and incidents) for tests."""
    clock = ReplayClock(REPLAY_START)
    faults = scripted_faults(Plan(options.config))
    tokens = simulator_tokens(options.config)
    with_tokens = with_environment(options.config, tokens)
    simulator = SimulatorProcess(with_tokens, faults, REPLAY_START, bearer_tokens(with_tokens))
    loop = asyncio.get_running_loop()
    sim_port = await loop.run_in_executor(None, simulator.start)
    base_url = f"http://127.0.0.1:{sim_port}"
    env = {**tokens, **simulator_addresses(options.config, base_url)}
    probed = Plan(kept_home(with_environment(options.config, env), base_url))

    with contextlib.ExitStack() as stack:
        db = options.db
        if db is None:
            db = (
                Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="channel-monitor-")))
                / "demo.db"
            )
        stack.callback(simulator.stop)
        probed, mails = await start_mails(probed, db, stack, options, REPLAY_START)
        daemon = Daemon(
            probed,
            db_path=db,
            site_dir=options.site,
            host=options.host,
            port=options.port,
            clock=clock,
            notices_path=options.notices,
        )
        replay = Replay(
            probed, daemon.pipeline, clock, REPLAY_START, options.end, faults, options.cadence
        )
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
            window = f"{REPLAY_START:%Y-%m-%d %H:%M} to {options.end:%Y-%m-%d %H:%M}"
            print(f"channel-monitor demo: replaying {window} (Beijing time)")
            counts = f"{len(probed.services)} services on {len(probed.config.channels)} channels"
            print(f"  {counts}, simulated at 127.0.0.1:{sim_port}")
            kinds = Counter(ref.service.observed_by for ref in probed.services)
            print("  observed by " + ", ".join(f"{k} {kinds[k]}" for k in (*KINDS, "schedule")))
            print(f"  variables set for the simulator: {', '.join(env) or 'none'}")
            waiting = unset_names(probed.config)
            if waiting:
                print(f"  still unset (those services stay unknown): {', '.join(waiting)}")
            line = browser_line(probed)
            if line:
                print(line)
            if options.serve:
                print(f"  metrics and site: http://{daemon.host}:{daemon.port}/")
            for fault in faults:
                print(f"  scripted fault: {fault.story_en}")
            print()
            await replay.run()
            await daemon.pipeline.planned_transition(clock.now())
            elapsed = time.monotonic() - started
            print()
            if replay.stopped:
                reached = clock.now().astimezone(probed.zone)
                print(f"interrupted at {reached:%m-%d %H:%M}: the summary covers the replay so far")
            end = options.end if not replay.stopped else clock.now()
            if end > REPLAY_START:
                print(closing_report(probed, db, end, options.cadence))
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
            print(again(options, end))
            if options.serve and options.linger and not replay.stopped:
                print(f"serving http://{daemon.host}:{daemon.port}/ until Ctrl-C")
                await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await daemon.stop()
    return replay

"""`channel-monitor demo`: load the real plan, point every service at the simulator, replay
2022-06-22 12:00 to 2022-07-26 12:00 (Beijing time) through the same path as `run`, write the
site, serve `/metrics` and the site while it runs, and tell the story as it goes."""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import signal
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from monitor.clock import ReplayClock
from monitor.config import PlanConfig, Probe, format_duration
from monitor.daemon import Daemon
from monitor.plan import Plan
from monitor.report import build_report, open_readonly
from monitor.report_formats import as_text

from .faults import scripted_faults
from .replay import Cadence, Replay
from .simulator import MAINTENANCE_PATTERN, SimulatorProcess

BEIJING_OFFSET = "+08:00"
REPLAY_START = datetime.fromisoformat("2022-06-22T12:00:00" + BEIJING_OFFSET)
REPLAY_END = datetime.fromisoformat("2022-07-26T12:00:00" + BEIJING_OFFSET)
#: Where the "same report again" command writes the shipped plan (never over channels.toml).
SHIPPED_COPY = "plan-2022.toml"


def simulated(config: PlanConfig, base_url: str) -> PlanConfig:
    """The plan with every service (schedule-only ones included) probed at the simulator."""
    channels = []
    for channel in config.channels:
        services = []
        for service in channel.services:
            probe = Probe(
                url=f"{base_url}/{channel.id}/{service.id}",
                timeout=timedelta(seconds=5),
                body_not_matches=MAINTENANCE_PATTERN,
            )
            services.append(service.model_copy(update={"probe": probe}))
        channels.append(channel.model_copy(update={"services": tuple(services)}))
    return config.model_copy(update={"channels": tuple(channels)})


def closing_report(plan: Plan, db: Path, end: datetime, cadence: Cadence) -> str:
    """The demo's closing table: `channel-monitor report` on the replay's own store.

    The replay probes every `cadence.quiet` through quiet stretches, so an observation stands
    for up to that long here (in production twice the probe interval): the report then counts
    the same down time the story tells.
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
    #: Operators' notices shown on the page (monitor/notice.py); no file, no notices.
    notices: Path | None = None
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
    plan = Plan(options.config)
    clock = ReplayClock(REPLAY_START)
    faults = scripted_faults(plan)
    simulator = SimulatorProcess(options.config, faults, REPLAY_START)
    loop = asyncio.get_running_loop()
    sim_port = await loop.run_in_executor(None, simulator.start)
    probed = Plan(simulated(options.config, f"http://127.0.0.1:{sim_port}"))

    with contextlib.ExitStack() as stack:
        db = options.db
        if db is None:
            db = (
                Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="channel-monitor-")))
                / "demo.db"
            )
        stack.callback(simulator.stop)
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
            probed, daemon.pipeline, clock, REPLAY_START, REPLAY_END, faults, options.cadence
        )
        replay.follow = simulator.set
        stop = asyncio.Event()

        def interrupt() -> None:
            replay.stopped = True
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, interrupt)
        started = time.monotonic()
        try:
            await daemon.start(schedule=False, serve=options.serve)
            window = f"{REPLAY_START:%Y-%m-%d %H:%M} to {REPLAY_END:%Y-%m-%d %H:%M}"
            print(f"channel-monitor demo: replaying {window} (Beijing time)")
            counts = f"{len(probed.services)} services on {len(probed.config.channels)} channels"
            print(f"  {counts}, simulated at 127.0.0.1:{sim_port}")
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
            end = REPLAY_END if not replay.stopped else clock.now()
            if end > REPLAY_START:
                print(closing_report(plan, db, end, options.cadence))
                print()
            print(
                f"replayed in {elapsed:.1f} s: {simulator.requests.value} probes, "
                f"{len(replay.incidents)} incident(s); site written to {options.site}"
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

"""The demo end to end: the real plan replayed against the simulated channels.

Each scripted fault must be detected once, in its direction, within the thresholds; nothing
else may open an incident (planned transitions are not faults)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from servers import closed_port

from monitor.config import load_config
from monitor.demo.faults import scripted_faults
from monitor.demo.replay import Cadence, instants, planned_downtime
from monitor.demo.run import REPLAY_END, REPLAY_START, DemoOptions, again, run_demo
from monitor.plan import Plan

ROOT = Path(__file__).resolve().parent.parent
PLAN = ROOT / "channels.toml"


async def _fetch_while_running(port: int, done: asyncio.Event) -> dict[str, str]:
    """GET /metrics and / from the demo's server while the replay runs (bounded by `done`)."""
    seen: dict[str, str] = {}
    async with aiohttp.ClientSession() as session:
        while not done.is_set() and len(seen) < 2:
            for path in ("/metrics", "/"):
                if path in seen:
                    continue
                try:
                    async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                        if response.status == 200:
                            seen[path] = await response.text()
                except aiohttp.ClientError:
                    pass  # not listening yet
            await asyncio.sleep(0.05)
    return seen


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One replay at a higher speed (coarser quiet steps), shared by the tests below."""
    tmp = tmp_path_factory.mktemp("demo")
    config = load_config(PLAN)
    cadence = Cadence(quiet=timedelta(hours=6))
    site, db = tmp / "site", tmp / "demo.db"
    port = closed_port()
    options = DemoOptions(config, site, db, "127.0.0.1", port, True, False, cadence)

    async def both() -> tuple:
        done = asyncio.Event()
        fetching = asyncio.create_task(_fetch_while_running(port, done))
        try:
            replay = await run_demo(options)
        finally:
            done.set()
        return replay, await fetching

    replay, served = asyncio.run(both())
    with sqlite3.connect(tmp / "demo.db") as db:
        incidents = db.execute(
            "SELECT channel, business, direction, opened_at, resolved_at FROM incidents "
            "ORDER BY opened_at"
        ).fetchall()
    return {
        "replay": replay,
        "incidents": incidents,
        "config": config,
        "site": site,
        "cadence": cadence,
        "served": served,
    }


def test_every_fault_is_detected_once_in_its_direction_within_thresholds(demo: dict) -> None:
    plan = Plan(demo["config"])
    settings = demo["config"].monitor
    step = demo["cadence"].dense
    faults = scripted_faults(plan)
    assert len(demo["incidents"]) == len(faults)
    for fault in faults:
        found = [i for i in demo["incidents"] if (i[0], i[1]) == (fault.channel, fault.service)]
        assert len(found) == 1, f"{fault.story_en}: {found}"
        _, _, direction, opened, resolved = found[0]
        assert direction == fault.direction
        ref = plan.service(fault.channel, fault.service)
        # a fault that starts at a planned transition waits out the grace first
        grace = settings.grace if plan.in_grace(ref, fault.start) else timedelta(0)
        latest_open = fault.start + grace + settings.failure_threshold * step
        assert fault.start.timestamp() <= opened <= latest_open.timestamp(), fault.story_en
        latest_close = fault.end + settings.success_threshold * step
        assert resolved is not None
        assert fault.end.timestamp() <= resolved <= latest_close.timestamp(), fault.story_en


def test_planned_downtime_matches_the_notice(demo: dict) -> None:
    plan = Plan(demo["config"])
    certificate = plan.service("hubei-zwfw", "certificate-print")
    # 06-22 18:00 to 06-23 09:00 (inferred) and 07-19 18:00 to 07-25 08:30
    expected = timedelta(hours=15) + timedelta(days=5, hours=14, minutes=30)
    assert planned_downtime(plan, certificate, REPLAY_START, REPLAY_END) == expected
    pension = plan.service("hubei-zwfw", "pension")
    freeze = timedelta(days=32, hours=14, minutes=30)
    assert planned_downtime(plan, pension, REPLAY_START, REPLAY_END) == freeze


def test_observed_downtime_follows_the_plan_except_for_the_faults(demo: dict) -> None:
    replay = demo["replay"]
    plan = replay.plan
    faulty = {(f.channel, f.service) for f in scripted_faults(plan)}
    for ref in plan.services:
        if ref.key in faulty:
            continue
        planned = planned_downtime(plan, ref, REPLAY_START, REPLAY_END)
        assert replay.tallies[ref.key].observed_down == planned, ref.key


def test_every_service_is_probed_on_the_simulator(demo: dict) -> None:
    replay = demo["replay"]
    probes = [ref.service.probe for ref in replay.plan.services]
    assert all(probe is not None and probe.url.startswith("http://127.0.0.1:") for probe in probes)


def test_dense_steps_surround_each_mark() -> None:
    cadence = Cadence()
    mark = REPLAY_START + timedelta(hours=6)
    steps = instants(REPLAY_START, REPLAY_END, [mark], cadence)
    assert mark in steps
    assert mark + cadence.dense in steps and mark - cadence.dense in steps
    assert steps == sorted(set(steps))


def test_metrics_and_page_are_served_while_the_replay_runs(demo: dict) -> None:
    served = demo["served"]
    assert "channel_monitor_expected_up{" in served["/metrics"]
    assert 'lang="zh-CN"' in served["/"]


def test_the_site_is_written_with_the_story_of_the_replay(demo: dict) -> None:
    site = demo["site"]
    page = (site / "index.html").read_text(encoding="utf-8")
    english = (site / "en" / "index.html").read_text(encoding="utf-8")
    assert "楚税通APP" in page and "湖北12333微信公众号" in page
    assert 'lang="en"' in english
    assert (site / "status.json").exists() and (site / "calendar.ics").exists()
    assert not (site.parent / ".site.render").exists()  # the work folder goes when it is done


def interrupted_demo(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run `demo` with `args` in `cwd`, SIGINT it once the replay has started; its exit code,
    standard output and standard error."""
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor", "demo", "--no-serve", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:  # the replay has started once the first plan line shows
            if " plan " in line:
                break
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, out, err


def test_ctrl_c_stops_the_demo_cleanly(tmp_path: Path) -> None:
    """SIGINT ends the replay at the next round, prints the summary and exits 0."""
    code, out, err = interrupted_demo(["--site", str(tmp_path / "site")], ROOT)
    assert code == 0, err
    assert "interrupted at 06-22 " in out
    assert "replayed in" in out
    assert "Traceback" not in err


def test_the_printed_report_command_runs_where_the_demo_ran(tmp_path: Path) -> None:
    """From a folder without channels.toml the demo uses the shipped plan; the command it
    prints to see the report again must work there, and no work folder is left behind."""
    code, out, err = interrupted_demo(["--db", "d.db"], tmp_path)
    assert code == 0, err
    [line] = [x for x in out.splitlines() if x.startswith("the same report again")]
    command = line.split(": ", 1)[1]
    assert "--config" in command
    again = subprocess.run(
        command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr and again.stdout.strip()
    assert not (tmp_path / ".site.render").exists()
    assert not (tmp_path / "channels.toml").exists()  # the command never writes over a plan


def test_without_a_kept_store_the_demo_says_how_to_keep_it() -> None:
    config = load_config(PLAN)
    options = DemoOptions(config, Path("site"), None, "127.0.0.1", 0, False, False, Cadence())
    assert "--db PATH" in again(options, REPLAY_END)
    named = DemoOptions(
        config, Path("site"), Path("d.db"), "127.0.0.1", 0, False, False, Cadence(),
        plan_path="plans/x.toml",
    )  # fmt: skip
    assert again(named, REPLAY_END).endswith("--config plans/x.toml")
    here = DemoOptions(
        config, Path("site"), Path("d.db"), "127.0.0.1", 0, False, False, Cadence(),
        plan_path="channels.toml",
    )  # fmt: skip
    assert "--config" not in again(here, REPLAY_END)

"""The demo end to end: the real plan replayed against the simulated channels.

Each scripted fault must be detected once, in its direction, within the thresholds; nothing
else may open an incident (planned transitions are not faults). Every kind of observation the
plan uses is exercised (pages and JSON back ends by HTTP, the script-built portal by browser,
payment counters through a Prometheus query, pushes from the offline channels), and the story
says which kind saw each incident. Without Chromium the demo still runs and says so."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from helpers import missing
from servers import closed_port

from monitor.clock import ReplayClock
from monitor.demo.faults import scripted_faults
from monitor.demo.replay import Cadence, instants, planned_downtime
from monitor.demo.run import KINDS, REPLAY_END, REPLAY_START, DemoOptions, again, run_demo
from monitor.demo.simulator import MAINTENANCE_PATTERN, PAYMENTS, Simulator
from monitor.kinds.browser import missing_parts
from monitor.kinds.prometheus import QueryProber
from monitor.plan import Plan
from monitor.plan.load import load_config
from monitor.plan.schema import PlanConfig

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

    story = io.StringIO()
    with contextlib.redirect_stdout(story):
        replay, served = asyncio.run(both())
    with sqlite3.connect(tmp / "demo.db") as db:
        incidents = db.execute(
            "SELECT channel, business, direction, opened_at, resolved_at FROM incidents "
            "ORDER BY opened_at"
        ).fetchall()
        observations = db.execute(
            "SELECT channel, business, at, serving, reason FROM observations ORDER BY at"
        ).fetchall()
    return {
        "replay": replay,
        "incidents": incidents,
        "observations": observations,
        "config": config,
        "site": site,
        "cadence": cadence,
        "served": served,
        "story": story.getvalue(),
    }


def _browser_here(config: PlanConfig) -> None:
    """The browser part needs Playwright and Chromium: fail in CI without them."""
    what = missing_parts(config.monitor.chromium)
    if what is not None:
        missing(f"browser probes need {what}")


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


def test_every_kind_of_observation_is_exercised(demo: dict) -> None:
    """Each kind the plan uses saw something (serving or not) during the replay."""
    _browser_here(demo["config"])
    replay = demo["replay"]
    used = {ref.service.observed_by for ref in replay.plan.services}
    assert used == set(KINDS)
    for kind in KINDS:
        assert replay.seen_by[kind] > 0, f"{kind}: {replay.seen_by}"
    assert (
        f"observations by kind: {', '.join(f'{k} {replay.seen_by[k]}' for k in KINDS)}"
        in (demo["story"])
    )


def test_the_plans_variables_are_set_for_the_simulator(demo: dict) -> None:
    """The demo fills in the plan's `${NAME}`s (addresses on the simulator, fresh tokens)
    instead of replacing the probes: every other field is the shipped plan's."""
    shipped = Plan(demo["config"])
    for ref in demo["replay"].plan.services:
        service = ref.service
        assert not service.unset, ref.key
        original = shipped.service(*ref.key).service
        assert service.observed_by == original.observed_by, ref.key
        if service.probe is not None:
            assert service.probe.url.startswith("http://127.0.0.1:"), ref.key
            kept = {"url", "headers", "body", "query"}
            assert service.probe.model_dump(exclude=kept) == original.probe.model_dump(
                exclude=kept
            ), ref.key
        else:
            assert service.push is not None and len(service.push.token) >= 16, ref.key
            assert service.push.within == original.push.within, ref.key
    assert "variables set for the simulator: " in demo["story"]
    assert "EHUIBAN_API_URL" in demo["story"] and "KIOSK_PUSH_TOKEN" in demo["story"]


def test_each_incident_says_which_kind_saw_it(demo: dict) -> None:
    story = demo["story"]
    seen = {
        ("chushuitong", "si-contribution"): "prometheus",
        ("hubei-zwfw", "certificate-print"): "http",
        ("hubei-12333-wechat", "pension"): "http",
        ("hubei-etax", "medical-premium"): "prometheus",
    }
    plan = demo["replay"].plan
    for key, kind in seen.items():
        ref = plan.service(*key)
        name = f"{ref.channel.name} / {ref.service.name}"
        assert re.search(rf"  OPEN   #\d+ \[{kind}\] {re.escape(name)}: ", story), key
        assert f"seen by [{kind}]: {name}, " in story, key
    # the closing lines, after the report: each incident with its direction and kind
    assert re.search(r"incident #\d+ seen by \[prometheus\]: 楚税通APP / .*, unexpected_up", story)
    assert "json condition failed: code == `0`" in story  # the app's maintenance code
    assert "query value 17 > 0" in story  # 楚税通 payments still counted after 18:00


def _service_observations(demo: dict, channel: str, business: str) -> list[tuple]:
    return [o[2:] for o in demo["observations"] if (o[0], o[1]) == (channel, business)]


def test_the_portal_notice_is_read_by_the_browser(demo: dict) -> None:
    _browser_here(demo["config"])
    freeze = datetime(2022, 6, 22, 10, tzinfo=UTC).timestamp()  # 18:00 Beijing time
    seen = _service_observations(demo, "hrss-gov-platform", "pension")
    before = [o for o in seen if o[0] < freeze]
    during = [o for o in seen if freeze <= o[0] < REPLAY_END.timestamp() - 86400 * 2]
    assert before and all(serving == 1 for _, serving, _ in before), seen
    assert during and all(
        (serving, reason) == (0, "rendered text matches maintenance notice")
        for _, serving, reason in during
    ), seen
    assert len(seen) <= 6, "browser pages are loaded only at the start, changes and end"


def test_kiosks_and_halls_push_and_a_silence_is_found_on_the_replay_clock(demo: dict) -> None:
    freeze = datetime(2022, 6, 22, 10, tzinfo=UTC).timestamp()
    kiosk = _service_observations(demo, "self-service-kiosks", "si-self-service")
    assert {reason for at, _, reason in kiosk if at < freeze} == {"push"}  # heartbeats
    silent = [(at, serving, reason) for at, serving, reason in kiosk if at >= freeze]
    assert silent[0] == (freeze, 0, "no push for 5m")  # found at the first instant it is due
    hall = _service_observations(demo, "si-service-hall", "pension")
    assert any(reason.startswith("pushed: ") and serving == 0 for _, serving, reason in hall)
    pos = _service_observations(demo, "tax-service-hall", "medical-premium")
    assert pos and all((s, r) == (1, f"pushed: count {PAYMENTS}") for _, s, r in pos)
    assert demo["replay"].pushers.refused == {}


def test_the_simulated_portal_and_query_endpoint(tmp_path: Path) -> None:
    """The portal's notice is not in its HTML (only a browser sees it); the query endpoint
    answers Prometheus' instant-query JSON with the payment counter's increase, faults
    included, at the query's own time."""
    config = load_config(PLAN)
    plan = Plan(config)
    clock = ReplayClock(REPLAY_START)
    simulator = Simulator(plan, clock, scripted_faults(plan))

    async def ask() -> tuple[str, dict, list[tuple]]:
        runner = web.AppRunner(simulator.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            clock.set(REPLAY_START + timedelta(days=3))  # in the freeze
            async with aiohttp.ClientSession() as session:
                portal = f"{base}/portal/hrss-gov-platform/pension"
                async with session.get(portal) as response:
                    html = await response.text()
                async with session.get(portal + "/state") as response:
                    state = await response.json()
            spec = plan.service("chushuitong", "si-contribution").service.probe
            spec = spec.model_copy(update={"url": f"{base}/prometheus"})
            reasons = []
            async with QueryProber() as prober:
                for hour in ("12:00", "18:30", "20:30"):  # before, in the fault, after it
                    at = datetime.fromisoformat(f"2022-06-22T{hour}:00+08:00")
                    seen = await prober.probe(spec, timedelta(seconds=5), at)
                    reasons.append((seen.serving, seen.reason))
            return html, state, reasons
        finally:
            await runner.cleanup()

    html, state, reasons = asyncio.run(ask())
    assert MAINTENANCE_PATTERN not in html and "<script>" in html
    assert state["open"] is False and MAINTENANCE_PATTERN in state["notice"]
    assert reasons == [
        (True, f"query value {PAYMENTS} > 0"),
        (True, f"query value {PAYMENTS} > 0"),  # 楚税通 still takes payments (the fault)
        (False, "query value 0 <= 0"),
    ]


def test_the_demo_without_chromium_still_passes_and_says_so(tmp_path: Path) -> None:
    """No Chromium here (the `[monitor] chromium` setting names a missing file): the browser
    services stay unknown, the demo says so in one line, and the rest is found as before."""
    config = load_config(PLAN)
    monitor = config.monitor.model_copy(update={"chromium": str(tmp_path / "no-chromium")})
    config = config.model_copy(update={"monitor": monitor})
    end = REPLAY_START + timedelta(days=1)
    options = DemoOptions(
        config, tmp_path / "site", None, "127.0.0.1", 0, False, False, Cadence(), end=end
    )
    story = io.StringIO()
    with contextlib.redirect_stdout(story):
        replay = asyncio.run(run_demo(options))
    out = story.getvalue()
    lines = [line for line in out.splitlines() if line.strip().startswith("browser:")]
    assert len(lines) == 1 and "not available here" in lines[0], out
    assert "Chromium" in lines[0] and "stay unknown" in lines[0]
    assert replay.seen_by["browser"] == 0
    assert all(replay.seen_by[kind] > 0 for kind in ("http", "prometheus", "push"))
    found = [(i.channel, i.business, i.direction) for i in replay.incidents]
    assert found == [("chushuitong", "si-contribution", "unexpected_up")]
    browser = [ref for ref in replay.plan.services if ref.service.observed_by == "browser"]
    for ref in browser:
        state = replay.pipeline.states[ref.key]
        assert state.last_serving is None, ref.key
        assert state.last_reason.startswith("browser not available: "), state.last_reason
        assert "Chromium" in state.last_reason


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

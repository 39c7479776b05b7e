"""The demo end to end: the real plan replayed against the simulated channels.

Each scripted fault must be detected once, in its direction, within the thresholds; nothing
else may open an incident (planned transitions are not faults)."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from monitor.config import load_config
from monitor.demo.faults import scripted_faults
from monitor.demo.replay import Cadence, instants, planned_downtime
from monitor.demo.run import REPLAY_END, REPLAY_START, DemoOptions, run_demo
from monitor.plan import Plan

ROOT = Path(__file__).resolve().parent.parent
PLAN = ROOT / "channels.toml"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One replay at a higher speed (coarser quiet steps), shared by the tests below."""
    import asyncio

    tmp = tmp_path_factory.mktemp("demo")
    config = load_config(PLAN)
    cadence = Cadence(quiet=timedelta(hours=6))
    site, db = tmp / "site", tmp / "demo.db"
    options = DemoOptions(config, site, db, "127.0.0.1", 0, True, False, cadence)
    replay = asyncio.run(run_demo(options))
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

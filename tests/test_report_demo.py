"""The report on the demo's store tells the demo's story: the replay's planned and observed
down time and its four incidents, through the real commands (`demo`, then `report`).

The numbers are not copied from a run: planned down time is worked out from the notice's dates,
observed down time is the plan's plus or minus each scripted fault, matched time loses each
fault's length less the grace it started in.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import timedelta

import pytest
from helpers import MONITOR, ROOT

from monitor.demo.faults import scripted_faults
from monitor.demo.replay import planned_downtime
from monitor.demo.run import REPLAY_END, REPLAY_START
from monitor.plan import Plan
from monitor.plan.load import load_config

PLAN = ROOT / "channels.toml"
RANGE = ("--from", "2022-06-22T12:00", "--until", "2022-07-26T12:00", "--cover", "2h")


def command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MONITOR, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`channel-monitor demo --no-serve --db PATH` once, then `report` on its store."""
    tmp = tmp_path_factory.mktemp("report-demo")
    db = tmp / "demo.db"
    run = command("demo", "--no-serve", "--db", str(db), "--site", str(tmp / "site"))
    assert run.returncode == 0, run.stderr
    table = command("report", "--db", str(db), *RANGE)
    assert table.returncode == 0, table.stderr
    data = command("report", "--db", str(db), *RANGE, "--format", "json")
    assert data.returncode == 0, data.stderr
    return {"stdout": run.stdout, "db": db, "table": table.stdout, "json": json.loads(data.stdout)}


def services(data: dict) -> dict[tuple[str, str], dict]:
    return {(c["channel"], s["service"]): s for c in data["channels"] for s in c["services"]}


def test_the_demo_closes_with_this_report(demo: dict) -> None:
    assert demo["table"].strip() in demo["stdout"]
    assert demo["json"]["resolution"] == "raw"
    assert f"--db {demo['db']} {' '.join(RANGE)}" in demo["stdout"]


def test_planned_down_time_is_the_notices(demo: dict) -> None:
    plan = Plan(load_config(PLAN))
    found = services(demo["json"])
    certificate = found[("hubei-zwfw", "certificate-print")]
    # 06-22 18:00 to 06-23 09:00, and 07-19 18:00 to 07-25 08:30
    assert (
        certificate["planned_down_seconds"]
        == timedelta(days=6, hours=5, minutes=30).total_seconds()
    )
    pension = found[("hubei-zwfw", "pension")]
    assert (
        pension["planned_down_seconds"] == timedelta(days=32, hours=14, minutes=30).total_seconds()
    )
    for ref in plan.services:
        planned = planned_downtime(plan, ref, REPLAY_START, REPLAY_END).total_seconds()
        assert found[ref.key]["planned_down_seconds"] == planned, ref.key


def test_observed_down_time_is_the_plan_plus_the_faults(demo: dict) -> None:
    plan = Plan(load_config(PLAN))
    faults = {(f.channel, f.service): f for f in scripted_faults(plan)}
    whole = (REPLAY_END - REPLAY_START).total_seconds()
    for ref in plan.services:
        row = services(demo["json"])[ref.key]
        if ref.service.observed_by == "browser":
            # a page load costs a second, so the demo loads these only at the start, at their
            # planned changes and at the end: the time between is honestly unobserved
            assert row["observed_seconds"] + row["unobserved_seconds"] == whole, ref.key
            assert row["unobserved_seconds"] > 0, ref.key
            continue
        assert (row["observed_seconds"], row["unobserved_seconds"]) == (whole, 0), ref.key
        fault = faults.get(ref.key)
        length = (fault.end - fault.start).total_seconds() if fault else 0.0
        sign = 0 if fault is None else (-1 if fault.serving else 1)
        assert row["observed_down_seconds"] == row["planned_down_seconds"] + sign * length
        excused = plan.grace.total_seconds() if fault and plan.in_grace(ref, fault.start) else 0
        assert row["matched_seconds"] == whole - (length - excused if fault else 0), ref.key


def test_one_incident_per_fault_with_its_evidence(demo: dict) -> None:
    plan = Plan(load_config(PLAN))
    found = services(demo["json"])
    incidents = [(key, i) for key, row in found.items() for i in row["incidents"]]
    faults = scripted_faults(plan)
    assert len(incidents) == len(faults)
    assert f"{len(faults)} incident(s)" in demo["stdout"]
    step = timedelta(minutes=5)  # the replay's cadence around each fault
    for fault in faults:
        [incident] = found[(fault.channel, fault.service)]["incidents"]
        assert incident["direction"] == fault.direction
        first = incident["first_mismatch"]["at"]
        last = incident["last_mismatch"]["at"]
        assert fault.start.isoformat() <= first <= incident["opened"] < fault.end.isoformat()
        assert first <= last < fault.end.isoformat() <= incident["resolved"]
        assert incident["resolved"] <= (fault.end + 2 * step).isoformat()
        assert f"#{incident['id']} " in demo["stdout"]


def test_hourly_resolution_on_the_same_store(demo: dict) -> None:
    hourly = command(
        "report", "--db", str(demo["db"]), *RANGE, "--format", "json", "--resolution", "hourly"
    )
    assert hourly.returncode == 0, hourly.stderr
    data = json.loads(hourly.stdout)
    assert data["resolution"] == "hourly"
    assert data["totals"]["planned_down_seconds"] == demo["json"]["totals"]["planned_down_seconds"]
    raw_incidents = [s["incidents"] for s in services(demo["json"]).values()]
    assert [s["incidents"] for s in services(data).values()] == raw_incidents

"""What the public files say of planned pauses and incidents: no publication date the plan does
not give (Atom `published` left out, Statuspage `created_at` the plan's published day or the
pause's own start), and incidents in citizens' words, the probe's reason only in the page's
operators' section."""

from __future__ import annotations

import html
import json
import xml.etree.ElementTree as ET
from datetime import date, timedelta
from pathlib import Path

from site_data import add_incident
from test_site_outputs import ATOM, at, real_data, render_site

from monitor.judge import PLAN_ENDED, Verdict
from monitor.plan import Plan
from monitor.plan.change import REMOVED
from monitor.plan.load import validate_config
from monitor.site.feeds import component_id

NOW = "2022-07-01T12:00:00"


def planned_entries(site: Path) -> list[ET.Element]:
    feed = ET.parse(site / "history.atom").getroot()
    return [
        e for e in feed.iter(f"{ATOM}entry") if e.find(f"{ATOM}category").get("term") == "planned"
    ]


def maintenances(site: Path) -> list[dict]:
    text = (site / "api/v2/scheduled-maintenances.json").read_text("utf-8")
    return json.loads(text)["scheduled_maintenances"]


def test_without_a_published_date_none_is_invented(tmp_path: Path) -> None:
    plan = Plan(validate_config(real_data()))
    assert plan.config.monitor.published is None  # the shipped notice gives no date
    site = render_site(plan, tmp_path, at(NOW))
    entries = planned_entries(site)
    assert entries and all(e.find(f"{ATOM}published") is None for e in entries)
    for item in maintenances(site):
        assert item["created_at"] == item["scheduled_for"]  # the pause's own start


def test_the_plans_published_day_dates_every_planned_pause(tmp_path: Path) -> None:
    data = real_data()
    data["monitor"] = {**data["monitor"], "published": date(2022, 6, 10)}
    plan = Plan(validate_config(data))
    site = render_site(plan, tmp_path, at(NOW))
    day = "2022-06-10T00:00:00.000+08:00"
    assert {e.findtext(f"{ATOM}published") for e in planned_entries(site)} == {day}
    assert {item["created_at"] for item in maintenances(site)} == {day}


def test_public_incidents_are_in_citizens_words(tmp_path: Path) -> None:
    plan = Plan(validate_config(real_data()))
    db = tmp_path / "monitor.db"
    ref = plan.services[0]
    reason = "query value 17 > 0"
    opened = at("2022-06-23T10:00:00")
    add_incident(db, *ref.key, "unexpected_up", opened, None, reason, "down", "freeze")
    site = render_site(plan, tmp_path, at(NOW), db)
    operators = "监测指标 17 > 0"
    feed = (site / "history.atom").read_text("utf-8")
    incidents = (site / "api/v2/incidents.json").read_text("utf-8")
    page = html.unescape((site / "index.html").read_text("utf-8"))
    for public in (feed, incidents):
        assert "请勿在暂停期间办理" in public
        assert operators not in public and "17 > 0" not in public and "运维信息）" not in public
    public_part, _, ops_part = page.partition('<details id="ops"')
    assert "请勿在暂停期间办理" in public_part and operators not in public_part
    assert "运维信息）" not in public_part
    assert operators in ops_part  # the detail for operators stays on the page, in their section


def test_an_incident_the_plan_ended_is_not_called_recovered(tmp_path: Path) -> None:
    # One service kept taking business until the freeze ended, one was removed from the plan:
    # the plan ended both incidents, the channel was never seen to change. A third was down
    # and came back. The feeds say which is which.
    plan = Plan(validate_config(real_data()))
    db = tmp_path / "monitor.db"
    kept, back, gone = plan.services[:3]
    opened, ended = at("2022-06-23T10:00:00"), at("2022-06-23T11:00:00")
    never_closed = PLAN_ENDED[(Verdict.UNEXPECTED_UP, "up")]
    add_incident(
        db,
        *kept.key,
        "unexpected_up",
        opened,
        ended,
        "HTTP 200",
        "down",
        resolve_reason=never_closed,
    )
    add_incident(db, *back.key, "unexpected_down", opened, ended, resolve_reason="HTTP 200")
    add_incident(db, *gone.key, "unexpected_down", opened, ended, resolve_reason=REMOVED)
    site = render_site(plan, tmp_path, at(NOW), db)
    feed = ET.parse(site / "history.atom").getroot()
    titles = {
        title.partition("：")[0]: title.rpartition("（")[2].rstrip("）")
        for e in feed.iter(f"{ATOM}entry")
        if e.find(f"{ATOM}category").get("term") == "incident"
        for title in [e.findtext(f"{ATOM}title")]
    }
    incidents = json.loads((site / "api/v2/incidents.json").read_text("utf-8"))["incidents"]
    bodies = {
        i["components"][0]["id"]: i["incident_updates"][0]["body"].partition(": ")[2]
        for i in incidents
    }
    ended = "已随计划调整结束 / ended by a change of the plan"
    name = lambda ref: f"{ref.channel.name} · {ref.service.name}"  # noqa: E731
    assert titles == {
        name(kept): "已随计划调整结束",
        name(gone): "已随计划调整结束",
        name(back): "已恢复正常",
    }
    assert bodies == {
        component_id(kept): ended,
        component_id(gone): ended,
        component_id(back): "已恢复正常 / back to plan",
    }


def test_an_incident_leaves_its_component_as_the_plan_expects_when_it_ends(tmp_path: Path) -> None:
    # The freeze ends 2022-07-25 08:30. A portal that took business to the last minute: the
    # plan ends its incident, and the component is open again, not paused. One that stopped
    # taking business during the freeze: paused, as planned. One that was down after the
    # freeze and came back: open.
    plan = Plan(validate_config(real_data()))
    db = tmp_path / "monitor.db"
    kept, closed, back = plan.services[:3]
    reopened = at("2022-07-25T08:30:00")
    assert plan.expected(kept, reopened).state == "up"
    never_closed = PLAN_ENDED[(Verdict.UNEXPECTED_UP, "up")]
    during, later = at("2022-07-20T10:00:00"), at("2022-07-26T09:00:00")
    add_incident(
        db,
        *kept.key,
        "unexpected_up",
        during,
        reopened,
        "HTTP 200",
        "down",
        resolve_reason=never_closed,
    )
    add_incident(
        db,
        *closed.key,
        "unexpected_up",
        during,
        during + timedelta(hours=1),
        "HTTP 200",
        "down",
        resolve_reason="HTTP 503",
    )
    add_incident(db, *back.key, "unexpected_down", later, later + timedelta(hours=1))
    site = render_site(plan, tmp_path, at("2022-07-26T12:00:00"), db)
    incidents = json.loads((site / "api/v2/incidents.json").read_text("utf-8"))["incidents"]
    after = {
        i["components"][0]["id"]: i["incident_updates"][0]["affected_components"][0]["new_status"]
        for i in incidents
    }
    assert after == {
        component_id(kept): "operational",
        component_id(closed): "under_maintenance",
        component_id(back): "operational",
    }

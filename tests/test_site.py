"""The public page and its files: the real plan rendered before, during and after the freeze,
the Statuspage, iCalendar, Atom and badge files, secrets and markup kept out, the size budget,
atomic publishing, the `render` command and the page served by the running monitor."""

from __future__ import annotations

import json
import os
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import aiohttp
import icalendar
import pytest
from aiohttp import web
from helpers import REAL_PLAN, async_wait_for, real_plan
from servers import aiohttp_server
from site_data import DURING_LATE, add_incident, busy_store

from monitor.cli import main
from monitor.daemon import Daemon
from monitor.judge import Verdict
from monitor.plan import Plan
from monitor.plan.load import validate_config
from monitor.site import feeds
from monitor.site import render as render_module
from monitor.site.model import Seen, Snapshot, build, page_state, snapshot_from_store
from monitor.site.publish import MARKER, SiteError, publish, tidy, work_folder
from monitor.site.render import open_store, render, render_from
from monitor.site.words import Lang, reason_text, zone_label
from monitor.store import Store

BEIJING = "+08:00"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text + BEIJING)


class Sections(HTMLParser):
    """The text of every `<section>` / `<details>` keyed by its `aria-labelledby` or id."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.stack: list[str | None] = []
        self.all: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("section", "details"):
            a = dict(attrs)
            self.stack.append(a.get("aria-labelledby") or a.get("id") or a.get("class"))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("section", "details") and self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.all.append(data)
        for key in self.stack:
            if key:
                self.text[key] = self.text.get(key, "") + data


@pytest.fixture(scope="module")
def plan() -> Plan:
    return real_plan()


def render_at(plan: Plan, tmp: Path, when: datetime, db: Path | None = None) -> Path:
    site = tmp / "site"
    render_from(plan, site, when, db)
    return site


def page(site: Path, name: str = "index.html") -> tuple[str, Sections]:
    html = (site / name).read_text("utf-8")
    return html, Sections(html)


# --- the real plan at the instants that matter -----------------------------------------------


def test_before_the_freeze(plan: Plan, tmp_path: Path) -> None:
    site = render_at(plan, tmp_path, at("2022-06-20T12:00:00"))
    html, s = page(site)
    lead = s.text["now"]
    assert "目前没有按计划暂停的业务。" in lead  # nothing observed: no claim that all works
    assert "73 项业务中，73 项按计划开放，未经监测。" in lead
    assert "将于 2022年6月22日 18:00（北京时间）开始" in lead
    assert "预计 2022年7月25日 08:30（北京时间）恢复" in lead
    assert '<time datetime="2022-06-22T18:00+08:00" data-countdown>' in html
    assert "h-closed" not in s.text  # nothing is paused yet
    assert "h-open" not in s.text  # nothing was seen working either
    assert "企业职工基本养老保险业务" in s.text["h-unobserved"]
    assert "按计划开放，未经监测" in s.text["h-unobserved"]
    window = s.text["h-win"]
    assert "将于 6月23日 09:00（北京时间）开放，7月19日 18:00（北京时间）截止" in window
    _, es = page(site, "en/index.html")
    assert (
        "from 22 Jun 2022 18:00 (UTC+8), expected to end 25 Jul 2022 08:30 (UTC+8)"
        in (es.text["now"])
    )
    status = json.loads((site / "status.json").read_text("utf-8"))
    assert {v["state"] for v in status["services"]} == {"unobserved"}
    assert status["counts"]["unobserved"] == 73 and status["counts"]["open"] == 0


def test_during_the_freeze_inside_the_certificate_window(plan: Plan, tmp_path: Path) -> None:
    site = render_at(plan, tmp_path, at("2022-07-01T12:00:00"))
    _, s = page(site)
    assert "进行中，预计 2022年7月25日 08:30（北京时间）恢复办理。" in s.text["now"]
    assert "开放中，7月19日 18:00（北京时间）截止" in s.text["h-win"]
    assert "企业职工社会保险参保证明查询打印" in s.text["h-unobserved"]
    assert "企业职工社会保险参保证明查询打印" not in s.text["h-closed"]
    assert "企业职工基本养老保险业务" in s.text["h-closed"]
    assert "基本医疗保险费征收" in s.text["h-unobserved"]
    assert "社会保障卡服务" in s.text["h-unobserved"]
    # the offline intakes that go on during the freeze, with where to go instead
    assert "失业保险金、失业补助金和技能提升补贴申领" in s.text["h-unobserved"]
    assert (
        "下一次计划变化：7月19日 18:00（北京时间）：企业职工社会保险参保证明查询打印暂停"
        in (s.text["now"])
    )
    # the July batch deductions are their own pause beside the freeze
    assert "另有 2 项业务按计划暂停（2022年7月灵活就业人员养老保险批扣暂停" in s.text["now"]


def test_certificate_printing_closes_at_18_00_on_07_19(plan: Plan, tmp_path: Path) -> None:
    before = render_at(plan, tmp_path / "a", at("2022-07-19T17:59:59"))
    after = render_at(plan, tmp_path / "b", at("2022-07-19T18:00:00"))
    _, s = page(before)
    assert "企业职工社会保险参保证明查询打印" in s.text["h-unobserved"]
    _, s = page(after)
    assert "企业职工社会保险参保证明查询打印" in s.text["h-closed"]
    assert "已于 7月19日 18:00（北京时间）截止" in s.text["h-win"]
    status = json.loads((after / "status.json").read_text("utf-8"))
    cert = next(v for v in status["services"] if v["service"] == "certificate-print")
    assert (cert["expected"], cert["state"], cert["status"]) == (
        "down",
        "closed",
        "under_maintenance",
    )


def test_during_the_freeze_after_the_certificate_window(plan: Plan, tmp_path: Path) -> None:
    site = render_at(plan, tmp_path, at("2022-07-20T12:00:00"))
    _, s = page(site)
    assert "进行中，预计 2022年7月25日 08:30（北京时间）恢复办理。" in s.text["now"]
    assert "企业职工社会保险参保证明查询打印" in s.text["h-closed"]
    assert "下一次计划变化：7月25日 08:30（北京时间）：53 项业务开放" in s.text["now"]
    _, es = page(site, "en/index.html")
    assert "in progress, expected to end 25 Jul 2022 08:30 (UTC+8)" in es.text["now"]


def test_after_the_freeze(plan: Plan, tmp_path: Path) -> None:
    site = render_at(plan, tmp_path, at("2022-07-26T12:00:00"))
    _, s = page(site)
    assert "已于 2022年7月25日 08:30（北京时间）结束，按计划相关业务已恢复办理。" in s.text["now"]
    assert "另有 2 项业务按计划暂停" in s.text["now"]  # no July batch deduction at all
    assert "预计 2022年8月1日 00:00（北京时间）恢复" in s.text["now"]
    assert "企业职工基本养老保险业务" in s.text["h-unobserved"]
    assert "h-win" not in s.text  # the certificate window is history
    assert "补缴2021社保年度未缴费的月份" in s.text["h-ms"]
    later = render_at(plan, tmp_path / "later", at("2022-08-20T12:00:00"))
    _, s = page(later)
    assert s.text["now"].strip().startswith("目前没有按计划暂停的业务。")
    assert "h-closed" not in s.text
    assert "8月15日" not in s.text["h-ms"] and "10月1日" in s.text["h-ms"]


def test_every_time_is_zoned_24_hour_and_zero_padded(plan: Plan, tmp_path: Path) -> None:
    site = render_at(plan, tmp_path, at("2022-07-01T12:00:00"))
    for name, zone in (("index.html", "（北京时间）"), ("en/index.html", " (UTC+8)")):
        html = (site / name).read_text("utf-8")
        times = re.findall(r'<time datetime="([^"]+)"[^>]*>([^<]+)</time>', html)
        assert times
        for stamp, text in times:
            if "T" in stamp:  # an instant: offset in the attribute, zone and HH:MM in the text
                assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d\+08:00", stamp)
                assert zone in text and re.search(r"(?<!\d)\d\d:\d\d(?!\d)", text), text
                assert not re.search(r"(?<!\d)\d:\d\d", text), text
            else:  # a date
                assert re.fullmatch(r"\d{4}-\d\d-\d\d", stamp)


def test_pages_link_each_other_with_hreflang(plan: Plan, tmp_path: Path) -> None:
    site = render_at(plan, tmp_path, at("2022-07-01T12:00:00"))
    zh = (site / "index.html").read_text("utf-8")
    en = (site / "en/index.html").read_text("utf-8")
    assert '<html lang="zh-CN">' in zh and '<html lang="en">' in en
    assert '<link rel="alternate" hreflang="en" href="en/index.html">' in zh
    assert '<link rel="alternate" hreflang="zh-CN" href="../index.html">' in en
    assert 'href="en/index.html" hreflang="en"' in zh
    assert 'href="../index.html" hreflang="zh-CN"' in en
    for html in (zh, en):  # no request leaves the site: no absolute URL anywhere
        assert not re.search(r'(?:src|href)="(?:https?:)?//', html)


def test_state_groups_use_text_and_icons_not_colour_alone() -> None:
    from monitor.plan import Expectation

    up, down = Expectation("up"), Expectation("down")
    assert page_state(up, Verdict.OK) == "open"
    assert page_state(up, Verdict.UNKNOWN) == "unobserved"
    assert page_state(up, Verdict.UNEXPECTED_DOWN) == "broken"
    assert page_state(down, Verdict.OK) == "closed"
    assert page_state(down, Verdict.UNEXPECTED_UP) == "leak"
    assert page_state(Expectation("any"), Verdict.OK) == "any"


def test_broken_and_unexpectedly_open_services(plan: Plan, tmp_path: Path) -> None:
    when = at("2022-07-01T12:00:00")
    verdicts = {ref.key: Verdict.OK for ref in plan.services}
    verdicts[("hubei-zwfw", "portal")] = Verdict.UNEXPECTED_DOWN
    verdicts[("ehuiban", "pension")] = Verdict.UNEXPECTED_UP
    seen = {("hubei-zwfw", "portal"): Seen(when, False, "HTTP 503")}
    render(plan, tmp_path / "site", when, None, Snapshot(verdicts, seen))
    html, s = page(tmp_path / "site")
    assert "另有 1 项按计划应开放的业务暂时无法使用" in s.text["now"]
    assert "应开放但暂时无法使用" in s.text["h-broken"] and "网站门户" in s.text["h-broken"]
    assert '<use href="#i-broken"/>' in html and '<use href="#i-leak"/>' in html
    # unexpected up: told to citizens as paused, to operators in the folded section
    assert "鄂汇办APP" in s.text["h-closed"]
    assert "按计划应暂停，但仍在受理" in s.text["ops"]
    assert '<details id="ops"' in html and '<details id="ops" open' not in html
    summary = json.loads((tmp_path / "site/api/v2/summary.json").read_text("utf-8"))
    by_id = {c["id"]: c for c in summary["components"]}
    assert by_id["hubei-zwfw.portal"]["status"] == "major_outage"
    assert by_id["hubei-zwfw"]["status"] == "partial_outage"
    assert by_id["ehuiban.pension"]["status"] == "under_maintenance"
    assert summary["status"]["indicator"] == "major"


def test_the_headline_claims_only_what_was_seen(plan: Plan, tmp_path: Path) -> None:
    """Two portals seen working, the rest never observed: the page says so, in the headline,
    per service and in status.json, and the Statuspage files stay valid."""
    when = at("2022-07-01T12:00:00")
    portals = [("si-12333", "portal"), ("hubei-zwfw", "portal")]
    verdicts = {key: Verdict.OK for key in portals}
    seen = {key: Seen(when, True, "") for key in portals}
    render(plan, tmp_path / "site", when, None, Snapshot(verdicts, seen))
    html, s = page(tmp_path / "site")
    lead = s.text["now"]
    assert "73 项业务中，2 项按计划开放，经监测可以办理；17 项按计划开放，未经监测；" in lead
    assert "54 项按计划暂停。" in lead
    assert "均可办理" not in lead and "正常办理" not in lead
    assert "按计划开放，经监测可以办理" in s.text["h-open"] and "网站门户" in s.text["h-open"]
    assert "基本医疗保险费征收" not in s.text["h-open"]
    unobserved = s.text["h-unobserved"]
    assert "按计划开放，未经监测" in unobserved and "基本医疗保险费征收" in unobserved
    assert "无法确认实际能否办理" in unobserved and "网站门户" not in unobserved
    assert '<use href="#i-unobserved"/>' in html
    _, es = page(tmp_path / "site", "en/index.html")
    assert (
        "Of 73 services: 2 planned open and seen working; 17 planned open but not observed;"
        in (es.text["now"])
    )
    assert "Planned open, not observed" in es.text["h-unobserved"]
    status = json.loads((tmp_path / "site/status.json").read_text("utf-8"))
    assert status["counts"] == {
        "broken": 0,
        "closed": 54,
        "open": 2,
        "unobserved": 17,
        "any": 0,
        "leak": 0,
    }
    states = {(v["channel"], v["service"]): v["state"] for v in status["services"]}
    assert [states[key] for key in portals] == ["open", "open"]
    assert states[("hubei-etax", "medical-premium")] == "unobserved"
    assert "not observed" in status["headline"]["en"] and "未经监测" in status["headline"]["zh"]
    # Statuspage has no "unknown": a component nobody observed stays operational (valid), and
    # the page's description says how many were not observed
    summary = json.loads((tmp_path / "site/api/v2/summary.json").read_text("utf-8"))
    by_id = {c["id"]: c for c in summary["components"]}
    for component in summary["components"]:
        check_component(component)
    assert by_id["hubei-etax.medical-premium"]["status"] == "operational"
    assert summary["status"]["indicator"] == "maintenance"
    assert summary["status"]["description"].endswith("(17 of 73 services not observed)")
    badge = (tmp_path / "site/badges/hubei-etax/medical-premium.svg").read_text("utf-8")
    assert "按计划开放，未经监测" in badge


def test_all_is_well_only_when_all_was_seen(plan: Plan, tmp_path: Path) -> None:
    when = at("2022-08-20T12:00:00")  # nothing is paused by the plan
    render(plan, tmp_path / "none", when, None, Snapshot())
    html, s = page(tmp_path / "none")
    assert s.text["now"].strip().startswith("目前没有按计划暂停的业务。")
    assert "73 项按计划开放，未经监测" in s.text["now"]
    assert 'class="hl st-unobserved"' in html  # no tick for what nobody saw
    verdicts = {ref.key: Verdict.OK for ref in plan.services}
    render(plan, tmp_path / "all", when, None, Snapshot(verdicts))
    html, s = page(tmp_path / "all")
    assert s.text["now"].strip().startswith("各项业务按计划开放，经监测均可办理。")
    assert 'class="hl st-open"' in html and "h-unobserved" not in s.text
    _, es = page(tmp_path / "all", "en/index.html")
    assert "All business is planned open, and all of it was seen working." in es.text["now"]
    summary = json.loads((tmp_path / "all/api/v2/summary.json").read_text("utf-8"))
    assert summary["status"] == {"indicator": "none", "description": "All Systems Operational"}


# --- machine-readable files ------------------------------------------------------------------

PAGE_KEYS = {"id", "name", "url", "time_zone", "updated_at"}
COMPONENT_KEYS = {
    "id",
    "name",
    "status",
    "created_at",
    "updated_at",
    "position",
    "description",
    "showcase",
    "start_date",
    "group_id",
    "page_id",
    "group",
    "only_show_if_degraded",
}
INCIDENT_KEYS = {
    "id",
    "name",
    "status",
    "created_at",
    "updated_at",
    "monitoring_at",
    "resolved_at",
    "impact",
    "shortlink",
    "started_at",
    "page_id",
    "incident_updates",
    "components",
}
UPDATE_KEYS = {
    "id",
    "status",
    "body",
    "incident_id",
    "created_at",
    "updated_at",
    "display_at",
    "affected_components",
    "deliver_notifications",
    "custom_tweet",
    "tweet_id",
}
MAINTENANCE_KEYS = INCIDENT_KEYS | {"scheduled_for", "scheduled_until"}
COMPONENT_STATUSES = {
    "operational",
    "degraded_performance",
    "partial_outage",
    "major_outage",
    "under_maintenance",
}


@pytest.fixture(scope="module")
def busy_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busy_store(tmp_path_factory.mktemp("busy") / "monitor.db")


@pytest.fixture(scope="module")
def busy_site(busy_db: Path) -> Path:
    site = busy_db.parent / "site"
    render_from(real_plan(), site, DURING_LATE, busy_db)
    return site


def check_component(component: dict) -> None:
    keys = COMPONENT_KEYS | ({"components"} if component["group"] else set())
    assert set(component) == keys
    assert component["status"] in COMPONENT_STATUSES


def test_summary_json_has_statuspage_field_names(busy_site: Path) -> None:
    summary = json.loads((busy_site / "api/v2/summary.json").read_text("utf-8"))
    assert set(summary) == {
        "page",
        "components",
        "incidents",
        "scheduled_maintenances",
        "status",
    }
    assert set(summary["page"]) == PAGE_KEYS
    assert summary["page"]["time_zone"] == "Asia/Shanghai"
    for component in summary["components"]:
        check_component(component)
    groups = [c for c in summary["components"] if c["group"]]
    assert len(groups) == 15 and all(c["group_id"] is None for c in groups)
    children = {c["id"] for c in summary["components"] if not c["group"]}
    assert children == {i for g in groups for i in g["components"]}
    assert len(summary["incidents"]) == 1  # only the unresolved one
    for incident in summary["incidents"]:
        assert set(incident) == INCIDENT_KEYS
        assert incident["impact"] in ("none", "minor", "major", "critical")
        for update in incident["incident_updates"]:
            assert set(update) == UPDATE_KEYS
    (freeze,) = [m for m in summary["scheduled_maintenances"] if len(m["components"]) > 50]
    assert set(freeze) == MAINTENANCE_KEYS
    assert freeze["status"] == "in_progress" and freeze["impact"] == "maintenance"
    assert freeze["scheduled_for"] == "2022-06-22T18:00:00.000+08:00"
    assert freeze["scheduled_until"] == "2022-07-25T08:30:00.000+08:00"
    for component in freeze["components"]:
        assert set(component) == COMPONENT_KEYS
    assert set(summary["status"]) == {"indicator", "description"}
    assert summary["status"]["indicator"] == "major"  # the portal is down


def test_statuspage_files_agree(busy_site: Path, plan: Plan, tmp_path: Path) -> None:
    api = busy_site / "api/v2"
    status = json.loads((api / "status.json").read_text("utf-8"))
    assert set(status) == {"page", "status"}
    components = json.loads((api / "components.json").read_text("utf-8"))
    assert set(components) == {"page", "components"}
    active = json.loads((api / "scheduled-maintenances/active.json").read_text("utf-8"))
    upcoming = json.loads((api / "scheduled-maintenances/upcoming.json").read_text("utf-8"))
    assert {m["status"] for m in active["scheduled_maintenances"]} == {"in_progress"}
    assert upcoming["scheduled_maintenances"] == []
    paused = {c["id"] for c in components["components"] if c["status"] == "under_maintenance"}
    assert "hubei-zwfw.certificate-print" in paused and "ehuiban.social-security-card" not in paused
    # before the freeze the same pause is upcoming, and nothing is under maintenance
    before = render_at(plan, tmp_path, at("2022-06-20T12:00:00"))
    upcoming = json.loads(
        (before / "api/v2/scheduled-maintenances/upcoming.json").read_text("utf-8")
    )
    assert {m["status"] for m in upcoming["scheduled_maintenances"]} == {"scheduled"}
    assert any(m["id"].startswith("freeze-") for m in upcoming["scheduled_maintenances"])
    summary = json.loads((before / "api/v2/summary.json").read_text("utf-8"))
    assert summary["status"]["indicator"] == "none"


def test_status_json_holds_plan_verdicts_and_incidents(busy_site: Path) -> None:
    status = json.loads((busy_site / "status.json").read_text("utf-8"))
    assert status["timezone"] == "Asia/Shanghai" and status["at"].startswith("2022-07-20T12:00")
    assert {p["id"] for p in status["periods"]} == {"freeze", "certificate-window", "july-batch"}
    assert len(status["milestones"]) == 15 and len(status["services"]) == 73
    portal = next(v for v in status["services"] if v["channel"] == "hubei-zwfw" and v["probed"])
    assert portal["verdict"] == "unexpected_down" and portal["state"] == "broken"
    assert {i["direction"] for i in status["incidents"]} == {"unexpected_down", "unexpected_up"}
    assert "进行中" in status["headline"]["zh"] and "in progress" in status["headline"]["en"]


def test_calendar_parses_with_time_zones(busy_site: Path, plan: Plan) -> None:
    raw = (busy_site / "calendar.ics").read_bytes()
    assert all(len(line) <= 75 for line in raw.split(b"\r\n"))
    cal = icalendar.Calendar.from_ical(raw)
    (zone,) = cal.walk("VTIMEZONE")
    assert str(zone["TZID"]) == "Asia/Shanghai"
    events = cal.walk("VEVENT")
    assert len(events) == 3 + 15  # every period and every milestone
    freeze = next(e for e in events if "停机切换" in str(e["SUMMARY"]))
    start, end = freeze.decoded("DTSTART"), freeze.decoded("DTEND")
    assert start == at("2022-06-22T18:00:00") and end == at("2022-07-25T08:30:00")
    assert freeze["DTSTART"].params["TZID"] == "Asia/Shanghai"
    deduction = next(e for e in events if "省本级灵活就业人员7、8月" in str(e["SUMMARY"]))
    assert str(deduction.decoded("DTSTART")) == "2022-08-15"  # a date milestone: all day
    assert len({str(e["UID"]) for e in events}) == len(events)


def test_vtimezone_follows_daylight_saving() -> None:
    from zoneinfo import ZoneInfo

    lines = feeds.vtimezone(
        ZoneInfo("America/New_York"), at("2022-01-10T00:00:00"), at("2022-12-20T00:00:00")
    )
    text = "\r\n".join(lines)
    assert "BEGIN:DAYLIGHT" in text and "DTSTART:20220313T020000" in text
    assert "DTSTART:20221106T020000" in text and "TZOFFSETTO:-0400" in text


def test_history_atom_and_badges(busy_site: Path, plan: Plan) -> None:
    ns = {"a": "http://www.w3.org/2005/Atom"}
    feed = ET.parse(busy_site / "history.atom").getroot()
    entries = feed.findall("a:entry", ns)
    assert {e.find("a:category", ns).get("term") for e in entries} == {"incident", "planned"}
    for entry in entries:
        assert entry.find("a:id", ns).text.startswith("urn:uuid:")
        datetime.fromisoformat(entry.find("a:updated", ns).text)
    for ref in plan.services:
        svg = ET.parse(busy_site / f"badges/{ref.channel.id}/{ref.service.id}.svg").getroot()
        assert ref.service.name in "".join(svg.itertext())
    portal = ET.parse(busy_site / "badges/hubei-zwfw/portal.svg").getroot()
    assert "应开放但暂时无法使用" in "".join(portal.itertext())


def test_badges_are_written_as_their_template_says() -> None:
    """Badges are formatted in Python for speed; `templates/badge.svg` says what they are,
    and every badge equals that template's, markup and forbidden characters in names too."""
    template = render_module._ENV.get_template("badge.svg")
    names = ("社保卡", "A <b>&\"'", "tab\there\vand\x85", "x" * 40)
    for name in names:
        for state in ("open", "broken", "leak", "unobserved"):
            width = round(feeds.text_width(name), 1)
            b = {"label": name, "message": state, "title": f"{name} · {name}: {state}",
                 "colour": feeds.BADGE_COLOURS[state], "left": width, "right": 60.5,
                 "width": round(width + 60.5, 1)}  # fmt: skip
            assert render_module.badge_svg(b) == template.render(b=b), (name, state)


# --- history bars and the size budget ----------------------------------------------------------


def test_size_budget_with_90_days_of_hourly_history(busy_site: Path) -> None:
    size = (busy_site / "index.html").stat().st_size + (busy_site / "style.css").stat().st_size
    en = (busy_site / "en/index.html").stat().st_size + (busy_site / "style.css").stat().st_size
    print(f"index.html + style.css: {size} bytes; en/index.html + style.css: {en} bytes")
    assert size < 60 * 1024 and en < 60 * 1024
    html = (busy_site / "index.html").read_text("utf-8")
    assert html.count("<svg viewBox=") >= 15  # a bar for every channel at least
    assert "意外中断" in Sections(html).text["h-hist"]


def test_bars_draw_planned_pauses_as_planned(plan: Plan, busy_db: Path) -> None:
    store = open_store(busy_db)
    try:
        from monitor.site import history

        past = history.load(plan, store, DURING_LATE)
    finally:
        store.db.close()
    assert past.last_day - past.first_day == timedelta(days=89)
    bars = {bar.ref.key: bar for bar in past.bars}
    card = bars[("ehuiban", "social-security-card")]
    assert card.counts["planned"] == 0 and card.counts["ok"] == 90
    pension = bars[("alipay-smart-hrss", "pension")]
    # 06-22 (the freeze starts at 18:00) to 07-20: 29 days planned, none an outage
    assert pension.counts["planned"] == 29 and pension.counts["down"] == 0
    assert [run.kind for run in pension.runs] == ["ok", "planned"]  # runs of equal days merged


def test_snapshot_from_the_store_as_of_an_instant(plan: Plan, tmp_path: Path) -> None:
    db = tmp_path / "monitor.db"
    opened = at("2022-07-01T10:00:00")
    add_incident(db, "hubei-zwfw", "portal", "unexpected_down", opened, opened + timedelta(hours=1))
    store = open_store(db)
    try:
        during = snapshot_from_store(plan, store, opened + timedelta(minutes=30))
        after = snapshot_from_store(plan, store, opened + timedelta(hours=2))
        before = snapshot_from_store(plan, store, opened - timedelta(minutes=1))
    finally:
        store.db.close()
    key = ("hubei-zwfw", "portal")
    assert during.verdicts[key] == Verdict.UNEXPECTED_DOWN
    assert after.verdicts[key] == Verdict.UNKNOWN == before.verdicts[key]  # no observations


# --- words -------------------------------------------------------------------------------------


def test_reasons_are_translated_and_unknown_text_never_passes() -> None:
    assert reason_text("HTTP 503", "zh") == "服务器返回 HTTP 503"
    assert reason_text("timeout after 10s", "en") == "no answer within 10s"
    assert reason_text("body matches maintenance notice", "zh") == "页面显示维护公告"
    assert reason_text("connection failed (ClientOSError)", "en") == "connection failed"
    assert reason_text("HTTP 503 token=abc", "en") == "other reason"
    assert reason_text("<b>whatever the server said</b>", "zh") == "其他原因"
    assert feeds.safe_reason("HTTP 200") == "HTTP 200"
    assert feeds.safe_reason("https://x.example/?token=1") == "other"


def test_times_and_zones() -> None:
    from zoneinfo import ZoneInfo

    shanghai = ZoneInfo("Asia/Shanghai")
    now = at("2022-07-01T12:00:00")
    zh, en = Lang("zh", shanghai, now), Lang("en", shanghai, now)
    assert zh.when_text(at("2022-07-25T08:30:00")) == "7月25日 08:30（北京时间）"
    assert zh.when_text(at("2023-01-05T07:05:00")) == "2023年1月5日 07:05（北京时间）"
    assert en.when_text(at("2022-07-25T08:30:00")) == "25 Jul 08:30 (UTC+8)"
    york = ZoneInfo("America/New_York")
    assert zone_label(at("2022-07-01T00:00:00"), york, "zh") == "UTC-4"
    assert zone_label(at("2022-12-01T00:00:00"), york, "en") == "UTC-5"
    assert zone_label(at("2022-07-01T00:00:00"), ZoneInfo("Asia/Kolkata"), "en") == "UTC+5:30"


# --- secrets and markup ------------------------------------------------------------------------

TOKEN = "tok-7f3a9c1e5b"
HEADER_VALUE = "hdr-2b8d4f6a0c"
BODY_SECRET = "body-9e1c3a5f7d"
SCRIPT = "<script>alert(1)</script>"


def secret_plan(base: str) -> Plan:
    url = f"{base}/svc/check?token={TOKEN}"
    return Plan(
        validate_config(
            {
                "monitor": {"failure_threshold": 1, "success_threshold": 1, "grace": "0s"},
                "channels": [
                    {
                        "id": "evil",
                        "name": SCRIPT,
                        "name_en": SCRIPT,
                        "kind": "web",
                        "group": "online",
                        "note": f"{SCRIPT} <img src=x onerror=alert(2)>",
                        "services": [
                            {
                                "id": "svc",
                                "name": f"业务{SCRIPT}",
                                "probe": {
                                    "url": url,
                                    "headers": {"Authorization": f"Bearer {HEADER_VALUE}"},
                                    "body_not_matches": "maintenance",
                                },
                            }
                        ],
                    }
                ],
            }
        )
    )


async def test_no_probe_url_header_or_body_reaches_any_file(tmp_path: Path) -> None:
    seen_headers: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen_headers.append(request.headers.get("Authorization", ""))
        return web.Response(text=f"{BODY_SECRET} maintenance {TOKEN}", status=200)

    app = web.Application()
    app.router.add_get("/svc/check", handler)
    async with aiohttp_server(app) as base:
        plan = secret_plan(base)
        daemon = Daemon(plan, tmp_path / "monitor.db", tmp_path / "site", port=0)
        try:
            await daemon.start(schedule=False, serve=False)
            result = await daemon.pipeline.probe(plan.services[0])
            assert result is not None and result.verdict == Verdict.UNEXPECTED_DOWN
            assert seen_headers == [f"Bearer {HEADER_VALUE}"]  # the secrets were really used
            await daemon.pipeline.flush()
            await daemon.pipeline.planned_transition(daemon.clock.now())
        finally:
            await daemon.stop()
    # the running monitor's render, then `render` from the store
    assert (tmp_path / "site/index.html").exists()
    files = [p for p in (tmp_path / "site").rglob("*") if p.is_file()]
    render_from(plan, tmp_path / "again", datetime.now().astimezone(), tmp_path / "monitor.db")
    files += [p for p in (tmp_path / "again").rglob("*") if p.is_file()]
    assert len(files) > 20
    address = base.removeprefix("http://")  # 127.0.0.1:PORT of the probed server
    secrets = [TOKEN, HEADER_VALUE, BODY_SECRET, "svc/check", address, "Bearer"]
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, (path, secret)
        if path.suffix in (".html", ".svg", ".atom"):
            assert b"<script>alert(1)" not in data and b"<img src=x" not in data, path
    html = (tmp_path / "again/index.html").read_text("utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "页面显示维护公告" in html  # the reason, translated from its fixed phrase
    text = "".join(Sections(html).all)
    assert SCRIPT in text  # shown as text, exactly


# --- atomic publishing -------------------------------------------------------------------------


def test_publish_swaps_whole_folders_and_keeps_site_a_plain_folder(tmp_path: Path) -> None:
    target = tmp_path / "site"
    publish({"index.html": b"one", "a/b.json": b"1"}, target)
    publish({"index.html": b"two", "c.json": b"2"}, target)
    assert target.is_dir() and not target.is_symlink()
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == [
        MARKER,
        "c.json",
        "index.html",
    ]
    assert (target / "index.html").read_bytes() == b"two"
    assert (target / MARKER).is_file()  # every published folder says it is ours
    work = work_folder(target)
    assert (work / ".gitignore").read_text().strip().endswith("*")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".site.render", "site"]
    tidy(target)  # nothing publishes any more: the work folder goes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]
    publish({"index.html": b"three"}, target)
    assert (target / "index.html").read_bytes() == b"three"


def test_a_tidy_cut_short_is_finished_by_the_next(tmp_path: Path) -> None:
    """`run` gives the work folder two seconds at stop (a version of 100,000 badges takes
    longer): what is left is still known as ours, and the next tidy removes it."""
    target = tmp_path / "site"
    files = {f"badges/b{i}.svg": b"x" for i in range(200)}
    publish(files, target)
    publish({**files, "index.html": b"two"}, target)  # the first version waits in the work folder
    work = work_folder(target)
    assert tidy(target, seconds=0) is False  # the deadline passes after one file
    (left,) = [p for p in work.iterdir() if p.is_dir()]
    assert left.name.startswith("trash-") and any(left.rglob("*.svg"))
    assert (left / MARKER).is_file(), "the marker goes last: what is left is known as ours"
    assert tidy(target) is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]
    assert (target / "index.html").read_bytes() == b"two"


def test_a_folder_of_someones_own_by_a_trash_name_is_left_alone(tmp_path: Path) -> None:
    """Only a folder with our marker (or an empty one by our trash name, whose marker had
    just gone) is ours to remove from the work folder."""
    target = tmp_path / "site"
    publish({"index.html": b"one"}, target)
    publish({"index.html": b"two"}, target)
    own = work_folder(target) / "trash-notes"
    own.mkdir()
    (own / "mine.txt").write_text("keep")
    empty = work_folder(target) / "trash-new-x"
    empty.mkdir()
    publish({"index.html": b"three"}, target)
    tidy(target)
    assert (own / "mine.txt").read_text() == "keep"
    assert not empty.exists()


def test_publish_never_replaces_what_it_did_not_publish(tmp_path: Path) -> None:
    """A folder of one's own or a plain file at the site path is refused and left as it is."""
    own = tmp_path / "p"
    own.mkdir()
    (own / "thesis.txt").write_text("x")
    plain = tmp_path / "f"
    plain.write_text("y")
    for target in (own, plain):
        with pytest.raises(SiteError, match="--site"):
            publish({"index.html": b"new"}, target)
    assert [p.name for p in own.iterdir()] == ["thesis.txt"] and plain.read_text() == "y"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "p"]  # nothing swapped aside
    empty = tmp_path / "empty"
    empty.mkdir()
    publish({"index.html": b"new"}, empty)  # an empty folder has nothing to lose
    publish({"index.html": b"again"}, empty)
    assert (empty / "index.html").read_bytes() == b"again"


@pytest.mark.parametrize("command", ["render", "run", "demo"])
def test_commands_refuse_a_site_they_did_not_publish(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "channels.toml"
    config.write_text(REAL_PLAN.read_text("utf-8"), "utf-8")
    own = tmp_path / "p"
    own.mkdir()
    (own / "thesis.txt").write_text("x")
    (tmp_path / "f").write_text("y")
    for site in (own, tmp_path / "f"):
        args = [command, "--config", str(config), "--site", str(site), "--db", "none.db"]
        code = main([*args, "--listen", "127.0.0.1:0"] if command != "render" else args)
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        assert f"--site {site}" in err and ("new or empty folder" in err), err
    assert (own / "thesis.txt").read_text() == "x" and (tmp_path / "f").read_text() == "y"
    assert not (tmp_path / ".p.render").exists() and not (tmp_path / ".f.render").exists()


def test_render_leaves_no_work_folder(tmp_path: Path, plan: Plan) -> None:
    site = tmp_path / "out" / "site"
    for _ in range(2):
        render_from(plan, site, at("2022-07-01 10:00"), None)
    assert sorted(p.name for p in site.parent.iterdir()) == ["site"]
    assert (site / "index.html").is_file() and (site / MARKER).is_file()


def test_a_crash_mid_render_leaves_the_old_page(tmp_path: Path) -> None:
    target = tmp_path / "site"
    publish({"index.html": b"old", "status.json": b"{}"}, target)

    class Exploding(dict):
        def items(self):
            yield "status.json", b'{"new": true}'
            raise RuntimeError("crash mid-render")

    with pytest.raises(RuntimeError):
        publish(Exploding(), target)
    assert (target / "index.html").read_bytes() == b"old"
    assert (target / "status.json").read_bytes() == b"{}"
    assert [p.name for p in work_folder(target).iterdir() if p.is_dir()] == []
    publish({"index.html": b"new"}, target)
    assert (target / "index.html").read_bytes() == b"new"


def test_publish_links_the_files_it_published_unchanged(tmp_path: Path) -> None:
    """A file whose bytes did not change since this process published it is the same file in
    the new version (a hard link: at 10,000 services most badges do not change); the rest is
    written, and a file someone changed in the published folder is written again."""
    target = tmp_path / "site"
    first = {"index.html": b"one", "badges/a.svg": b"<svg>a</svg>", "badges/b.svg": b"b"}
    publish(first, target)
    before = {name: (target / name).stat().st_ino for name in first}
    (target / "badges/b.svg").write_bytes(b"edited by hand")
    publish({**first, "index.html": b"two"}, target)
    assert (target / "index.html").read_bytes() == b"two"
    assert (target / "badges/a.svg").stat().st_ino == before["badges/a.svg"]  # linked
    assert (target / "index.html").stat().st_ino != before["index.html"]
    assert (target / "badges/b.svg").read_bytes() == b"b"  # the hand edit is not carried over
    assert (target / "badges/b.svg").stat().st_ino != before["badges/b.svg"]
    publish({"index.html": b"three"}, target)  # what is no longer published goes
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == [MARKER, "index.html"]
    publish({**first, "index.html": b"four"}, target)
    assert (target / "badges/a.svg").read_bytes() == b"<svg>a</svg>"
    other = tmp_path / "other"
    publish(first, other)  # another target links nothing from this one
    assert (other / "badges/a.svg").stat().st_ino != (target / "badges/a.svg").stat().st_ino


def test_publish_writes_pieces_made_while_it_writes(tmp_path: Path) -> None:
    """A file given as an iterator of pieces (`status.json` and the Statuspage files: at
    100,000 services tens of MB each) is written as its pieces are made, once through, and
    recorded: the next publish links the same bytes given whole, and writes other bytes."""
    target = tmp_path / "site"
    made: list[int] = []

    def pieces() -> Iterator[bytes]:
        for number in range(3):
            made.append(number)
            yield f"[{number}]".encode()

    publish({"status.json": pieces(), "index.html": b"one"}, target)
    assert (target / "status.json").read_bytes() == b"[0][1][2]" and made == [0, 1, 2]
    first = (target / "status.json").stat().st_ino
    publish({"status.json": b"[0][1][2]", "index.html": b"two"}, target)
    assert (target / "status.json").stat().st_ino == first  # the same bytes: linked
    publish({"status.json": iter([b"[9]"]), "index.html": b"two"}, target)
    assert (target / "status.json").read_bytes() == b"[9]"


def test_readers_never_see_a_half_written_or_mixed_version(tmp_path: Path) -> None:
    target = tmp_path / "site"
    size = 256 * 1024
    publish({"index.html": b"0" * size, "status.json": b"0" * size}, target)
    stop = threading.Event()
    problems: list[str] = []
    reads = [0]

    def reader() -> None:
        while not stop.is_set():
            try:
                folder = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                problems.append("no site")  # the exchange never leaves the name empty
                continue
            try:
                contents = []
                for name in ("index.html", "status.json"):
                    fd = os.open(name, os.O_RDONLY, dir_fd=folder)
                    with os.fdopen(fd, "rb") as handle:
                        contents.append(handle.read())
            except FileNotFoundError:
                continue  # that version was removed two publishes later: nothing to compare
            finally:
                os.close(folder)
            reads[0] += 1
            for data in contents:
                if len(data) != size or len(set(data)) != 1:
                    problems.append("half-written file")
            if contents[0][:1] != contents[1][:1]:
                problems.append(f"mixed versions {contents[0][:1]!r} {contents[1][:1]!r}")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in range(1, 40):
            mark = str(version // 2 % 10).encode()  # every other version links both files
            publish({"index.html": mark * size, "status.json": mark * size}, target)
    finally:
        stop.set()
        thread.join()
    assert reads[0] > 0
    assert problems == []


# --- the render command --------------------------------------------------------------------------


def test_render_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    site = tmp_path / "out"
    code = main(
        [
            "render",
            "--config",
            str(REAL_PLAN),
            "--db",
            str(tmp_path / "none.db"),
            "--site",
            str(site),
            "--at",
            "2022-07-01T12:00",
        ]
    )
    assert code == 0
    assert "no history yet" in capsys.readouterr().out
    assert not (tmp_path / "none.db").exists()  # a missing store is not created
    expected = {
        "index.html",
        "en/index.html",
        "style.css",
        "countdown.js",
        "status.json",
        "api/v2/summary.json",
        "api/v2/status.json",
        "api/v2/components.json",
        "api/v2/scheduled-maintenances/upcoming.json",
        "api/v2/scheduled-maintenances/active.json",
        "history.atom",
        "calendar.ics",
        "badges/hubei-zwfw/certificate-print.svg",
    }
    assert expected <= {str(p.relative_to(site)) for p in site.rglob("*") if p.is_file()}
    (tmp_path / "bad.db").write_text("not a database")
    bad = ["render", "--config", str(REAL_PLAN), "--db", str(tmp_path / "bad.db")]
    code = main([*bad, "--site", str(site)])
    assert code == 2
    assert "not a channel-monitor store" in capsys.readouterr().err


# --- the running monitor -------------------------------------------------------------------------


def probed_plan(base: str) -> Plan:
    return Plan(
        validate_config(
            {
                "monitor": {"interval": "1s", "timeout": "2s", "grace": "0s"},
                "channels": [
                    {
                        "id": "web",
                        "name": "测试渠道",
                        "kind": "web",
                        "group": "online",
                        "services": [
                            {
                                "id": "home",
                                "name": "首页",
                                "probe": {"url": f"{base}/"},
                            }
                        ],
                    }
                ],
            }
        )
    )


async def test_the_running_monitor_renders_and_serves_the_site(tmp_path: Path) -> None:
    async def home(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", home)
    site = tmp_path / "site"

    def verdict() -> str | None:
        if not (site / "status.json").exists():
            return None
        return json.loads((site / "status.json").read_text("utf-8"))["services"][0]["verdict"]

    async with aiohttp_server(app) as home_url:
        daemon = Daemon(probed_plan(home_url), tmp_path / "monitor.db", site, port=0)
        try:
            await daemon.start()
            base = f"http://127.0.0.1:{daemon.port}"
            # the first render when the server starts, then verdicts
            await async_wait_for(lambda: verdict() == "ok", what="a page with the verdict ok")
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/") as response:
                    assert response.status == 200
                    assert response.headers["Content-Type"].startswith("text/html")
                    assert '<html lang="zh-CN">' in await response.text()
                async with http.get(f"{base}/en", allow_redirects=False) as response:
                    assert response.status == 302 and response.headers["Location"] == "/en/"
                async with http.get(f"{base}/en/") as response:
                    assert '<html lang="en">' in await response.text()
                async with http.get(f"{base}/api/v2/summary.json") as response:
                    assert response.content_type == "application/json"
                async with http.get(f"{base}/calendar.ics") as response:
                    assert response.content_type == "text/calendar"
                async with http.get(f"{base}/healthz") as response:
                    assert (await response.json())["status"] == "ok"
                async with http.get(f"{base}/metrics") as response:
                    assert response.status == 200 and "text/plain" in response.content_type
                for path in ("/../monitor.db", "/%2e%2e/monitor.db", "/nope.html"):
                    async with http.get(f"{base}{path}") as response:
                        assert response.status == 404, path
        finally:
            await daemon.stop()
    # the previous version is kept only while the monitor publishes; stopped, nothing is left
    assert not work_folder(site).exists()


def test_build_is_pure_and_needs_no_store(plan: Plan) -> None:
    from monitor.site.history import History, window

    first, last = window(DURING_LATE, plan.zone)
    model = build(plan, DURING_LATE, Snapshot(), History(first, last))
    assert model.headline.kind == "down" and model.headline.end == at("2022-07-25T08:30:00")
    assert model.count("closed") + model.count("unobserved") == len(plan.services)
    assert model.count("open") == 0  # nothing was observed, so nothing is "seen working"


def test_store_opened_read_only_is_not_written(tmp_path: Path, plan: Plan) -> None:
    db = tmp_path / "monitor.db"
    Store(db).close()
    before = db.stat().st_mtime_ns
    render_from(plan, tmp_path / "site", DURING_LATE, db)
    assert db.stat().st_mtime_ns == before


def test_the_operators_section_says_which_incidents_the_plan_ended(
    plan: Plan, tmp_path: Path
) -> None:
    # One portal answered through the whole freeze: its incident ended when the freeze did,
    # and the operators read that it never closed; one that closed reads as before.
    db = tmp_path / "store.db"
    ended = "plan now expects up; the channel never closed"
    add_incident(
        db, "ehuiban", "pension", "unexpected_up", at("2022-07-20T09:00:00"),
        at("2022-07-25T08:31:00"), "HTTP 200", "down", "freeze", resolve_reason=ended,
    )  # fmt: skip
    add_incident(
        db, "ehuiban", "work-injury", "unexpected_up", at("2022-07-21T09:00:00"),
        at("2022-07-21T10:00:00"), "HTTP 200", "down", "freeze",
    )  # fmt: skip
    site = render_at(plan, tmp_path, at("2022-07-26T12:00:00"), db)
    _, zh = page(site)
    _, en = page(site, "en/index.html")
    assert zh.text["ops"].count("因计划变更结束") == 1
    assert "因计划变更结束：计划已改为开放，渠道始终未暂停" in zh.text["ops"]
    assert en.text["ops"].count("ended by a change of the plan") == 1
    assert "the plan now expects it up; the channel never closed" in en.text["ops"]

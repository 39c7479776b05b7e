"""The page's files as outside readers take them: strict XML parsers on every feed and badge,
stable and unique ids in the Atom feed and the Statuspage files, and absolute addresses when the
plan says where the page lives."""

from __future__ import annotations

import json
import re
import tomllib
import xml.etree.ElementTree as ET
from datetime import date, datetime
from pathlib import Path

import icalendar
import pytest
from helpers import REAL_PLAN, missing, python_m, write_plan
from site_data import add_incident

from monitor.plan import Plan
from monitor.plan.errors import ConfigError
from monitor.plan.load import validate_config
from monitor.site.render import render_from

ATOM = "{http://www.w3.org/2005/Atom}"
BASE = "https://status.example.gov.cn/"
#: Every character XML 1.0 forbids that a TOML string can hold.
FORBIDDEN = (
    "".join(chr(c) for c in (*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20))) + "\ufffe\uffff"
)
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text + "+08:00")


def render_site(plan: Plan, tmp: Path, when: datetime, db: Path | None = None) -> Path:
    site = tmp / f"site-{when:%Y%m%d%H%M}"
    render_from(plan, site, when, db)
    return site


def real_data(**extra: object) -> dict:
    return {**tomllib.loads(REAL_PLAN.read_text("utf-8")), **extra}


# --- item 10: characters XML forbids -----------------------------------------------------------


def control_plan() -> Plan:
    bad = FORBIDDEN
    return Plan(
        validate_config(
            {
                "monitor": {"title": f"监测{bad}", "title_en": f"Monitor{bad}"},
                "periods": {
                    "freeze": {
                        "title": f"冻结{bad}期",
                        "title_en": f"Freeze{bad}",
                        "start": at("2022-06-22T18:00:00"),
                        "end": at("2022-07-25T08:30:00"),
                    }
                },
                "milestones": [
                    {
                        "at": date(2022, 7, 1),
                        "title": f"缴费{bad}截止",
                        "title_en": f"Payment{bad}deadline",
                        "detail": f"详情{bad}",
                        "detail_en": f"Detail{bad}",
                    }
                ],
                "channels": [
                    {
                        "id": "portal",
                        "name": f"门户{bad}网站",
                        "name_en": f"Portal{bad}site",
                        "kind": "web",
                        "group": "online",
                        "note": f"说明{bad}",
                        "note_en": f"Note{bad}",
                        "services": [
                            {
                                "id": "pay",
                                "name": f"缴费{bad}业务",
                                "name_en": f"Pay{bad}ment",
                                "expect": [{"during": "freeze", "state": "down"}],
                                "probe": {"url": "http://127.0.0.1:9/"},
                            },
                            {"id": "card", "name": f"社保{bad}卡", "note": f"注{bad}"},
                        ],
                    }
                ],
            }
        )
    )


def test_every_xml_file_parses_strictly_when_names_hold_forbidden_characters(
    tmp_path: Path,
) -> None:
    plan = control_plan()
    db = tmp_path / "store.db"
    add_incident(db, "portal", "card", "unexpected_down", at("2022-06-30T10:00:00"), None)
    add_incident(
        db, "portal", "pay", "unexpected_up", at("2022-06-29T10:00:00"),
        at("2022-06-29T11:00:00"), "HTTP 200", "down", "freeze",
    )  # fmt: skip
    site = render_site(plan, tmp_path, at("2022-07-01T12:00:00"), db)
    xml = [p for p in site.rglob("*") if p.suffix in (".svg", ".atom")]
    assert {p.name for p in xml} >= {"history.atom", "pay.svg", "card.svg"}
    for path in xml:
        root = ET.fromstring(path.read_bytes())  # expat: any forbidden character is an error
        assert "".join(root.itertext()).strip(), path
    for path in site.rglob("*"):
        if path.suffix == ".json":
            json.loads(path.read_text("utf-8"))  # JSON escapes control characters itself
        elif path.is_file():
            assert not NOT_XML.search(path.read_text("utf-8")), path  # nor HTML or iCalendar
    # The names stay, only the characters are dropped.
    atom = (site / "history.atom").read_text("utf-8")
    assert "门户网站 · 社保卡" in atom and "冻结期" in atom
    assert "缴费业务" in (site / "badges/portal/pay.svg").read_text("utf-8")
    assert "门户网站" in (site / "index.html").read_text("utf-8")
    calendar = icalendar.Calendar.from_ical((site / "calendar.ics").read_bytes())
    summaries = {str(e["SUMMARY"]) for e in calendar.walk("VEVENT")}
    assert "冻结期 / Freeze" in summaries and "缴费截止 / Paymentdeadline" in summaries


# --- item 12: ids in the feeds -----------------------------------------------------------------


def _incidents_db(tmp: Path) -> Path:
    db = tmp / "store.db"
    for service in ("portal", "pension"):
        add_incident(
            db, "ehuiban", service, "unexpected_up", at("2022-06-25T10:00:00"),
            at("2022-06-25T11:00:00"), "HTTP 200", "down", "freeze",
        )  # fmt: skip
    add_incident(db, "hubei-zwfw", "portal", "unexpected_down", at("2022-06-30T09:00:00"), None)
    return db


def _statuspage_ids(site: Path) -> dict[str, list[str]]:
    """Ids of every kind of Statuspage object, per file."""
    out: dict[str, list[str]] = {}
    for path in (site / "api/v2").rglob("*.json"):
        data = json.loads(path.read_text("utf-8"))
        name = str(path.relative_to(site))
        out[f"{name}:components"] = [c["id"] for c in data.get("components", [])]
        for key in ("incidents", "scheduled_maintenances"):
            items = data.get(key, [])
            out[f"{name}:{key}"] = [i["id"] for i in items]
            out[f"{name}:{key}:updates"] = [u["id"] for i in items for u in i["incident_updates"]]
    return out


def _maintenances(site: Path) -> dict[tuple, str]:
    data = json.loads((site / "api/v2/scheduled-maintenances.json").read_text("utf-8"))
    return {
        (m["scheduled_for"], m["scheduled_until"], tuple(c["id"] for c in m["components"])): m["id"]
        for m in data["scheduled_maintenances"]
    }


def _atom(site: Path) -> ET.Element:
    return ET.parse(site / "history.atom").getroot()


def _atom_ids(feed: ET.Element) -> dict[tuple, str]:
    """Entry id by what the entry is about (its first publication and its content)."""
    return {
        (e.findtext(f"{ATOM}published"), e.findtext(f"{ATOM}content")): e.findtext(f"{ATOM}id")
        for e in feed.iter(f"{ATOM}entry")
    }


def test_every_feed_object_has_a_unique_id_that_stays_across_renders(tmp_path: Path) -> None:
    plan = Plan(validate_config(real_data()))
    db = _incidents_db(tmp_path)
    # Inside the freeze; certificate printing is paused from 06-22 to 06-23 and again from
    # 07-19: three pauses of one period, two of them starting together.
    first = render_site(plan, tmp_path, at("2022-07-01T12:00:00"), db)
    second = render_site(plan, tmp_path, at("2022-07-02T08:00:00"), db)
    for site in (first, second):
        for where, ids in _statuspage_ids(site).items():
            assert len(ids) == len(set(ids)), where
        entries = [e.findtext(f"{ATOM}id") for e in _atom(site).iter(f"{ATOM}entry")]
        assert len(entries) == len(set(entries)) >= 6
    pauses = _maintenances(first)
    freeze = [k for k in pauses if pauses[k].startswith("freeze-")]
    assert len({k[0] for k in freeze}) < len(freeze)  # the case: pauses sharing a start
    assert pauses == _maintenances(second)
    assert _atom_ids(_atom(first)) == _atom_ids(_atom(second))


def _planned_starts(site: Path) -> set[datetime]:
    """The starts of the pauses that have not started yet: a plan without `[monitor]
    published` gives them no earlier date, so they are dated by their start."""
    data = json.loads((site / "api/v2/scheduled-maintenances.json").read_text("utf-8"))
    return {
        datetime.fromisoformat(m["scheduled_for"])
        for m in data["scheduled_maintenances"]
        if m["status"] == "scheduled"
    }


@pytest.mark.parametrize("published", [None, date(2022, 6, 10)])
def test_no_atom_entry_is_dated_after_the_feed(tmp_path: Path, published: date | None) -> None:
    extra = (
        {} if published is None else {"monitor": {**real_data()["monitor"], "published": published}}
    )
    plan = Plan(validate_config(real_data(**extra)))
    db = _incidents_db(tmp_path)
    for when in ("2022-06-20T12:00:00", "2022-07-01T12:00:00", "2022-08-01T12:00:00"):
        site = render_site(plan, tmp_path / str(published), at(when), db)
        feed = _atom(site)
        updated = datetime.fromisoformat(feed.findtext(f"{ATOM}updated"))
        assert updated == at(when)
        # Ahead of the feed only where the plan gives nothing earlier: an upcoming pause of a
        # plan that does not say when it was published is dated by its own start.
        ahead = _planned_starts(site) if published is None else set()
        for entry in feed.iter(f"{ATOM}entry"):
            changed = datetime.fromisoformat(entry.findtext(f"{ATOM}updated"))
            text = entry.findtext(f"{ATOM}published")  # optional: left out when not known
            first = datetime.fromisoformat(text) if text else changed
            assert first <= changed, (when, entry.findtext(f"{ATOM}title"))
            assert changed <= updated or changed in ahead, (when, entry.findtext(f"{ATOM}title"))
        for m in json.loads((site / "api/v2/scheduled-maintenances.json").read_text("utf-8"))[
            "scheduled_maintenances"
        ]:
            changed = datetime.fromisoformat(m["updated_at"])
            assert changed <= updated or changed in ahead, (when, m["id"])
        try:
            import feedparser
        except ImportError:
            missing("feedparser not installed (pip install -e '.[test]')")
        parsed = feedparser.parse((site / "history.atom").read_bytes())
        assert not parsed.bozo, parsed.get("bozo_exception")
        ids = [e.id for e in parsed.entries]
        assert len(ids) == len(set(ids)) == len(list(feed.iter(f"{ATOM}entry")))
        assert parsed.feed.get("updated_parsed") and all(
            e.get("updated_parsed") for e in parsed.entries
        )


_STAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})")


def _earliest_named(plan: Plan) -> datetime:
    """The earliest instant the plan names: a period's bounds, a milestone's (a day as its
    first instant in the plan's zone)."""

    def instant(value: date | datetime) -> datetime:
        if isinstance(value, datetime):
            return value
        return datetime.combine(value, datetime.min.time(), plan.zone)

    config = plan.config
    named = [t for p in config.periods.values() for t in (p.start, p.end) if t is not None]
    named += [instant(t) for m in config.milestones for t in (m.at, m.until) if t is not None]
    return min(named)


def _feed_dates(site: Path) -> dict[str, list[datetime]]:
    """Every instant written in the feeds: the Atom file and every Statuspage file."""
    found: dict[str, list[datetime]] = {}
    for path in [site / "history.atom", *sorted((site / "api/v2").rglob("*.json"))]:
        text = path.read_text("utf-8")
        stamps = [datetime.fromisoformat(s.replace("Z", "+00:00")) for s in _STAMP.findall(text)]
        found[str(path.relative_to(site))] = stamps
    return found


@pytest.mark.parametrize("published", [None, date(2022, 6, 1)])
def test_no_feed_date_lies_before_what_the_plan_names(
    tmp_path: Path, published: date | None
) -> None:
    # Planned pauses were dated 180 days before their start (2021-12-24 for the 2022 freeze),
    # a day nobody published anything on: every date of the feeds is now one the plan or the
    # observations gave, and only `[monitor] published` may lie before the plan's instants.
    monitor = {**real_data()["monitor"]}
    if published is not None:
        monitor["published"] = published
    plan = Plan(validate_config(real_data(monitor=monitor)))
    earliest = _earliest_named(plan)
    allowed = set() if published is None else {_earliest_allowed(plan, published)}
    db = _incidents_db(tmp_path)
    for when in ("2022-06-20T12:00:00", "2022-07-01T12:00:00", "2022-08-01T12:00:00"):
        site = render_site(plan, tmp_path / str(published), at(when), db)
        dates = _feed_dates(site)
        assert dates["history.atom"] and dates["api/v2/scheduled-maintenances.json"]
        for name, stamps in dates.items():
            early = sorted({t for t in stamps if t < earliest} - allowed)
            assert not early, (when, name, early)
        if published is not None:  # the plan's own date, both as published and as changed
            planned = [
                e
                for e in _atom(site).iter(f"{ATOM}entry")
                if e.find(f"{ATOM}category").get("term") == "planned"  # type: ignore[union-attr]
            ]
            assert planned
            for entry in planned:
                assert datetime.fromisoformat(entry.findtext(f"{ATOM}published")) in allowed


def _earliest_allowed(plan: Plan, day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), plan.zone)


# --- item 13: absolute addresses ----------------------------------------------------------------


def _addresses(site: Path) -> dict[str, list[str]]:
    zh = (site / "index.html").read_text("utf-8")
    en = (site / "en/index.html").read_text("utf-8")
    hreflang = re.compile(r'<link rel="alternate" hreflang="[^"]+" href="([^"]+)">')
    feed = _atom(site)
    summary = json.loads((site / "api/v2/summary.json").read_text("utf-8"))
    planned = json.loads((site / "api/v2/scheduled-maintenances.json").read_text("utf-8"))
    calendar = icalendar.Calendar.from_ical((site / "calendar.ics").read_bytes())
    return {
        "hreflang": hreflang.findall(zh) + hreflang.findall(en),
        "atom": [link.get("href") for link in feed.iter(f"{ATOM}link")],
        "page": [summary["page"]["url"]],
        "shortlink": [i["shortlink"] for i in summary["incidents"]]
        + [m["shortlink"] for m in planned["scheduled_maintenances"]],
        "ics": [str(c["URL"]) for c in calendar.walk() if "URL" in c]
        + [str(c["SOURCE"]) for c in calendar.walk() if "SOURCE" in c],
    }


def test_addresses_are_absolute_under_the_plans_base_url(tmp_path: Path) -> None:
    db = _incidents_db(tmp_path)
    plan = Plan(validate_config(real_data(site={"base_url": BASE})))
    found = _addresses(render_site(plan, tmp_path, at("2022-07-01T12:00:00"), db))
    for kind, links in found.items():
        assert links, kind
        assert all(link.startswith(BASE) for link in links), (kind, links)
    assert sorted(set(found["hreflang"])) == [BASE + "en/index.html", BASE + "index.html"]
    assert BASE + "history.atom" in found["atom"] and found["page"] == [BASE]
    assert BASE + "index.html#incident-3" in found["shortlink"]
    assert BASE + "calendar.ics" in found["ics"]


def test_addresses_stay_relative_without_a_base_url(tmp_path: Path) -> None:
    db = _incidents_db(tmp_path)
    plan = Plan(validate_config(real_data()))
    found = _addresses(render_site(plan, tmp_path, at("2022-07-01T12:00:00"), db))
    assert set(found["hreflang"]) == {
        "index.html",
        "en/index.html",
        "../index.html",
        "../en/index.html",
    }
    assert set(found["atom"]) == {"index.html", "history.atom"}
    assert found["page"] == ["/"] and "/index.html#incident-3" in found["shortlink"]
    assert found["ics"] == []  # iCalendar has no relative URLs


@pytest.mark.parametrize(
    "value",
    [
        "https://status.hubei.example",  # not a folder
        "status.hubei.example/",
        "/status/",
        "ftp://status.example.gov.cn/",
        "https://ops:s3cret-pw@status.example.gov.cn/",
        "https://status.example.gov.cn/?v=1/",
        "https://status.example.gov.cn/#top/",
        "https://status example/",
    ],
)
def test_a_base_url_that_is_no_absolute_folder_is_refused(value: str) -> None:
    with pytest.raises(ConfigError) as error:
        validate_config(real_data(site={"base_url": value}))
    text = str(error.value)
    assert "site" in text and "base_url" in text and value not in text
    assert "s3cret" not in text


def test_validate_names_the_base_url_and_exits_2(tmp_path: Path) -> None:
    data = REAL_PLAN.read_text("utf-8") + '\n[site]\nbase_url = "https://x.example/page"\n'
    plan = write_plan(tmp_path / "channels.toml", data)
    done = python_m("validate", "--config", str(plan))
    assert done.returncode == 2, done
    assert "site: base_url: expected an absolute" in done.stderr
    assert "Traceback" not in done.stderr
    good = write_plan(tmp_path / "good.toml", data.replace("x.example/page", "x.example/page/"))
    assert python_m("validate", "--config", str(good)).returncode == 0

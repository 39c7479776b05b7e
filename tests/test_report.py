"""The report against the plan: exact times on a hand-made plan and store, the resolution it
chooses once raw history is pruned, incidents with their evidence, every output format, and the
command's handling of bad input. The store is written by the real `Store` and judged by the
real judge; the report only ever opens it read-only.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import pytest
from helpers import load_plan, python_m, write_plan
from test_site_browser import browser  # noqa: F401  (the shared Chromium fixture)

from monitor.cli import main
from monitor.judge import ServiceState, judge, thresholds_for, with_incident_id
from monitor.observation import Observation
from monitor.plan import Plan, ServiceRef
from monitor.report import (
    Evidence,
    HourCounts,
    Piece,
    Report,
    Times,
    build_report,
    covered,
    open_readonly,
    plan_pieces,
    tally_hourly,
)
from monitor.report.formats import as_csv, as_html, as_json, as_text
from monitor.store import PendingObservation, Store

if TYPE_CHECKING:
    from playwright.sync_api import Browser

SHANGHAI = ZoneInfo("Asia/Shanghai")
MINUTE = timedelta(minutes=1)


def at(text: str) -> datetime:
    return datetime.fromisoformat(f"2022-07-01T{text}").replace(tzinfo=SHANGHAI)


PLAN: dict = {
    "monitor": {"timezone": "Asia/Shanghai", "interval": "10m", "grace": "5m"},
    "periods": {"freeze": {"start": datetime(2022, 7, 1, 10), "end": datetime(2022, 7, 1, 12)}},
    "channels": [
        {
            "id": "portal",
            "name": "政务服务网",
            "name_en": "Government portal",
            "kind": "web",
            "group": "online",
            "services": [
                {
                    "id": "pension",
                    "name": "养老保险",
                    "name_en": "Pension",
                    "expect": [{"during": "freeze", "state": "down"}],
                    "probe": {"url": "https://example.gov.cn/pension?token=abc"},
                },
                {"id": "card", "name": "社保卡", "name_en": "Card"},
            ],
        },
        {
            "id": "hall",
            "name": "服务大厅",
            "name_en": "Service hall",
            "kind": "offline",
            "group": "offline",
            "services": [{"id": "desk", "name": "窗口", "name_en": "Desk"}],
        },
    ],
}

#: Pension, every 10 minutes 09:00-12:50 except 11:00-11:40; still serving 10:00-10:20 although
#: the freeze begins at 10:00 (10:00 itself is inside the 5-minute grace).
PENSION = [
    (at(f"{h:02d}:{m:02d}"), h < 10 or h >= 12 or (h == 10 and m <= 20))
    for h in (9, 10, 11, 12)
    for m in range(0, 60, 10)
    if not (h == 11 and m < 50)
]


def observe(store: Store, plan: Plan, ref: ServiceRef, seen: list[tuple[datetime, bool]]) -> None:
    """Judge each observation as the pipeline does and store it with its incident events."""
    state = ServiceState()
    thresholds = thresholds_for(plan, ref)
    for when, serving in seen:
        reason = "HTTP 200" if serving else "body matches maintenance notice"
        observation = Observation(at=when, serving=serving, reason=reason, status_code=200)
        expectation = plan.expected(ref, when)
        result = judge(state, expectation, plan.in_grace(ref, when), observation, thresholds)
        store.add(PendingObservation(*ref.key, observation, expectation.state, result.counted))
        state = result.state
        for event in result.events:
            record = store.record_event(*ref.key, event)
            if event.kind == "opened":
                state = with_incident_id(state, record.id)
    store.flush()


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Plan, Path]:
    plan = load_plan(tmp_path / "channels.toml", PLAN)
    db = tmp_path / "monitor.db"
    store = Store(db)
    try:
        observe(store, plan, plan.service("portal", "pension"), PENSION)
    finally:
        store.close()
    return plan, db


def report_of(plan: Plan, db: Path, **options: object) -> Report:
    store = open_readonly(db)
    try:
        return build_report(plan, store, at("09:00"), at("13:00"), **options)
    finally:
        store.close()


def minutes(seconds: float) -> float:
    return seconds / 60


# --- pure pieces ---------------------------------------------------------------------------------


def test_plan_pieces_cut_at_changes_and_at_the_end_of_grace(setup: tuple) -> None:
    plan, _ = setup
    pieces = plan_pieces(plan, plan.service("portal", "pension"), at("09:00"), at("13:00"))
    assert pieces == [
        Piece(at("09:00"), at("10:00"), "up", False),
        Piece(at("10:00"), at("10:05"), "down", True),
        Piece(at("10:05"), at("12:00"), "down", False),
        Piece(at("12:00"), at("12:05"), "up", True),
        Piece(at("12:05"), at("13:00"), "up", False),
    ]
    # a range that starts inside a grace window knows it
    late = plan_pieces(plan, plan.service("portal", "pension"), at("10:02"), at("10:30"))
    assert late[0] == Piece(at("10:02"), at("10:05"), "down", True)


def test_an_observation_covers_until_the_next_at_most_its_cover() -> None:
    seen = [(at("08:55"), True), (at("09:05"), False), (at("09:50"), True)]
    spans = covered(seen, 20 * MINUTE, at("09:00"), at("10:00"))
    assert spans == [
        (at("09:00"), at("09:05"), True),  # the one before the range covers into it
        (at("09:05"), at("09:25"), False),  # capped: 25 minutes to the next one
        (at("09:50"), at("10:00"), True),  # clipped at the end of the range
    ]


def test_hourly_counts_stand_for_at_most_the_hour() -> None:
    times = Times()
    hours = [HourCounts(at("10:00"), 6, 3, 2), HourCounts(at("11:00"), 1, 0, 0)]
    seen = tally_hourly(hours, 20 * MINUTE, at("09:00"), at("13:00"), times)
    assert minutes(seen) == 80
    assert (minutes(times.observed_up), minutes(times.observed_down)) == (30, 50)
    assert minutes(times.matched) == 40 + 20


# --- from a store --------------------------------------------------------------------------------


def test_raw_report_counts_exact_minutes(setup: tuple) -> None:
    plan, db = setup
    report = report_of(plan, db)
    assert (report.resolution, report.raw_from) == ("raw", None)
    [portal, hall] = report.channels
    pension, card = portal.services
    t = pension.times
    assert (minutes(t.planned_up), minutes(t.planned_down), t.planned_any) == (120, 120, 0)
    # 10:50 covers until 11:10 (twice the 10-minute interval); 11:10-11:50 is unobserved
    assert minutes(t.unobserved) == 40 and minutes(t.observed) == 200
    assert (minutes(t.observed_up), minutes(t.observed_down)) == (150, 50)
    # serving 10:05-10:30 while planned down is the only mismatch (10:00-10:05 is grace)
    assert minutes(t.matched) == 175
    assert t.availability == pytest.approx(175 / 200)
    # never observed: all of it unobserved, no availability
    assert (card.times.observed, minutes(card.times.unobserved)) == (0, 240)
    assert card.times.availability is None and minutes(card.times.planned_up) == 240
    assert minutes(portal.times.unobserved) == 280 and portal.times.availability == t.availability
    assert minutes(hall.times.planned_up) == 240


def test_incident_with_direction_and_evidence(setup: tuple) -> None:
    plan, db = setup
    [incident] = report_of(plan, db).channels[0].services[0].incidents
    assert incident.direction == "unexpected_up"
    # 10:00 is in grace; 10:10 and 10:20 count (threshold 2); 10:30 and 10:40 resolve it
    assert (incident.opened_at, incident.resolved_at) == (at("10:20"), at("10:40"))
    assert incident.duration == 20 * MINUTE
    assert incident.first == Evidence(at("10:10"), "HTTP 200")
    assert incident.last == Evidence(at("10:20"), "HTTP 200")
    assert incident.reason == "HTTP 200"


def test_hourly_resolution_when_forced(setup: tuple) -> None:
    plan, db = setup
    report = report_of(plan, db, resolution="hourly")
    assert report.resolution == "hourly"
    t = report.channels[0].services[0].times
    # 09 and 12: 6 probes each, a whole hour; 10: a whole hour, 3 of 6 serving, 2 counted
    # mismatches; 11: one probe standing for 20 minutes
    assert minutes(t.observed) == 200 and minutes(t.observed_up) == 150
    assert minutes(t.matched) == 60 + 40 + 20 + 60
    assert minutes(t.planned_down) == 120  # planned time never depends on the resolution


def test_pruned_history_is_served_by_rollups_from_the_last_complete_hour(setup: tuple) -> None:
    plan, db = setup
    store = Store(db)
    try:
        store.prune(at("10:25") + store.retention)  # cuts into the 10:00 hour
        reader = open_readonly(db)
        assert reader.raw_from() == at("11:00")
        reader.close()
        store.prune(at("11:30") + store.retention)  # the 11:00 hour still has all its probes
    finally:
        store.close()
    report = report_of(plan, db)
    assert (report.resolution, report.raw_from) == ("mixed", at("11:00"))
    t = report.channels[0].services[0].times
    # hourly 09:00-11:00 (60 + 60 observed, 60 + 40 matched), raw 11:50-13:00
    assert minutes(t.observed) == 60 + 60 + 70
    assert minutes(t.matched) == 60 + 40 + 70
    [incident] = report.channels[0].services[0].incidents
    assert incident.first is None and incident.last is None  # its observations were pruned
    assert "pruned" in as_text(report)


def test_a_forced_resolution_is_said_to_be_forced(setup: tuple) -> None:
    """Forcing hourly rollups is not the store's retention speaking: the text says who chose."""
    plan, db = setup
    for which, kept in (("hourly", "hourly rollups"), ("raw", "raw observations")):
        text = as_text(report_of(plan, db, resolution=which))
        assert f"{kept} (forced by --resolution {which})" in text
        assert f"由 --resolution {which} 指定" in text
        assert "past retention" not in text
    assert "forced" not in as_text(report_of(plan, db))


# --- formats -------------------------------------------------------------------------------------


def test_json_csv_and_table_carry_the_same_numbers(setup: tuple) -> None:
    plan, db = setup
    report = report_of(plan, db)
    data = as_json(report)
    assert (data["from"], data["until"]) == (
        "2022-07-01T09:00:00+08:00",
        "2022-07-01T13:00:00+08:00",
    )
    assert data["resolution"] == "raw" and data["raw_from"] is None
    pension = data["channels"][0]["services"][0]
    assert pension["matched_seconds"] == 175 * 60 and pension["unobserved_seconds"] == 40 * 60
    [incident] = pension["incidents"]
    assert incident["first_mismatch"] == {
        "at": "2022-07-01T10:10:00+08:00",
        "reason": "server answered HTTP 200",
        "reason_zh": "服务器返回 HTTP 200",
    }
    assert incident["direction"] == "unexpected_up" and incident["duration_seconds"] == 1200
    assert data["channels"][0]["matched_seconds"] == 175 * 60

    rows = list(csv.DictReader(io.StringIO(as_csv(report))))
    assert [(r["level"], r["service"]) for r in rows] == [
        ("service", "pension"),
        ("service", "card"),
        ("channel", ""),
        ("service", "desk"),
        ("channel", ""),
    ]
    assert (
        float(rows[0]["matched_seconds"]) == 175 * 60 and rows[0]["incidents_unexpected_up"] == "1"
    )
    assert rows[1]["availability"] == "" and rows[0]["resolution"] == "raw"

    text = as_text(report)
    assert "raw observations" in text and "2h 55m" in text and "87.50%" in text
    assert "2022-07-01 10:10 server answered HTTP 200" in text


def test_html_is_self_contained_bilingual_and_paged_by_channel(setup: tuple) -> None:
    plan, db = setup
    page = as_html(report_of(plan, db))
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "url(" not in page and "@import" not in page
    assert "size: A4" in page and "break-before: page" in page
    assert page.count('<section class="channel"') == 2
    for heading in (
        "对照计划报告",
        "report against the plan",
        "事件与证据",
        "Incidents and evidence",
    ):
        assert heading in page
    assert "example.gov.cn" not in page and "token" not in page


# --- the command ---------------------------------------------------------------------------------


def test_the_command_prints_every_format_and_never_writes_the_store(
    setup: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    _, db = setup
    config = db.parent / "channels.toml"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    outputs = {}
    for form in ("table", "csv", "json", "html"):
        code = main(
            ["report", "--config", str(config), "--from", "2022-07-01T09:00",
             "--until", "2022-07-01T13:00", "--format", form]
        )  # fmt: skip
        out, err = capsys.readouterr()
        assert (code, err) == (0, ""), err
        outputs[form] = out
    assert json.loads(outputs["json"])["channels"][0]["services"][0]["matched_seconds"] == 10500
    assert outputs["csv"].startswith("level,channel,")
    assert outputs["html"].rstrip().endswith("</html>")
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    # read-only means nothing new beside the store either (no -shm or -wal from the reader)
    assert sorted(p.name for p in db.parent.iterdir() if p.name.startswith(db.name)) == [db.name]
    # without a range: from the first stored hour to the end of the last one
    assert main(["report", "--config", str(config), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr()[0])
    assert (data["from"], data["until"]) == (
        "2022-07-01T09:00:00+08:00",
        "2022-07-01T13:00:00+08:00",
    )


def test_bad_input_exits_2_with_a_sentence(tmp_path: Path) -> None:
    config = write_plan(tmp_path / "channels.toml", PLAN)
    nowhere = python_m("report", "--config", str(config), "--db", str(tmp_path / "none.db"))
    assert nowhere.returncode == 2 and "no store there" in nowhere.stderr
    assert not (tmp_path / "none.db").exists()
    junk = tmp_path / "junk.db"
    junk.write_text("not a database", encoding="utf-8")
    result = python_m("report", "--config", str(config), "--db", str(junk))
    assert result.returncode == 2 and "not a channel-monitor store" in result.stderr
    Store(tmp_path / "empty.db").close()
    empty = python_m("report", "--config", str(config), "--db", str(tmp_path / "empty.db"))
    assert empty.returncode == 2 and "holds no observations" in empty.stderr
    backwards = python_m(
        "report", "--config", str(config), "--db", str(tmp_path / "empty.db"),
        "--from", "2022-07-02", "--until", "2022-07-01",
    )  # fmt: skip
    assert backwards.returncode == 2 and "--until must be after --from" in backwards.stderr
    cover = python_m("report", "--config", str(config), "--cover", "soon")
    assert cover.returncode == 2 and "--cover" in cover.stderr
    huge = python_m("report", "--config", str(config), "--cover", "99999999d")
    assert huge.returncode == 2 and "--cover: expected at most 366d" in huge.stderr
    year = python_m(
        "report", "--config", str(config), "--db", str(tmp_path / "empty.db"), "--cover", "366d"
    )
    assert year.returncode == 2 and "holds no observations" in year.stderr  # a year is allowed
    said = (nowhere, result, empty, backwards, cover, huge, year)
    assert all("Traceback" not in r.stderr for r in said)


def test_html_prints_on_a4_one_page_per_channel_without_requests(
    browser: Browser,  # noqa: F811  (the fixture imported above)
    setup: tuple,
) -> None:
    """Printed by the real Chromium: A4 pages, the summary then one page per channel (the
    hand-made report is short enough that each fits one page), and not one request."""
    plan, db = setup
    page_html = as_html(report_of(plan, db))
    requests: list[str] = []
    page = browser.new_page()
    try:
        page.on("request", lambda request: requests.append(request.url))
        page.set_content(page_html, wait_until="load")
        pdf = page.pdf(prefer_css_page_size=True)
    finally:
        page.close()
    assert [url for url in requests if not url.startswith("data:")] == []
    assert len(re.findall(rb"/Type\s*/Page\b", pdf)) == 1 + len(plan.config.channels)
    boxes = set(re.findall(rb"/MediaBox\s*\[([^\]]*)\]", pdf))
    assert len(boxes) == 1
    [_, _, width, height] = [float(v) for v in boxes.pop().split()]
    assert (round(width / 72 * 25.4), round(height / 72 * 25.4)) == (210, 297)  # mm

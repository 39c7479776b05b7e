"""The page at scale: 10,000 services (100 channels of 100) give a summary `index.html` under
the size budget that links a page per channel, every page passes the page checks, and the
render worker's kept history gives the same page as a render from nothing."""

from __future__ import annotations

import gc
import json
import pickle
import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from helpers import REAL_PLAN, real_plan
from page_checks import check_site
from site_data import DURING_LATE, add_incident, busy_store, fill_history, large_plan

from monitor.judge import Verdict
from monitor.notices import NoticesFile
from monitor.plan import Plan
from monitor.plan.load import load_config
from monitor.site import _page_config, feeds, history
from monitor.site.model import Snapshot, build
from monitor.site.render import (
    ONE_PAGE_SERVICES,
    PAGE_BUDGET,
    PageCache,
    open_store,
    render,
    render_from,
)
from monitor.site.slim import unslim


@pytest.fixture(scope="module")
def large_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The large plan with two days of hourly history and incidents, two still open."""
    root = tmp_path_factory.mktemp("large")
    plan = large_plan()
    db = root / "monitor.db"
    fill_history(plan, db, DURING_LATE, days=2, bad_hours=30)
    for i in range(12):
        opened = DURING_LATE - timedelta(hours=i + 1)
        resolved = None if i < 2 else opened + timedelta(minutes=20)
        add_incident(db, f"channel-{i * 7}", f"service-{i * 4 + 1}", "unexpected_down", opened,
                     resolved, "HTTP 503")  # fmt: skip
    render_from(plan, root / "site", DURING_LATE, db)
    return root / "site"


def test_index_stays_under_the_budget_and_links_every_channel(large_site: Path) -> None:
    for name in ("index.html", "en/index.html"):
        html = (large_site / name).read_text("utf-8")
        assert len(html.encode()) < PAGE_BUDGET, (name, len(html.encode()))
        links = re.findall(r'href="(channels/channel-\d+\.html)"', html)
        assert len(set(links)) == 100, name
        for link in links:
            assert (large_site / name).parent.joinpath(link).is_file(), link
    zh = (large_site / "index.html").read_text("utf-8")
    # what is broken (the two open incidents) and what is paused, on the summary itself
    assert 'id="h-broken"' in zh and "渠道 0" in zh and "渠道 7" in zh
    assert 'id="h-closed"' in zh and re.search(r"等共 \d+ 个渠道", zh)
    assert "<svg viewBox=" not in zh  # no history bars: they are on the channel pages


def test_every_page_passes_the_page_checks(large_site: Path) -> None:
    pages = check_site(large_site)
    assert len(pages) == 2 + 2 * 100


def test_a_channel_page_holds_its_services_and_their_history(large_site: Path) -> None:
    html = (large_site / "channels/channel-7.html").read_text("utf-8")
    assert "<h1>渠道 7</h1>" in html and 'href="../index.html"' in html
    assert html.count("<h3>") >= 25  # its businesses, each under its state
    assert "业务 99" in html and "渠道 8" not in html
    assert html.count("<svg viewBox=") >= 1  # its history bars
    en = (large_site / "en/channels/channel-7.html").read_text("utf-8")
    assert "<h1>Channel 7</h1>" in en and 'href="../../channels/channel-7.html"' in en


def test_machine_readable_files_still_hold_every_service(large_site: Path) -> None:
    status = json.loads((large_site / "status.json").read_text("utf-8"))
    assert len(status["services"]) == 10_000
    components = json.loads((large_site / "api/v2/components.json").read_text("utf-8"))
    assert sum(len(c.get("components", [])) for c in components["components"]) == 10_000
    unresolved = json.loads((large_site / "api/v2/incidents/unresolved.json").read_text("utf-8"))
    assert len(unresolved["incidents"]) == 2
    assert (large_site / "badges/channel-99/service-99.svg").is_file()
    assert (large_site / "history.atom").stat().st_size and (large_site / "calendar.ics").is_file()


def test_the_real_plan_stays_one_page(tmp_path: Path) -> None:
    plan = real_plan()
    assert len(plan.services) <= ONE_PAGE_SERVICES
    site = tmp_path / "site"
    render_from(plan, site, DURING_LATE, busy_store(tmp_path / "monitor.db"))
    assert not (site / "channels").exists()
    check_site(site)


def test_kept_days_give_the_same_page_as_a_render_from_nothing(tmp_path: Path) -> None:
    """The render worker keeps the days that are over; across a day's change and a render
    for an earlier instant its pages equal those of a render that reads every day again."""
    plan = real_plan()
    db = busy_store(tmp_path / "monitor.db")
    store = open_store(db)
    kept = history.DayCache()
    try:
        for at in (
            DURING_LATE,
            DURING_LATE + timedelta(hours=3),
            DURING_LATE + timedelta(days=1, hours=2),
            DURING_LATE - timedelta(days=3),
        ):
            fresh = render(plan, tmp_path / "fresh", at, store)
            cached = render(plan, tmp_path / "cached", at, store, days=kept)
            for name in ("index.html", "en/index.html", "status.json"):
                assert (fresh.folder / name).read_bytes() == (cached.folder / name).read_bytes()
    finally:
        store.db.close()


def _all_files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_kept_channel_pages_give_the_same_site_as_a_render_from_nothing(tmp_path: Path) -> None:
    """The render worker keeps each channel's page while what it shows is unchanged. Across
    renders where nothing changed, a verdict changed, an incident opened, notices came out, the
    day changed, a window closed and a render for the past, every file equals a render from
    nothing, and the unchanged channels' pages were the kept ones."""
    plan = large_plan(4, 40)
    assert len(plan.services) > ONE_PAGE_SERVICES  # a page per channel
    db = tmp_path / "monitor.db"
    fill_history(plan, db, DURING_LATE + timedelta(days=35), days=40)
    store = open_store(db)
    ok = {ref.key: Verdict.OK for ref in plan.services}
    broken = {**ok, ("channel-1", "service-1"): Verdict.UNEXPECTED_DOWN}
    moved = {**ok, ("channel-1", "service-5"): Verdict.UNEXPECTED_DOWN}  # the same counts
    notice = NoticesFile.model_validate(
        {
            "notices": [
                {
                    "id": "n1",
                    "title": "渠道 2 故障",
                    "title_en": "Channel 2 down",
                    "services": ["channel-2/service-3"],
                    "updates": [
                        {
                            "at": DURING_LATE,
                            "status": "investigating",
                            "text": "正在处理。",
                            "text_en": "Working on it.",
                        }
                    ],
                }
            ]
        }
    )
    minutes = [timedelta(minutes=m) for m in range(0, 60, 10)]
    steps = [  # (instant, verdicts, notices, pages kept from the render before)
        (DURING_LATE, ok, None, 0),
        (DURING_LATE + minutes[1], ok, None, 8),  # nothing changed: every page kept
        (DURING_LATE + minutes[2], broken, None, 6),  # channel-1 changed
        (DURING_LATE + minutes[3], broken, None, 6),  # an incident of channel-2 (added below)
        (DURING_LATE + minutes[4], broken, notice, 0),
        (DURING_LATE + minutes[5], broken, notice, 8),
        (DURING_LATE + minutes[5], moved, notice, 6),  # another service of channel-1 broken
        (DURING_LATE + timedelta(days=1), broken, notice, 0),  # a new day
        (DURING_LATE + timedelta(days=10, hours=1), ok, None, 0),  # the window closed
        (DURING_LATE + timedelta(days=10, hours=2), ok, None, 8),
        # the freeze ended 14 days ago: at noon it leaves the headline, no service changes
        (DURING_LATE + timedelta(days=34, minutes=-5), ok, None, 0),
        (DURING_LATE + timedelta(days=34, minutes=5), ok, None, 0),
        (DURING_LATE - timedelta(days=3), ok, None, 0),  # the past
    ]
    pages, days = PageCache(), history.DayCache()
    try:
        for number, (when, verdicts, notices, kept) in enumerate(steps):
            if number == 3:
                add_incident(db, "channel-2", "service-5", "unexpected_down",
                             when - timedelta(minutes=5), None)  # fmt: skip
            snapshot = Snapshot(verdicts)
            hits = pages.hits
            fresh = render(plan, tmp_path / "fresh", when, store, snapshot, notices=notices)
            cached = render(
                plan, tmp_path / "cached", when, store, snapshot, notices=notices, days=days,
                pages=pages,
            )  # fmt: skip
            assert pages.hits - hits == kept, (number, when)
            assert _all_files(fresh.folder) == _all_files(cached.folder), (number, when)
    finally:
        store.db.close()


def _pauses(site: Path, name: str = "scheduled-maintenances.json") -> list[dict]:
    return json.loads((site / "api/v2" / name).read_text("utf-8"))["scheduled_maintenances"]


def test_statuspage_files_list_recurring_pauses_only_near_the_render(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hall's nightly closures are a pause each: the Statuspage files list those within
    `RECURRING_HORIZON` of the render (ids kept across renders) and every one-off pause,
    however far ahead, at most `MAX_PAUSES` in a file: running first, then the next."""
    plan = large_plan(2, 8)
    after = DURING_LATE + timedelta(days=25)  # the freeze is over: the hall closes nightly
    model = build(plan, after, Snapshot(), history.load(plan, None, after))
    assert len(model.maintenances) > feeds.MAX_PAUSES  # what the page looks at
    first = render(plan, tmp_path / "a", after, None).folder
    listed = _pauses(first)
    recurring = [m for m in listed if m["id"].startswith("default-")]
    horizon = feeds.RECURRING_HORIZON
    assert len(recurring) >= 8  # a week before and after, weekends one pause each
    for m in recurring:
        start = datetime.fromisoformat(m["scheduled_for"])
        end = datetime.fromisoformat(m["scheduled_until"])
        assert after - horizon <= end and start <= after + horizon, m["id"]
        assert len(m["components"]) == 4  # every office-hours service of the two channels
    assert any(m["id"].startswith("freeze-") for m in listed)  # one-off, over for 5 days
    later = render(plan, tmp_path / "b", after + timedelta(hours=1), None).folder
    ids = {(m["scheduled_for"], m["scheduled_until"]): m["id"] for m in _pauses(later)}
    for m in listed:
        assert ids.get((m["scheduled_for"], m["scheduled_until"]), m["id"]) == m["id"]
    # A one-off pause is announced months ahead; the recurring ones only in the coming week.
    early = DURING_LATE - timedelta(days=40)
    upcoming = _pauses(render(plan, tmp_path / "c", early, None).folder,
                       "scheduled-maintenances/upcoming.json")  # fmt: skip
    assert any(m["id"].startswith("freeze-") for m in upcoming)
    assert all(
        datetime.fromisoformat(m["scheduled_for"]) <= early + horizon
        for m in upcoming
        if m["id"].startswith("default-")
    )
    # The cap: what is running stays, then what starts next.
    monkeypatch.setattr(feeds, "MAX_PAUSES", 3)
    capped = render(plan, tmp_path / "d", after, None).folder
    for name in ("scheduled-maintenances.json", "summary.json"):
        assert len(_pauses(capped, name)) <= 3
    statuses = [m["status"] for m in _pauses(capped)]
    assert statuses.count("scheduled") >= 2 and "completed" not in statuses


def test_the_real_plans_statuspage_files_list_every_pause(tmp_path: Path) -> None:
    """The bound does not bite on the real plan: every pause is listed, as before it."""
    plan = real_plan()
    for when in ("2022-06-01T12:00", "2022-06-20T12:00", "2022-07-20T12:00", "2022-08-10T12:00"):
        instant = datetime.fromisoformat(when + ":00+08:00")
        model = build(plan, instant, Snapshot(), history.load(plan, None, instant))
        assert feeds.listed(model) == list(model.maintenances), when
        assert model.maintenances, when


def test_statuspage_files_are_compact_json_as_before(tmp_path: Path) -> None:
    """The files are written with their shared parts encoded once: each is exactly the
    compact JSON of what it holds."""
    site = tmp_path / "site"
    render_from(real_plan(), site, DURING_LATE, busy_store(tmp_path / "monitor.db"))
    files = list((site / "api/v2").rglob("*.json"))
    assert len(files) == 8
    for path in files:
        data = path.read_bytes()
        again = json.dumps(json.loads(data), ensure_ascii=False, separators=(",", ":")) + "\n"
        assert data == again.encode("utf-8"), path


def test_the_render_workers_slim_plan_gives_the_same_site(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The render worker gets the plan as plain tuples, each probe and push replaced by what
    the page asks of it (`_page_config`, made whole again by `unslim`): the same site as from
    the whole plan, and no probe's address or header, no push token and no alert sink in what
    is sent to the worker."""
    secrets = {  # some of the plan's variables set (the rest leave services waiting)
        "EHUIBAN_API_URL": "http://127.0.0.1:9/ehuiban-4c2d7e",
        "EHUIBAN_API_TOKEN": "header-token-91a0c3",
        "GOV_HALL_PUSH_TOKEN": "push-token-0e6b5d2f81",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    text = REAL_PLAN.read_text("utf-8") + (
        '\n[[alerts]]\ntype = "webhook"\nurl = "http://127.0.0.1:9/hook-5d1e"\n'
        'secret = "sink-secret-2b8e41"\n'
    )
    (tmp_path / "channels.toml").write_text(text, "utf-8")
    config = load_config(tmp_path / "channels.toml")
    sent = pickle.dumps(_page_config(config))
    slim = unslim(pickle.loads(sent))
    db = busy_store(tmp_path / "monitor.db")
    for name, plan in (("whole", Plan(config)), ("slim", Plan(slim))):
        render_from(plan, tmp_path / name, DURING_LATE, db)
    assert _all_files(tmp_path / "whole") == _all_files(tmp_path / "slim")
    services = [s for c in config.channels for s in c.services]
    probes = [s.probe for s in services if s.probe is not None]
    told = [p.url for p in probes] + [v for p in probes for v in p.headers.values()]
    told += [s.push.token for s in services if s.push is not None]
    told += [value for sink in config.alerts for value in (sink.url, sink.secret or "")]
    assert all(any(value in t for t in told) for value in secrets.values())  # all were used
    assert "sink-secret-2b8e41" in told and not any(value.encode() in sent for value in told)
    assert not slim.alerts

    def asked(c) -> list[tuple]:
        return [(s.observed_by, s.unset, s.configured) for c in c.channels for s in c.services]

    assert asked(slim) == asked(config)
    assert {"http", "push"} <= {kind for kind, _, _ in asked(slim)}
    assert any(s.probe.interval for c in slim.channels for s in c.services if s.probe)


def test_the_workers_plan_and_kept_days_are_compact(tmp_path: Path) -> None:
    """What keeps the render worker small at 100,000 services: the plan `run` sends is plain
    tuples (tens of bytes a service, where a pydantic copy of each service was a kilobyte),
    made into slotted `PageService`s; the kept days are one tuple per distinct record of
    days, shared by every service with that record (a list each was 70 MB)."""
    plan = large_plan(10, 40)
    sent = pickle.dumps(_page_config(plan.config))
    assert len(sent) < 80 * len(plan.services)
    slim = Plan(unslim(pickle.loads(sent)))
    assert not any(hasattr(ref.service, "__dict__") for ref in slim.services)
    db = tmp_path / "monitor.db"
    fill_history(plan, db, DURING_LATE, days=6, bad_hours=5)
    store = open_store(db)
    kept = history.DayCache()
    try:
        for at in (DURING_LATE, DURING_LATE + timedelta(days=1), DURING_LATE + timedelta(days=2)):
            kinds, _ = kept.day_kinds(slim, store, *history.window(at, slim.zone))
            for found in (kinds, kept.kinds):
                distinct = set(found.values())
                assert len({id(days) for days in found.values()}) == len(distinct)
                assert 1 < len(distinct) < len(found) / 10
    finally:
        store.db.close()


def test_pauses_of_the_same_services_share_their_encoded_parts() -> None:
    """The Statuspage files' large parts are encoded once and kept compressed until written:
    the component list, and the components of a pause, shared by every pause of the same
    services (a hall's nightly closures: at 100,000 services each names 25,000)."""
    plan = large_plan(10, 40)
    model = build(plan, DURING_LATE, Snapshot(), history.load(plan, None, DURING_LATE))
    comps = feeds.components(model, feeds.asked(model))
    pauses = feeds.statuspage(model, comps)["scheduled-maintenances.json"]
    listed = feeds.listed(model)
    assert len(pauses["scheduled_maintenances"]) == len(listed)
    shared = {id(p["components"]) for p in pauses["scheduled_maintenances"]}
    members = {tuple(ref.key for ref in item.services) for item in listed}
    assert len(shared) == len(members) < len(listed)
    for part in comps.encoded:
        assert isinstance(part, feeds.Encoded) and len(part) * 5 < len(part.text())
    text = b"[" + b",".join(part.text() for part in comps.encoded) + b"]"
    assert len(json.loads(text)) == len(plan.services) + len(plan.config.channels)


def test_the_worker_leaves_no_render_behind(tmp_path: Path) -> None:
    """Each render in the worker is collected when it ends: a render leaves reference cycles
    (Jinja's) holding its whole model, and with the worker's objects frozen a full collection
    comes seldom, so models piled up render after render (tens of MB each at 100,000)."""
    from monitor import site
    from monitor.site.model import Model

    site._worker.update(
        plan=Plan(unslim(_page_config(large_plan(4, 40).config))),
        site=tmp_path / "site",
        db=tmp_path / "none.db",
        store=None,
        days=history.DayCache(),
        pages=PageCache(),
    )
    gc.disable()  # only the worker's own collections
    try:
        for minutes in (0, 10, 20):
            site._worker_render(DURING_LATE + timedelta(minutes=minutes), Snapshot())
            assert not [o for o in gc.get_objects() if isinstance(o, Model)], minutes
    finally:
        gc.unfreeze()
        gc.enable()
        site._worker.clear()


def test_each_days_kind_is_what_its_sums_and_the_plan_say(tmp_path: Path) -> None:
    """`history.day_kinds` works out only the observed days of a service and takes the rest
    from its group's days with nothing observed; every day equals `classify` of that day's
    sums and plan, over a window partly observed (10 of 90 days, some hours broken)."""
    plan = large_plan(3, 12)
    db = tmp_path / "monitor.db"
    fill_history(plan, db, DURING_LATE, days=10, bad_hours=40)
    store = open_store(db)
    try:
        first, last = history.window(DURING_LATE, plan.zone)
        kinds, seen = history.day_kinds(plan, store, first, last)
        count = (last - first).days + 1
        kinds_seen = set()
        for ref in plan.services:
            days = history.day_totals(store, [ref.key], plan.zone, first, last).get(ref.key, {})
            planned = history.planned_down_days(plan, ref, first, last)
            expected = tuple(history.classify(days.get(i), i in planned) for i in range(count))
            assert kinds[ref.key] == expected, ref.key
            assert (ref.key in seen) == bool(days)
            kinds_seen.update(expected)
        assert {"down", "planned", "ok", "none"} <= kinds_seen  # every case was met
    finally:
        store.close()

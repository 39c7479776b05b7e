"""The page at scale: 10,000 services (100 channels of 100) give a summary `index.html` under
the size budget that links a page per channel, every page passes the page checks, and the
render worker's kept history gives the same page as a render from nothing."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from helpers import real_plan
from page_checks import check_site
from site_data import DURING_LATE, add_incident, busy_store, fill_history, large_plan

from monitor.site import history
from monitor.site.render import ONE_PAGE_SERVICES, PAGE_BUDGET, open_store, render, render_from


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

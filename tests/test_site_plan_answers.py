"""Every time the site gives citizens is the plan's own answer.

The page (every HTML file, both languages, channel pages included when the plan is split),
`history.atom` and the Statuspage files are rendered into a temporary folder and read back as a
client would; each reopening time, pause span and window end found there must be what the plan
answers (`Plan.span`, `Plan.until`, `Plan.next_up`, `Plan.spans`) for the services concerned.
The site works nothing out itself, so this holds at any instant, for the shipped plan and for
generated plans with absolute, recurring and overlapping periods.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from unittest import mock
from zoneinfo import ZoneInfo

from helpers import real_plan
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_plan_properties import plans

from monitor.plan import TICK, Plan
from monitor.site import model as site_model
from monitor.site import render as site_render
from monitor.site.render import render_from

SHANGHAI = ZoneInfo("Asia/Shanghai")
PAGE_SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: The span of the shipped plan's instants looked at: a month either side of the freeze.
SHIPPED_FROM = datetime(2022, 5, 20, tzinfo=SHANGHAI)
SHIPPED_TO = datetime(2022, 9, 1, tzinfo=SHANGHAI)
TIME = re.compile(r'<time datetime="([^"]+)"')
ATOM_WHEN = re.compile(r"(\d{4})年(\d{1,2})月(\d{1,2})日 (\d{2}):(\d{2})")


def minute(at: datetime, zone: ZoneInfo) -> str:
    """An instant as the page's `<time datetime>` writes it (local, to the minute)."""
    return at.astimezone(zone).isoformat(timespec="minutes")


def wall(at: datetime, zone: ZoneInfo) -> str:
    """An instant as the feed's titles write it: the wall clock, to the minute."""
    return at.astimezone(zone).strftime("%Y-%m-%dT%H:%M")


def render(plan: Plan, at: datetime, folder: Path, split: bool) -> Path:
    """The whole site as of `at`; `split` gives every channel a page of its own, as a large
    plan's site has."""
    site = folder / "site"
    limit = 0 if split else site_render.ONE_PAGE_SERVICES
    with mock.patch.object(site_render, "ONE_PAGE_SERVICES", limit):
        render_from(plan, site, at, None)
    return site


def check_site(plan: Plan, at: datetime, site: Path) -> None:
    zone = plan.zone
    lo, hi = at - timedelta(days=90), at + site_model.LOOKAHEAD
    # What the plan answers at `at` and over the span the site looks at.
    now_until: dict[str, int] = {}  # end of a running pause -> services paused until then
    reopen: set[str] = set()
    changes: set[str] = set()
    bounds: set[str] = {minute(at, zone), minute(lo, zone)}
    down_spans: set[tuple[str, str | None]] = set()
    for ref in plan.services:
        span = plan.span(ref, at)
        if span.until is not None:
            changes.add(minute(span.until, zone))
        if span.state == "down" and span.until is not None:
            key = minute(span.until, zone)
            now_until[key] = now_until.get(key, 0) + 1
        up = plan.next_up(ref, at)
        if span.state != "up" and up is not None:
            reopen.add(minute(up, zone))
        for piece in plan.spans(ref, lo, hi):
            for bound in (piece.since, piece.until):
                if bound is not None:
                    bounds.add(minute(bound, zone))
            if piece.state == "down":
                start = piece.since if piece.since is not None else lo
                end = wall(piece.until, zone) if piece.until is not None else None
                down_spans.add((wall(start, zone), end))
    for ms in plan.config.milestones:
        for value in (ms.at, ms.until):
            if isinstance(value, datetime):
                bounds.add(minute(value, zone))
    allowed = bounds | reopen | changes

    pages = sorted(site.rglob("*.html"))
    assert pages, "the site has a page"
    for path in pages:
        html = path.read_text("utf-8")
        for stamp in TIME.findall(html):
            if "T" in stamp:  # an instant, not a milestone's day
                assert stamp in allowed, (path.name, stamp)
        # The headline's running pauses: their end is when the plan ends those services' pause.
        for n, stamp in re.findall(
            r'另有 (\d+) 项业务按计划暂停（[^）]*）*，预计 <time datetime="([^"]+)"', html
        ):
            assert now_until.get(stamp, 0) >= int(n), (path.name, n, stamp)
        for n, stamp in re.findall(
            r'(\d+) more service\(s\) paused as planned \(.*?\) until <time datetime="([^"]+)"',
            html,
        ):
            assert now_until.get(stamp, 0) >= int(n), (path.name, n, stamp)
        for stamp in re.findall(
            r'(?:进行中，预计|in progress, expected to end) <time datetime="([^"]+)"', html
        ):
            assert stamp in now_until, (path.name, stamp)
        # The per-service reopening times are the plan's `next_up`.
        for stamp in re.findall(
            r'(?:预计恢复|Expected back)(?:：|: )<time datetime="([^"]+)"', html
        ):
            assert stamp in reopen, (path.name, stamp)

    # Statuspage: every pause is a `down` span of each component it names, bound for bound.
    api = site / "api" / "v2"
    for name in (
        "scheduled-maintenances.json",
        "summary.json",
        "scheduled-maintenances/upcoming.json",
        "scheduled-maintenances/active.json",
    ):
        for item in json.loads((api / name).read_text("utf-8"))["scheduled_maintenances"]:
            start = datetime.fromisoformat(item["scheduled_for"])
            end = item["scheduled_until"] and datetime.fromisoformat(item["scheduled_until"])
            began_earlier = "-before-" in item["id"]
            for component in item["components"]:
                channel, service = component["id"].split(".", 1)
                ref = plan.service(channel, service)
                probe = start if not began_earlier else max(start, at - timedelta(days=90))
                span = plan.span(ref, probe)
                assert span.state == "down", (name, item["id"], component["id"])
                assert span.until == (end or None), (name, item["id"], component["id"])
                if not began_earlier:
                    assert span.since == start, (name, item["id"], component["id"])
            status = item["status"]
            assert status == (
                "scheduled"
                if at < start
                else "in_progress"
                if end is None or at < end
                else "completed"
            )

    # Atom: every planned pause's title gives a `down` span of the plan.
    atom = (site / "history.atom").read_text("utf-8")
    for title in re.findall(r"<title>([^<]*)</title>", atom):
        if " – " not in title:
            continue
        found = [
            f"{y}-{int(mo):02d}-{int(d):02d}T{h}:{mi}"
            for y, mo, d, h, mi in ATOM_WHEN.findall(title)
        ]
        end = found[1] if len(found) > 1 else None
        assert (found[0], end) in down_spans, title

    # status.json: every service's next change is the end of its span.
    own = json.loads((site / "status.json").read_text("utf-8"))
    for row in own["services"]:
        ref = plan.service(row["channel"], row["service"])
        until = plan.span(ref, at).until
        assert row["next_change"] == (
            until.astimezone(zone).isoformat(timespec="milliseconds") if until else None
        )


@st.composite
def shipped_instants(draw: st.DrawFn) -> datetime:
    """An instant of the shipped plan's season, often on or just beside one of its changes."""
    plan = real_plan()
    changes = sorted({t.at for t in plan.transitions(SHIPPED_FROM, SHIPPED_TO)})
    if draw(st.booleans()):
        pivot = draw(st.sampled_from(changes))
        return pivot + draw(st.sampled_from([-timedelta(minutes=1), -TICK, timedelta(0)]))
    seconds = int((SHIPPED_TO - SHIPPED_FROM).total_seconds())
    return SHIPPED_FROM + timedelta(seconds=draw(st.integers(0, seconds // 60 - 1)) * 60)


SHIPPED = real_plan()


@PAGE_SETTINGS
@given(shipped_instants(), st.booleans())
def test_the_shipped_plan_site_gives_only_the_plans_times(at: datetime, split: bool) -> None:
    with TemporaryDirectory() as folder:
        site = render(SHIPPED, at, Path(folder), split)
        check_site(SHIPPED, at, site)


@PAGE_SETTINGS
@given(plans(), st.booleans())
def test_a_generated_plan_site_gives_only_the_plans_times(case: tuple, split: bool) -> None:
    plan, start, _ = case
    with TemporaryDirectory() as folder:
        site = render(plan, start, Path(folder), split)
        check_site(plan, start, site)


def test_the_batch_deductions_reopen_on_08_01_everywhere(tmp_path: Path) -> None:
    """06-22 19:00: the freeze hands the batch deductions to the July batch pause, still down;
    the page, the feed and the Statuspage files all say 08-01 00:00, as `plan --at` does."""
    at = datetime(2022, 6, 22, 19, tzinfo=SHANGHAI)
    site = tmp_path / "site"
    render_from(SHIPPED, site, at, None)
    zh = (site / "index.html").read_text("utf-8")
    en = (site / "en" / "index.html").read_text("utf-8")
    # the batch deductions are the freeze's own services, reopening later: not "another" pause
    assert "另有 2 项业务按计划暂停（社保系统停机切换" not in zh
    assert (
        '其中 2 项业务预计 <time datetime="2022-08-01T00:00+08:00">2022年8月1日 00:00（北京时间）'
        "</time>恢复办理" in zh
    )
    assert "2022-07-01T00:00" not in zh
    assert (
        'Of these, 2 service(s) are planned to reopen <time datetime="2022-08-01T00:00+08:00">'
        "1 Aug 2022 00:00 (UTC+8)</time>" in en
    )
    assert "2022-07-01T00:00" not in en
    atom = (site / "history.atom").read_text("utf-8")
    assert "2022年6月22日 18:00（北京时间） – 2022年8月1日 00:00（北京时间）（进行中）" in atom
    assert "2022年7月1日 00:00" not in atom
    pauses = json.loads((site / "api/v2/scheduled-maintenances.json").read_text("utf-8"))
    ids = {m["id"]: m for m in pauses["scheduled_maintenances"]}
    assert "freeze-20220622T100000Z-20220630T160000Z" not in ids
    batch = ids["freeze-20220622T100000Z-20220731T160000Z"]
    assert batch["status"] == "in_progress"
    assert batch["scheduled_until"] == "2022-08-01T00:00:00.000+08:00"
    assert {c["id"] for c in batch["components"]} == {
        "tax-bank-outlets.flex-batch-provincial",
        "tax-bank-outlets.flex-batch-wuhan",
    }

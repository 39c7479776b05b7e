"""Reload: a real `run` takes up an edited plan without a restart (monitor/reload.py).

One monitor, one channel server that doubles as the webhook receiver, and a plan edited on
disk the way an operator does it: written beside the plan and renamed over it, or (for
SIGHUP) edited in place with its modification time put back, so only the signal can tell.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from helpers import (
    FAST_MONITOR,
    ChannelServer,
    MonitorRun,
    async_wait_for,
    db_rows,
    load_plan,
    wait_for,
)

BASE = (
    FAST_MONITOR
    + """
[[channels]]
id = "portal"
name = "测试门户"
kind = "web"
group = "online"
"""
)

CARD = ("portal", "card")


def service(sid: str, url: str, name: str = "", default: str = "up", interval: str = "") -> str:
    every = f'interval = "{interval}"\n' if interval else ""
    return (
        f'\n[[channels.services]]\nid = "{sid}"\nname = "{name or sid}"\ndefault = "{default}"\n'
        f'[channels.services.probe]\nurl = "{url}"\n{every}'
    )


#: A push service: the channel's own script reports in (monitor/kinds/push.py).
KIOSK = """
[[channels.services]]
id = "kiosk"
name = "自助终端"
[channels.services.push]
token = "${KIOSK_TOKEN}"
within = "1h"
"""
TOKEN = "kiosk-token-0123456789"


def push(run: MonitorRun) -> int:
    """POST a heartbeat to the kiosk's push address; the status code."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{run.port}/push/portal/kiosk",
        data=b"",
        method="POST",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def sink(url: str) -> str:
    return f'\n[[alerts]]\ntype = "webhook"\nname = "hook"\nurl = "{url}"\n'


def replace(path: Path, text: str) -> None:
    """Put a new plan in place in one rename, as editors and deploy tools do."""
    fresh = path.with_suffix(".new")
    fresh.write_text(text, encoding="utf-8")
    fresh.replace(path)


def scrape(run: MonitorRun) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{run.port}/metrics", timeout=10) as answer:
        return answer.read().decode("utf-8")


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one series of `channel_monitor_<name>` with these labels (None: absent)."""
    for line in text.splitlines():
        if not line.startswith(f"channel_monitor_{name}"):
            continue
        head, _, value = line.rpartition(" ")
        if re.fullmatch(rf"channel_monitor_{name}(\{{.*\}})?", head) and all(
            f'{key}="{want}"' in head for key, want in labels.items()
        ):
            return float(value)
    return None


def incidents(db: Path) -> list[tuple]:
    return db_rows(
        db, "SELECT id, business, direction, resolved_at IS NOT NULL, resolve_reason "
        "FROM incidents ORDER BY id",
    )  # fmt: skip


def open_ids(db: Path) -> dict[str, int]:
    return {business: ident for ident, business, _, done, _ in incidents(db) if not done}


def test_an_edited_plan_applies_at_once_and_keeps_what_it_should(tmp_path: Path) -> None:
    with ChannelServer() as server:
        server.set("error", "/pay")  # expected up, down: an incident that must survive
        server.set("error", "/gone")  # expected up, down: an incident the edit removes
        plan = tmp_path / "channels.toml"
        hook = sink(server.url("/hook"))
        plan.write_text(
            BASE
            + service("pay", server.url("/pay"))
            + service("gone", server.url("/gone"))
            + service("late", server.url("/late"))
            + service("slow", server.url("/slow"), interval="1h")
            + hook,
            encoding="utf-8",
        )
        db = tmp_path / "monitor.db"
        run = MonitorRun(plan, db, tmp_path / "run.log", env={"KIOSK_TOKEN": TOKEN})
        try:
            run.wait_ticking()
            assert push(run) == 404  # not in the plan yet
            opened = wait_for(
                lambda: (ids := open_ids(db)).keys() == {"pay", "gone"} and ids,
                30,
                what="incidents on pay and gone",
            )
            wait_for(
                lambda: len([b for b in server.received("/hook") if b["kind"] == "opened"]) == 2,
                30,
                what="both openings at the webhook",
            )
            assert server.hit_count("/slow") == 1  # once an hour: only the first round
            before = scrape(run)
            assert sample(before, "config_last_reload_successful") == 1
            started = sample(before, "config_last_reload_success_timestamp_seconds")

            # the edit: gone removed, fresh and kiosk added, late now expected down, slow
            # probed every second
            replace(
                plan,
                BASE
                + service("pay", server.url("/pay"))
                + service("late", server.url("/late"), default="down")
                + service("slow", server.url("/slow"), interval="1s")
                + service("fresh", server.url("/fresh"))
                + KIOSK
                + hook,
            )
            done = wait_for(
                lambda: [r for r in incidents(db) if r[1] == "gone" and r[3]],
                30,
                what="the removed service's incident resolved",
            )
            assert done == [(opened["gone"], "gone", "unexpected_down", 1, "removed from the plan")]
            resolved = wait_for(
                lambda: [b for b in server.received("/hook") if b["kind"] == "resolved"],
                30,
                what="its alert resolved at the webhook",
            )
            assert [(b["incident"], b["business"]) for b in resolved] == [(opened["gone"], "gone")]
            assert resolved[0]["observed"]["reason"] == "removed from the plan"
            assert resolved[0]["ended_by_plan"] is True  # "ended", not "recovered"
            assert resolved[0]["service_name"] == "gone"  # named although no longer planned

            server.wait_hits(1, "/fresh", timeout=15)  # a new service is probed
            assert push(run) == 202  # a new push service takes pushes
            wait_for(
                lambda: db_rows(db, "SELECT 1 FROM observations WHERE business = 'kiosk'"),
                10,
                what="the push stored",
            )
            server.wait_hits(4, "/slow", timeout=15)  # its new interval took effect
            # the new expectation: late serves while now expected down
            late = wait_for(
                lambda: open_ids(db).get("late"), 30, what="late's incident under the new plan"
            )
            after = scrape(run)
            assert sample(after, "expected_up", business="late") == 0
            assert sample(after, "business_info", business="gone") is None
            assert sample(after, "business_info", business="fresh") == 1
            assert sample(after, "mismatch", business="pay", direction="unexpected_down") == 1
            assert sample(after, "config_last_reload_successful") == 1
            assert sample(after, "config_last_reload_success_timestamp_seconds") > started

            # kept: pay's incident is the same one, never closed nor opened twice
            assert open_ids(db) == {"pay": opened["pay"], "late": late}
            assert [r[0] for r in incidents(db) if r[1] == "pay"] == [opened["pay"]]
            assert "removed from the plan" in run.output()
            assert run.stop(within=20) == 0
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        openings = [b["incident"] for b in server.received("/hook") if b["kind"] == "opened"]
        assert len(openings) == len(set(openings))  # nothing sent twice


def test_a_broken_edit_keeps_the_plan_and_sighup_applies_a_fixed_one(tmp_path: Path) -> None:
    with ChannelServer() as server:
        plan = tmp_path / "channels.toml"
        good = BASE + service("pay", server.url("/pay"), name="缴费甲")
        plan.write_text(good, encoding="utf-8")
        db = tmp_path / "monitor.db"
        run = MonitorRun(plan, db, tmp_path / "run.log")
        try:
            run.wait_ticking()
            broken = good.replace('interval = "1s"', 'interval = "1x"')  # same size
            replace(plan, broken)
            wait_for(lambda: "not applied" in run.output(), 30, what="the broken edit refused")
            assert "monitor.interval" in run.output()  # the problem, as `validate` says it
            text = scrape(run)
            assert sample(text, "config_last_reload_successful") == 0
            _, health = run.healthz() or (0, {})
            assert health["config"]["last_reload_successful"] is False
            assert "not applied" in health["config"]["message"]
            hits = server.hit_count("/pay")
            server.wait_hits(hits + 2, "/pay", timeout=15)  # the old plan still probes

            # the fix, written in place with the broken file's stamp put back (same size,
            # inode and modification time): polling cannot see it, only SIGHUP brings it in
            stamp = plan.stat()
            plan.write_text(good.replace("缴费甲", "缴费乙"), encoding="utf-8")
            os.utime(plan, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
            assert plan.stat().st_size == stamp.st_size
            run.send_signal(signal.SIGHUP)
            wait_for(
                lambda: sample(scrape(run), "business_info", business_name="缴费乙") == 1,
                30,
                what="the renamed service in /metrics",
            )
            text = scrape(run)
            assert sample(text, "config_last_reload_successful") == 1
            assert sample(text, "business_info", business_name="缴费甲") is None
            _, health = run.healthz() or (0, {})
            assert health["config"]["last_reload_successful"] is True
            assert "message" not in health["config"]
            assert run.stop(within=20) == 0
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()


async def test_a_probe_in_flight_across_a_reload_is_judged_once_by_the_plan_of_its_instant(
    tmp_path: Path,
) -> None:
    from monitor.clock import ReplayClock
    from monitor.daemon import Daemon

    with ChannelServer() as server:
        server.set("hold")  # both probes wait at the server until released
        before = BASE + service("card", server.url("/card")) + service("gone", server.url("/gone"))
        plan = load_plan(tmp_path / "channels.toml", before)
        clock = ReplayClock(datetime(2022, 7, 1, 12, tzinfo=ZoneInfo("Asia/Shanghai")), speed=0)
        daemon = Daemon(plan, tmp_path / "monitor.db", tmp_path / "site", clock=clock)
        await daemon.start(schedule=False, serve=False)
        try:
            card, gone = (asyncio.create_task(daemon.pipeline.probe(ref)) for ref in plan.services)
            await async_wait_for(lambda: server.in_flight == 2, what="both probes in flight")
            after = load_plan(
                tmp_path / "next.toml", BASE + service("card", server.url("/card"), default="down")
            )
            change = await daemon.apply_plan(after)
            assert (change.removed, change.expecting) == ({("portal", "gone")}, {CARD})
            server.release()
            result = await card
            assert result is not None and result.observation.serving
            assert result.expectation.state == "up"  # the plan in force when it started
            assert await gone is None  # removed while in flight: not judged
            clock.advance(timedelta(minutes=1))
            later = await daemon.pipeline.probe(after.service(*CARD))
            assert later is not None and later.expectation.state == "down"
            await daemon.pipeline.flush()
            rows = db_rows(daemon.db_path, "SELECT business, expected FROM observations")
            assert sorted(rows) == [("card", "down"), ("card", "up")]  # each once, none lost
        finally:
            await daemon.stop()


async def test_a_plan_that_drops_a_service_a_notice_names_is_not_applied(tmp_path: Path) -> None:
    from monitor.daemon import Daemon

    path = tmp_path / "channels.toml"
    plan = load_plan(
        path,
        BASE
        + service("pay", "http://127.0.0.1:9/pay")
        + service("card", "http://127.0.0.1:9/card"),
    )
    notices = tmp_path / "notices.toml"
    notices.write_text(
        '[[notices]]\nid = "card-slow"\ntitle = "社保卡办理缓慢"\ntitle_en = "Cards are slow"\n'
        'services = ["portal/card"]\n[[notices.updates]]\nat = 2022-07-06T13:20:00\n'
        'status = "investigating"\ntext = "正在排查。"\ntext_en = "Looking into it."\n',
        encoding="utf-8",
    )
    daemon = Daemon(
        plan, tmp_path / "monitor.db", tmp_path / "site", plan_path=path, notices_path=notices
    )
    try:
        path.write_text(BASE + service("pay", "http://127.0.0.1:9/pay"), encoding="utf-8")
        assert daemon.plan_watch is not None
        assert await daemon.plan_watch.reload() is False
        assert daemon.plan is plan and daemon.pipeline.plan is plan
        assert daemon.reloads.health()["last_reload_successful"] is False
    finally:
        daemon.store.close()

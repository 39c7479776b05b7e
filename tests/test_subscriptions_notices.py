"""Operators' notices reach the citizens subscribed to the channels they name: once per
update, in each subscriber's language, through the real local relay of test_subscriptions;
the daemon hands the notices' watcher the subscriptions' queue as a callable, and says at a
reload that `[subscriptions]` changes wait for a restart."""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from test_subscriptions import ADDRESS, KEY, ZONE, World, confirmed, drain, plan_with, world

from monitor.notices.watch import NoticeBoard
from monitor.subscriptions.keys import ENV

__all__ = ["world"]  # the fixture, imported

NOTICE = """\
[[notices]]
id = "card-slow"
title = "社保卡业务办理缓慢"
title_en = "Card services are slow"
services = ["web/card"]
{updates}
"""
UPDATE = """
[[notices.updates]]
at = {at}
status = "{status}"
text = "{text}"
text_en = "{text_en}"
"""


def notices(path: Path, *updates: tuple[datetime, str, str, str]) -> Path:
    body = "".join(
        UPDATE.format(at=at.replace(tzinfo=None).isoformat(), status=s, text=t, text_en=e)
        for at, s, t, e in updates
    )
    path.write_text(NOTICE.format(updates=body), encoding="utf-8")
    return path


async def english(world: World, address: str) -> None:
    """Subscribe `address` to the whole channel in English and confirm."""
    body = {"email": address, "services": ["web"], "lang": "en"}
    async with world.http.post(f"{world.url}/api/subscriptions", json=body) as answer:
        assert answer.status == 202
    (confirmation,) = await drain(world)
    link = re.search(r"http://\S+/confirm/\S+", confirmation.get_content()).group(0)
    async with world.http.post(link) as answer:
        assert answer.status == 200


async def test_each_update_reaches_the_channels_subscribers_once_in_their_language(
    world: World, tmp_path: Path
) -> None:
    await confirmed(world)  # Chinese, chose web/pension and the whole channel
    await english(world, "reader@example.org")
    now = world.clock.now()
    path = notices(tmp_path / "notices.toml", (now, "investigating", "正在排查原因", "Looking"))
    plan = plan_with(1)
    board = NoticeBoard(
        path, lambda: plan, world.clock, world.store, tell_subscribers=world.subs.notices
    )
    assert await board.notify() == 2
    mails = {m["To"]: m for m in await drain(world)}
    assert set(mails) == {ADDRESS.lower(), "reader@example.org"}
    zh, en = mails[ADDRESS.lower()], mails["reader@example.org"]
    assert str(zh["Subject"]) == "【通知】社保卡业务办理缓慢"
    assert "正在排查原因" in zh.get_content() and "Looking" not in zh.get_content()
    assert str(en["Subject"]) == "[notice] Card services are slow"
    assert "Looking" in en.get_content() and "排查" not in en.get_content()
    assert en["List-Unsubscribe"] and zh["List-Unsubscribe-Post"]
    # looked at again: nothing new; a fresh board (a restart) queues nothing twice either
    assert await board.notify() == 0
    again = NoticeBoard(
        path, lambda: plan, world.clock, world.store, tell_subscribers=world.subs.notices
    )
    assert await again.notify() == 0
    assert await drain(world) == []
    # a second update: one more mail each
    later = now + timedelta(minutes=30)
    notices(
        path,
        (now, "investigating", "正在排查原因", "Looking"),
        (later, "resolved", "已恢复", "Fixed"),
    )
    await board.reload()
    world.clock.set(later)
    assert await board.notify() == 2
    assert len(await drain(world)) == 2


async def test_a_notice_reaches_no_one_subscribed_elsewhere(world: World, tmp_path: Path) -> None:
    now = world.clock.now()
    path = notices(tmp_path / "notices.toml", (now, "investigating", "排查", "Looking"))
    plan = plan_with(1)
    board = NoticeBoard(
        path, lambda: plan, world.clock, world.store, tell_subscribers=world.subs.notices
    )
    assert await board.notify() == 0, "no subscriber yet"
    assert await drain(world) == []


async def test_the_daemon_hands_the_board_the_subscriptions_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from monitor.daemon import Daemon

    monkeypatch.setenv(ENV, KEY)
    plan = plan_with(1)
    path = notices(tmp_path / "notices.toml", (datetime(2022, 6, 1, tzinfo=ZONE), "x", "x", "x"))
    path.write_text(path.read_text().replace('"x"', '"investigating"', 1), encoding="utf-8")
    daemon = Daemon(plan, tmp_path / "m.db", tmp_path / "site", port=0, notices_path=path)
    try:
        assert daemon.subscriptions is not None and daemon.notice_board is not None
        assert daemon.notice_board.tell_subscribers == daemon.subscriptions.notices
    finally:
        daemon.store.close()


async def test_a_reload_that_changes_subscriptions_says_they_wait_for_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from monitor.daemon import Daemon
    from monitor.plan import Plan

    monkeypatch.setenv(ENV, KEY)
    plan = plan_with(1)
    daemon = Daemon(plan, tmp_path / "m.db", tmp_path / "site", port=0)
    try:
        caplog.set_level(logging.WARNING, logger="monitor.daemon")
        await daemon.apply_plan(Plan(plan.config))
        assert "[subscriptions]" not in caplog.text, "unchanged: nothing to say"
        settings = plan.config.subscriptions
        assert settings is not None
        moved = settings.model_copy(update={"public_url": "https://status.example.cn"})
        await daemon.apply_plan(Plan(plan.config.model_copy(update={"subscriptions": moved})))
        assert "[subscriptions] changes take effect at the next restart" in caplog.text
    finally:
        daemon.store.close()

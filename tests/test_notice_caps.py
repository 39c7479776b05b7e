"""Notices capped in number as in size (issue 23): 5,000 notices made `index.html` 1.18 MB and
the Statuspage `incidents.json` 5.6 MB.

- a notices file holds at most `MAX_NOTICES` notices and a notice at most `MAX_UPDATES`
  updates: more is a validation error naming the file, the key path and the limit, exit 2 from
  `notice validate`, and a running monitor's watcher keeps the last good notices on reload;
- the page, `history.atom` and the Statuspage files show at most `SHOWN` notices: every active
  one, then the latest closed ones, whatever the file holds.
"""

from __future__ import annotations

import json
import logging
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest
from helpers import load_plan, python_m, write_plan
from test_notice import PLAN

from monitor.notices import MAX_NOTICES, MAX_UPDATES, SHOWN, validate_notices
from monitor.notices.watch import NoticeBoard
from monitor.plan.errors import ConfigError

T = TypeVar("T")
ZONE = ZoneInfo("Asia/Shanghai")
START = datetime(2022, 7, 1, 9, 0)


def notice_toml(index: int, closed: bool, updates: int = 1) -> str:
    """One notice, its updates an hour apart from a start that moves an hour per notice."""
    lines = [
        "[[notices]]",
        f'id = "n{index}"',
        f'title = "公告 {index}"',
        f'title_en = "Notice {index}"',
    ]
    for u in range(updates):
        at = START + timedelta(hours=index, minutes=u)
        status = "resolved" if closed and u == updates - 1 else "investigating"
        lines += [
            "[[notices.updates]]",
            f"at = {at.isoformat()}",
            f'status = "{status}"',
            f'text = "第 {u} 条 · 公告 {index}"',
            f'text_en = "update {u} of notice {index}"',
        ]
    return "\n".join(lines) + "\n\n"


def notices_file(path: Path, count: int, active: set[int] = frozenset(), updates: int = 1) -> Path:
    path.write_text(
        "".join(notice_toml(i, i not in active, updates) for i in range(count)), encoding="utf-8"
    )
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    write_plan(tmp_path / "channels.toml", PLAN)
    return tmp_path


def test_too_many_notices_is_an_error_naming_file_key_and_limit(home: Path) -> None:
    plan = load_plan(home / "channels.toml", PLAN)
    path = notices_file(home / "notices.toml", MAX_NOTICES)
    validate_notices(tomllib.loads(path.read_text("utf-8")), "notices.toml", plan)  # holds
    notices_file(home / "notices.toml", MAX_NOTICES + 1)
    with pytest.raises(ConfigError) as raised:
        validate_notices(tomllib.loads(path.read_text("utf-8")), "notices.toml", plan)
    assert raised.value.problems == [
        f"notices.toml: notices: got {MAX_NOTICES + 1:,} notices: expected at most "
        f"{MAX_NOTICES:,} in one file (move notices that are over to another file)"
    ]

    result = python_m("notice", "validate", "--config", str(home / "channels.toml"), cwd=home)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "notices.toml: notices: got 201 notices: expected at most 200" in result.stderr
    assert "Traceback" not in result.stderr


def test_too_many_updates_in_one_notice_is_an_error(home: Path) -> None:
    notices_file(home / "notices.toml", 2, updates=MAX_UPDATES + 1)
    result = python_m("notice", "validate", "--config", str(home / "channels.toml"), cwd=home)
    assert result.returncode == 2
    for index in (0, 1):
        assert (
            f'notices[{index}].updates (notice "n{index}"): got {MAX_UPDATES + 1} updates: '
            f"expected at most {MAX_UPDATES} in one notice"
        ) in result.stderr


class _Clock:
    def now(self) -> datetime:
        return START.replace(tzinfo=ZONE) + timedelta(days=30)


class _Store:
    """The little of the store a notice board asks: the incidents' numbers."""

    def incidents(self, limit: int = 500) -> list[Any]:
        return []

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)


async def test_the_watcher_keeps_the_last_good_notices_when_there_are_too_many(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plan = load_plan(home / "channels.toml", PLAN)
    path = notices_file(home / "notices.toml", 3)
    board = NoticeBoard(path, lambda: plan, _Clock(), _Store())  # type: ignore[arg-type]
    assert len(board.current.notices) == 3
    notices_file(path, MAX_NOTICES + 1)
    with caplog.at_level(logging.ERROR, logger="monitor.notices.watch"):
        assert await board.reload() is False
    assert len(board.current.notices) == 3
    assert board.errors == 1
    assert "not applied, the notices shown stay as they were" in caplog.text
    assert "expected at most 200 in one file" in caplog.text


def test_the_page_and_the_feeds_show_the_latest_notices_and_every_active_one(
    home: Path,
) -> None:
    # 200 notices, the oldest two still active: both shown, with the 48 latest closed ones
    notices_file(home / "notices.toml", MAX_NOTICES, active={0, 1}, updates=3)
    result = python_m(
        "render", "--config", str(home / "channels.toml"), "--at", "2022-08-01T00:00", cwd=home
    )
    assert result.returncode == 0, result.stderr
    site = home / "site"
    expected = {"n0", "n1"} | {f"n{i}" for i in range(MAX_NOTICES - SHOWN + 2, MAX_NOTICES)}
    assert len(expected) == SHOWN

    incidents = json.loads((site / "api/v2/incidents.json").read_text("utf-8"))["incidents"]
    from_notices = {i["id"].removeprefix("notice-") for i in incidents if i["id"][:7] == "notice-"}
    assert from_notices == expected
    summary = json.loads((site / "api/v2/summary.json").read_text("utf-8"))
    assert {i["id"] for i in summary["incidents"]} == {"notice-n0", "notice-n1"}

    ns = {"a": "http://www.w3.org/2005/Atom"}
    entries = ET.parse(site / "history.atom").getroot().findall("a:entry", ns)
    titles = {
        e.findtext("a:title", namespaces=ns)
        for e in entries
        if e.find("a:category", ns).get("term") == "notice"
    }
    assert {t.split("（")[0].removeprefix("公告 ") for t in titles} == {
        n.removeprefix("n") for n in expected
    }

    for page in (site / "index.html", site / "en" / "index.html"):
        html = page.read_text("utf-8")
        shown = {n for n in (f"n{i}" for i in range(MAX_NOTICES)) if f'id="notice-{n}"' in html}
        assert shown == expected, page
    assert (site / "index.html").stat().st_size < 200_000

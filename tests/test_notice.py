"""Operators' notices: validation at key paths, the `notice` commands that write the file, the
notices on the page (both languages), in `history.atom` and the Statuspage files, and a
`notify = true` notice sent once to a real local webhook receiver by a real `run` process,
also across a restart, with an edit of the file picked up while it runs.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
import urllib.request
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from helpers import (
    ROOT,
    ChannelServer,
    MonitorRun,
    db_rows,
    load_plan,
    python_m,
    real_plan,
    wait_for,
    write_plan,
)

from monitor.alerts.alertmanager import AlertmanagerSink
from monitor.alerts.message import Alert
from monitor.alerts.webhook import WebhookSink
from monitor.notices import add_notice, add_update, load_notices, validate_notices
from monitor.plan.errors import ConfigError
from monitor.plan.sinks import AlertSink

PLAN = """\
[monitor]
timezone = "Asia/Shanghai"
interval = "1s"
timeout = "2s"

[[channels]]
id = "portal"
name = "测试门户"
name_en = "Test portal"
kind = "web"
group = "online"

[[channels.services]]
id = "print"
name = "证明打印"
name_en = "Certificate printing"
"""

NOTICES = """\
# The cutover team's notices. This comment must survive `notice add` and `notice update`.
[[notices]]
id = "print-slow"
title = "证明打印缓慢"
title_en = "Certificate printing is slow"
services = ["portal/print"]

[[notices.updates]]
at = 2022-07-06T13:20:00
status = "investigating"
text = "已知悉，正在排查。"
text_en = "We are aware and looking into it."

[[notices.updates]]
at = 2022-07-06T14:05:00
status = "identified"
text = "打印服务器负载过高，正在扩容。"
text_en = "The print server is overloaded; adding capacity."

# planned work, over before the page's instant
[[notices]]
id = "db-upgrade"
title = "数据库升级"
title_en = "Database upgrade"

[[notices.updates]]
at = 2022-07-05T22:00:00
status = "scheduled"
text = "今晚 23:00 起升级数据库。"
text_en = "Database upgrade from 23:00 tonight."

[[notices.updates]]
at = 2022-07-06T01:00:00
status = "completed"
text = "升级已完成。"
text_en = "The upgrade is done."
"""


@pytest.fixture
def home(tmp_path: Path) -> Path:
    write_plan(tmp_path / "channels.toml", PLAN)
    (tmp_path / "notices.toml").write_text(NOTICES, encoding="utf-8")
    return tmp_path


# --- validation -------------------------------------------------------------------------------


def test_every_mistake_is_reported_at_its_key_path(tmp_path: Path) -> None:
    plan = load_plan(tmp_path / "channels.toml", PLAN)
    data = {
        "notices": [
            {
                "id": "a",
                "title": "甲",
                "title_en": "A",
                "services": ["portal/nope", "portal"],
                "incident": 7,
                "updates": [
                    {
                        "at": datetime(2022, 7, 6, 14),
                        "status": "fixed",
                        "text": "x",
                        "text_en": "x",
                    },
                    {"at": datetime(2022, 7, 6, 13), "status": "resolved", "text": "y"},
                ],
            },
            {"id": "a", "title": "", "title_en": "B", "colour": "red"},
        ]
    }
    with pytest.raises(ConfigError) as caught:
        validate_notices(data, "notices.toml", plan, incidents={1, 2})
    problems = caught.value.problems
    expected = [
        'notices.toml: notices[0].services[1] (notice "a"): got "portal": expected '
        '"channel/service"',
        'notices.toml: notices[0].updates[0].status (notice "a"): got "fixed"; expected one of '
        "'investigating'",
        'notices.toml: notices[0].updates[1].text_en (notice "a"): missing required key',
        'notices.toml: notices[1].title (notice "a"): got "": expected some text',
        'notices.toml: notices[1].colour (notice "a"): unknown key "colour"; allowed keys: id, '
        "title, title_en, services, incident, notify, updates",
        'notices.toml: notices[0].services[0] (notice "a"): got "portal/nope": expected a '
        "service of the plan",
        'notices.toml: notices[0].incident (notice "a"): got 7: expected the number of an '
        "incident in the store",
        'notices.toml: notices[0].updates[1].at (notice "a"): got 2022-07-06T13:00:00: '
        "expected updates in the order they were posted",
        'notices.toml: notices[1].id (notice "a"): duplicate notice id "a"; it is already used '
        "by notices[0]",
    ]
    assert len(problems) == len(expected), "\n".join(problems)
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start), (problem, start)


def test_a_naive_at_is_read_in_the_plans_zone_and_no_file_means_no_notices(home: Path) -> None:
    plan = load_plan(home / "channels.toml", PLAN)
    notices = load_notices(home / "notices.toml", plan)
    first = notices.notices[0].updates[0].at
    assert first.utcoffset() == timedelta(hours=8) and first.hour == 13
    assert load_notices(home / "absent.toml", plan).notices == ()


def test_notice_commands_exit_2_on_a_broken_file(home: Path) -> None:
    (home / "notices.toml").write_text('[[notices]]\nid = "Bad Id"\n', encoding="utf-8")
    for args in (("validate",), ("add", "--id", "x", "--title", "一", "--title-en", "one")):
        result = python_m("notice", *args, "--config", str(home / "channels.toml"), cwd=home)
        assert result.returncode == 2, result
        assert "notices[0].id" in result.stderr and "Traceback" not in result.stderr
    result = python_m("render", "--config", str(home / "channels.toml"), cwd=home)
    assert result.returncode == 2 and "notices[0].title" in result.stderr


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ("x = " + "[" * 100_000 + "]" * 100_000 + "\n", "nest too deeply"),
        ("x = " + "9" * 5000 + "\n", "too long to read"),
        ("x = 1 = 2\n", "TOML syntax error"),
    ],
    ids=["nested", "long-number", "syntax"],
)
def test_an_unreadable_notices_file_is_exit_2_not_a_traceback(
    home: Path, content: str, said: str
) -> None:
    (home / "notices.toml").write_text(content, encoding="utf-8")
    result = python_m("notice", "validate", "--config", str(home / "channels.toml"), cwd=home)
    assert result.returncode == 2, result
    assert said in result.stderr and "Traceback" not in result.stderr


def test_a_text_longer_than_a_page_can_carry_is_refused(home: Path) -> None:
    (home / "notices.toml").write_text(
        '[[notices]]\nid = "long"\ntitle = "长"\ntitle_en = "Long"\n[[notices.updates]]\n'
        'at = 2022-07-06T13:20:00\nstatus = "investigating"\n'
        f'text = "{"长" * 3000}"\ntext_en = "ok"\n',
        encoding="utf-8",
    )
    result = python_m("notice", "validate", "--config", str(home / "channels.toml"), cwd=home)
    assert result.returncode == 2, result
    assert "notices[0].updates[0].text" in result.stderr and "at most 2,000" in result.stderr


# --- the commands that write the file ---------------------------------------------------------


def test_add_and_update_write_a_valid_file_and_keep_comments(home: Path) -> None:
    config = ("--config", str(home / "channels.toml"))
    added = python_m(
        "notice", "add", *config, "--id", "outage", "--title", "门户无法访问",
        "--title-en", "The portal is down", "--service", "portal/print", "--notify",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    updated = python_m(
        "notice", "update", *config, "--id", "print-slow", "--status", "monitoring",
        "--text", "已扩容，观察中。", "--text-en", "Capacity added; watching.",
        "--at", "2022-07-06T15:00",
    )  # fmt: skip
    assert updated.returncode == 0, updated.stderr
    refused = python_m(
        "notice", "update", *config, "--id", "print-slow", "--status", "resolved",
        "--text", "早了", "--text-en", "too early", "--at", "2022-07-06T12:00",
    )  # fmt: skip
    assert refused.returncode == 2 and "updates[3].at" in refused.stderr
    duplicate = python_m(
        "notice", "add", *config, "--id", "outage", "--title", "重复", "--title-en", "again"
    )
    assert duplicate.returncode == 2 and "already exists" in duplicate.stderr

    text = (home / "notices.toml").read_text("utf-8")
    assert text.startswith("# The cutover team's notices.")
    assert "# planned work, over before the page's instant" in text
    data = tomllib.loads(text)
    ids = [n["id"] for n in data["notices"]]
    assert ids == ["print-slow", "db-upgrade", "outage"]
    assert [u["status"] for u in data["notices"][0]["updates"]] == [
        "investigating",
        "identified",
        "monitoring",
    ]
    assert data["notices"][0]["updates"][2]["at"] == datetime(2022, 7, 6, 15, 0)
    assert data["notices"][2] == {
        "id": "outage",
        "title": "门户无法访问",
        "title_en": "The portal is down",
        "services": ["portal/print"],
        "notify": True,
    }
    assert len(data["notices"][1]["updates"]) == 2  # the other notice is untouched
    listed = python_m("notice", "list", *config)
    assert listed.returncode == 0 and "print-slow" in listed.stdout
    assert not list(home.glob(".notices.toml.*"))  # no temporary file left behind


# --- the page and its files -------------------------------------------------------------------


def test_notices_on_the_page_in_the_feed_and_in_the_statuspage_files(home: Path) -> None:
    result = python_m(
        "render", "--config", str(home / "channels.toml"), "--at", "2022-07-06T14:30", cwd=home
    )
    assert result.returncode == 0, result.stderr
    site = home / "site"
    zh = (site / "index.html").read_text("utf-8")
    en = (site / "en" / "index.html").read_text("utf-8")

    # active: at the top, right after the headline, newest update first
    top = zh[zh.index('id="now"') :]
    assert top.index('id="notices"') < top.index("</section>") + 200
    active = zh[zh.index('id="notices"') : zh.index("</section>", zh.index('id="notices"'))]
    assert "证明打印缓慢" in active and "测试门户 · 证明打印" in active
    assert active.index("打印服务器负载过高") < active.index("已知悉，正在排查")
    assert "已查明原因" in active and "数据库升级" not in active
    active_en = en[en.index('id="notices"') :]
    assert "Certificate printing is slow" in active_en
    assert active_en.index("adding capacity") < active_en.index("We are aware")
    # past: in the incidents history
    history = zh[zh.index('id="h-inc"') :]
    assert "数据库升级" in history and "升级已完成" in history and "已完成" in history
    assert "Database upgrade" in en[en.index('id="h-inc"') :]

    feed = ET.parse(site / "history.atom").getroot()
    ns = {"a": "http://www.w3.org/2005/Atom"}
    entries = {
        e.findtext("a:title", namespaces=ns): e
        for e in feed.findall("a:entry", ns)
        if e.find("a:category", ns).get("term") == "notice"
    }
    assert len(entries) == 2
    slow = entries["证明打印缓慢（已查明原因）"]
    assert slow.findtext("a:updated", namespaces=ns) == "2022-07-06T14:05:00.000+08:00"
    assert slow.findtext("a:published", namespaces=ns) == "2022-07-06T13:20:00.000+08:00"
    ids = [e.findtext("a:id", namespaces=ns) for e in entries.values()]
    assert len(set(ids)) == 2 and all(i.startswith("urn:uuid:") for i in ids)

    incidents = json.loads((site / "api/v2/incidents.json").read_text("utf-8"))["incidents"]
    by_id = {i["id"]: i for i in incidents}
    slow = by_id["notice-print-slow"]
    assert slow["status"] == "identified" and slow["resolved_at"] is None
    assert [u["status"] for u in slow["incident_updates"]] == ["identified", "investigating"]
    assert slow["incident_updates"][0]["body"].startswith("打印服务器负载过高")
    assert [c["code"] for c in slow["incident_updates"][0]["affected_components"]] == [
        "portal.print"
    ]
    assert [c["id"] for c in slow["components"]] == ["portal.print"]
    upgrade = by_id["notice-db-upgrade"]
    assert upgrade["status"] == "completed" and upgrade["impact"] == "maintenance"
    assert upgrade["resolved_at"] == "2022-07-06T01:00:00.000+08:00"
    summary = json.loads((site / "api/v2/summary.json").read_text("utf-8"))
    assert [i["id"] for i in summary["incidents"]] == ["notice-print-slow"]

    # before its first update a notice is not out yet
    early = python_m(
        "render", "--config", str(home / "channels.toml"), "--at", "2022-07-06T12:00", cwd=home
    )
    assert early.returncode == 0
    assert "证明打印缓慢" not in (site / "index.html").read_text("utf-8")


def test_alertmanager_takes_no_notices() -> None:
    alert = Alert(
        dedup_key="notice-a-0-1",
        kind="notice",
        direction="",
        channel="",
        channel_name="",
        business="",
        service_name="",
        expected="",
        reason="",
        opened_at="2022-07-06T05:20:00Z",
        at="2022-07-06T05:20:00Z",
        timezone="Asia/Shanghai",
        notice="a",
        notice_title="甲",
        notice_title_en="A",
        status="investigating",
        body="正在排查。",
        body_en="Looking into it.",
    )
    am = AlertmanagerSink(AlertSink(type="alertmanager", url="http://127.0.0.1:1"), None)  # type: ignore[arg-type]
    hook = WebhookSink(AlertSink(type="webhook", url="http://127.0.0.1:1"), None)  # type: ignore[arg-type]
    assert not am.wants(alert) and hook.wants(alert)
    assert alert.title_zh() == "【公告·正在排查】甲"
    assert alert.title_en() == "[NOTICE: INVESTIGATING] A"


# --- notify, live -------------------------------------------------------------------------------


def _notices_received(receiver: ChannelServer) -> list[str]:
    return [b["dedup_key"] for b in receiver.received("/hook") if b.get("kind") == "notice"]


def test_a_notify_notice_is_sent_once_across_a_restart_and_edits_show_while_running(
    tmp_path: Path, server: ChannelServer, processes: list[subprocess.Popen]
) -> None:
    plan = write_plan(
        tmp_path / "channels.toml",
        PLAN
        + f'[channels.services.probe]\nurl = "{server.url("/print")}"\n\n'
        + f'[[alerts]]\ntype = "webhook"\nurl = "{server.url("/hook")}"\n',
    )
    # naive, in the plan's zone, as an operator writes it
    shanghai = datetime.now(ZoneInfo("Asia/Shanghai")).replace(tzinfo=None, microsecond=0)
    posted = shanghai - timedelta(minutes=5)
    (tmp_path / "notices.toml").write_text(
        "[[notices]]\n"
        'id = "portal-slow"\n'
        'title = "门户缓慢"\n'
        'title_en = "The portal is slow"\n'
        'services = ["portal/print"]\n'
        "notify = true\n\n"
        "[[notices.updates]]\n"
        f"at = {posted.isoformat()}\n"
        'status = "investigating"\n'
        'text = "正在排查。"\n'
        'text_en = "Looking into it."\n',
        encoding="utf-8",
    )
    db, log = tmp_path / "monitor.db", tmp_path / "run.log"
    first = MonitorRun(plan, db, log)
    processes.append(first)
    first.wait_ticking()
    keys = wait_for(lambda: _notices_received(server), 30, what="the notice at the receiver")
    (body,) = server.received("/hook")
    assert body["notice"]["id"] == "portal-slow" and body["notice"]["status"] == "investigating"
    assert "正在排查。" in body["text"] and "Looking into it." in body["text"]
    assert body["notice"]["services"] == "测试门户 · 证明打印"
    wait_for(
        lambda: db_rows(db, "SELECT 1 FROM alert_outbox WHERE delivered_at IS NOT NULL"),
        10,
        what="the delivery marked in the outbox",
    )
    assert first.stop(within=20) == 0

    second = MonitorRun(plan, db, log)
    processes.append(second)
    second.wait_ticking()
    later = (shanghai - timedelta(minutes=1)).isoformat()
    result = python_m(
        "notice", "update", "--config", str(plan), "--id", "portal-slow",
        "--status", "identified", "--text", "原因已查明。", "--text-en", "Cause found.",
        "--at", later,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    keys = wait_for(
        lambda: (k := _notices_received(server)) and len(k) >= 2 and k,
        30,
        what="the second update at the receiver",
    )
    assert len(keys) == 2 and len(set(keys)) == 2  # the first was not sent again

    def page() -> str:
        url = f"http://127.0.0.1:{second.port}/en/index.html"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode("utf-8")

    wait_for(lambda: "Cause found." in page(), 30, what="the edit on the served page")
    broken = tmp_path / "broken.toml"  # a broken edit, put in place in one rename
    broken.write_text('[[notices]]\nid = "Bad"\n', encoding="utf-8")
    broken.replace(tmp_path / "notices.toml")
    wait_for(lambda: "not applied" in second.output(), 30, what="the broken edit refused")
    assert "notices[0].id" in second.output()
    assert "Cause found." in page()  # the last good notices stay
    assert second.stop(within=20) == 0
    assert _notices_received(server) == keys


def test_the_readme_example_validates_against_the_real_plan(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```toml\n(.*?)```", text, flags=re.S) if "[[notices]]" in b]
    notices = validate_notices(tomllib.loads(block), "README.md", real_plan())
    (notice,) = notices.notices
    assert notice.notify and notice.service_keys() == [("hubei-zwfw", "certificate-print")]


def test_editing_keeps_the_layout_or_writes_anew_when_it_cannot(tmp_path: Path) -> None:
    plan = load_plan(tmp_path / "channels.toml", PLAN)
    path = tmp_path / "new" / "notices.toml"
    add_notice(path, plan, ident="one", title="一", title_en="One")
    add_notice(path, plan, ident="two", title="二", title_en="Two", services=["portal/print"])
    text = path.read_text("utf-8")
    text = text.replace('[[notices]]\nid = "two"', '# the second one\n[[notices]]\nid = "two"')
    path.write_text(text, encoding="utf-8")
    at = datetime(2022, 7, 6, 13, 20, tzinfo=plan.zone)
    item, kept = add_update(
        path, plan, ident="one", status="investigating", text="查", text_en="Looking", at=at
    )
    assert kept and item.updates[0].at == at
    text = path.read_text("utf-8")
    assert text.index("[[notices.updates]]") < text.index("# the second one")
    assert text.index("# the second one") + len("# the second one\n") == text.index(
        '[[notices]]\nid = "two"'
    )

    inline = tmp_path / "inline.toml"  # updates as an inline array: cannot append a table
    inline.write_text(
        '[[notices]]\nid = "one"\ntitle = "一"\ntitle_en = "One"\nupdates = [{ at = '
        '2022-07-06T13:00:00, status = "investigating", text = "查", text_en = "Looking" }]\n',
        encoding="utf-8",
    )
    item, kept = add_update(
        inline, plan, ident="one", status="resolved", text="好了", text_en="Done", at=at
    )
    assert not kept
    assert [u.status for u in item.updates] == ["investigating", "resolved"]
    assert load_notices(inline, plan).notices == (item,)


def test_the_demos_notices_validate_and_tell_the_scripted_fault() -> None:
    from monitor.demo import NOTICES

    notices = load_notices(NOTICES, real_plan())
    by_id = {n.id: n for n in notices.notices}
    assert by_id["cutover-2022"].planned
    printing = by_id["certificate-print-0706"]
    assert printing.service_keys() == [("hubei-zwfw", "certificate-print")]
    assert [u.status for u in printing.updates] == ["investigating", "identified", "resolved"]


def test_render_checks_a_notices_incident_against_the_store(home: Path) -> None:
    from monitor.store import Store

    Store(home / "monitor.db").close()  # a store without incidents
    services = 'services = ["portal/print"]'
    text = NOTICES.replace(services, services + "\nincident = 5")
    (home / "notices.toml").write_text(text, encoding="utf-8")
    result = python_m("render", "--config", str(home / "channels.toml"), cwd=home)
    assert result.returncode == 2
    assert 'notices[0].incident (notice "print-slow"): got 5' in result.stderr

"""An operator's first hour with a plan of their own (issue 24, item 3): each slip a new user
met, and what the tool says now instead of a traceback, a silent literal or a wrong word."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from monitor.cli import main
from monitor.plan import Plan
from monitor.plan.load import load_config, parse_toml, validate_config

SHANGHAI = ZoneInfo("Asia/Shanghai")

#: A housing-fund centre's plan in small: a freeze with quoted instants, a quoted milestone,
#: a probed portal, a push hall and a signing alert sink.
QUOTED_PLAN = """\
[monitor]
timezone = "Asia/Shanghai"

[periods.freeze]
title = "核心系统升级"
title_en = "Core system upgrade"
start = "2026-12-18T17:00:00"
end = "2026-12-21T08:00:00"

[periods.certificates]
title = "证明打印"
start = 2026-12-19T09:00:00
end = "2026-12-19T18:00"

[[milestones]]
at = "2026-12-20T09:00:00"
until = "2026-12-20T18:00:00"
title = "缴存截止"

[[channels]]
id = "portal"
name = "门户网站"
kind = "web"
group = "online"

[[channels.services]]
id = "fund"
name = "公积金提取"
expect = [{ during = "freeze", state = "down" }]

[channels.services.probe]
url = "${FH_PORTAL_URL}"

[[channels]]
id = "hall"
name = "服务大厅"
kind = "offline"
group = "offline"

[[channels.services]]
id = "fund"
name = "公积金提取"
expect = [{ during = "freeze", state = "down" }, { during = "certificates", state = "up" }]

[channels.services.push]
token = "${FH_HALL6_PUSH_TOKEN}"
"""

SINK = """
[[alerts]]
type = "webhook"
url = "https://hooks.example.test/cutover"
secret = "${FH_WEBHOOK_SECRET}"
"""


def write(tmp_path: Path, text: str, name: str = "channels.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "FH_PORTAL_URL",
        "FH_HALL6_PUSH_TOKEN",
        "FH_WEBHOOK_SECRET",
        "FH_HALL6_PUSH_TOKNE",
    ):
        monkeypatch.delenv(name, raising=False)


# --- 1. quoted datetimes -----------------------------------------------------------------------


def _inline_channels(text: str) -> str:
    """The same plan with its channels as one inline array: not readable in parts."""
    head = text.split("[[channels]]", 1)[0]
    return (
        'channels = [{ id = "portal", name = "门户网站", kind = "web", group = "online", '
        'services = [{ id = "fund", name = "公积金提取", '
        'expect = [{ during = "freeze", state = "down" }] }] }]\n'
    ) + head


@pytest.mark.parametrize("whole", [False, True], ids=["streamed", "whole-file"])
def test_quoted_datetimes_are_read_in_the_plans_zone(tmp_path: Path, whole: bool) -> None:
    text = _inline_channels(QUOTED_PLAN) if whole else QUOTED_PLAN
    path = write(tmp_path, text)
    config = (
        validate_config(parse_toml(path.read_bytes(), path, "plan"), str(path))
        if whole
        else load_config(path)
    )
    freeze = config.periods["freeze"]
    assert freeze.start == datetime(2026, 12, 18, 17, tzinfo=SHANGHAI)
    assert freeze.start.tzinfo is not None and freeze.end.tzinfo is not None
    assert config.periods["certificates"].end == datetime(2026, 12, 19, 18, tzinfo=SHANGHAI)
    milestone = config.milestones[0]
    assert milestone.at == datetime(2026, 12, 20, 9, tzinfo=SHANGHAI)
    assert isinstance(milestone.until, datetime) and milestone.until.tzinfo is not None
    plan = Plan(config)
    ref = plan.service("portal", "fund")
    assert plan.expected(ref, datetime(2026, 12, 19, tzinfo=SHANGHAI)).state == "down"
    assert plan.transitions(
        datetime(2026, 12, 1, tzinfo=SHANGHAI), datetime(2027, 1, 1, tzinfo=SHANGHAI)
    )


def test_quoted_datetimes_work_in_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(write(tmp_path, QUOTED_PLAN))
    assert run(capsys, "validate", "--config", path)[0] == 0
    code, out, err = run(capsys, "plan", "--config", path, "--at", "2026-12-19T00:00")
    assert code == 0 and "Traceback" not in err
    assert "2026-12-21 08:00" in out
    code, out, _ = run(
        capsys,
        "plan",
        "--config",
        path,
        "--transitions",
        "--from",
        "2026-12-01",
        "--until",
        "2027-01-01",
        "--format",
        "json",
    )
    assert code == 0
    ats = {item["at"] for item in json.loads(out)["transitions"]}
    assert "2026-12-18T17:00:00+08:00" in ats and "2026-12-21T08:00:00+08:00" in ats


def test_a_quoted_notice_instant_is_read_in_the_plans_zone(tmp_path: Path) -> None:
    from monitor.notices import load_notices

    plan = Plan(load_config(write(tmp_path, QUOTED_PLAN)))
    notices = write(
        tmp_path,
        '[[notices]]\nid = "n"\ntitle = "通知"\ntitle_en = "Notice"\n'
        '[[notices.updates]]\nat = "2026-12-18T18:00:00"\nstatus = "investigating"\n'
        'text = "正在处理"\ntext_en = "Working on it"\n',
        "notices.toml",
    )
    [notice] = load_notices(notices, plan).notices
    assert notice.updates[0].at == datetime(2026, 12, 18, 18, tzinfo=SHANGHAI)

"""An operator's first hour with a plan of their own (issue 24, item 3): each slip a new user
met, and what the tool says now instead of a traceback, a silent literal or a wrong word."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
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


# --- 2. an unset alert secret is a warning, except for `run` and `validate --strict` ----------


@pytest.mark.parametrize(
    "command",
    [
        ("validate",),
        ("plan", "--at", "2026-12-19T00:00"),
        ("check", "--at", "2026-12-19T00:00", "--allow-unknown"),
        ("notice", "list"),
    ],
    ids=lambda c: c[0],
)
def test_an_unset_alert_secret_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: tuple[str, ...]
) -> None:
    path = str(write(tmp_path, QUOTED_PLAN + SINK))
    code, _, err = run(capsys, *command, "--config", path)
    assert code == 0, err
    assert 'alerts[0].secret: warning: environment variable "FH_WEBHOOK_SECRET" is not set' in err
    assert "警告" in err and "hooks.example.test" not in err


def test_report_and_render_warn_about_an_unset_alert_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(write(tmp_path, QUOTED_PLAN + SINK))
    code, _, err = run(capsys, "render", "--config", path, "--at", "2026-12-19T00:00")
    assert code == 0 and "FH_WEBHOOK_SECRET" in err
    code, _, err = run(capsys, "report", "--config", path, "--db", str(tmp_path / "none.db"))
    assert "FH_WEBHOOK_SECRET" in err and "nothing was done" not in err


def test_validate_strict_and_run_refuse_an_unset_alert_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FH_PORTAL_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("FH_HALL6_PUSH_TOKEN", "a-token-of-twenty-chars")
    path = str(write(tmp_path, QUOTED_PLAN + SINK))
    code, _, err = run(capsys, "validate", "--strict", "--config", path)
    assert code == 2 and "1 warning(s)" in err
    code, _, err = run(capsys, "run", "--config", path, "--db", str(tmp_path / "m.db"))
    assert code == 2
    assert 'alerts[0].secret: environment variable "FH_WEBHOOK_SECRET"' in err
    assert "nothing was done" in err
    assert not (tmp_path / "m.db").exists()


# --- 4. `$NAME` without braces and misspelt variables ------------------------------------------


def test_a_reference_without_braces_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = QUOTED_PLAN.replace('token = "${FH_HALL6_PUSH_TOKEN}"', 'token = "$FH_HALL6_PUSH_TOKEN"')
    path = str(write(tmp_path, text))
    code, _, err = run(capsys, "validate", "--config", path)
    assert code == 0
    assert (
        'channels[1].services[0].push.token (channel "hall", service "fund"): warning: '
        '"$FH_HALL6_PUSH_TOKEN" is not read from the environment'
    ) in err
    assert 'write "${FH_HALL6_PUSH_TOKEN}"' in err and "花括号" in err
    assert run(capsys, "validate", "--strict", "--config", path)[0] == 2


def test_a_misspelt_variable_gets_a_did_you_mean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FH_HALL6_PUSH_TOKEN", "a-token-of-twenty-chars")
    monkeypatch.setenv("FH_PORTAL_URL", "http://127.0.0.1:9/")
    text = QUOTED_PLAN.replace("${FH_HALL6_PUSH_TOKEN}", "${FH_HALL6_PUSH_TOKNE}")
    path = str(write(tmp_path, text))
    code, _, err = run(capsys, "validate", "--config", path)
    assert code == 0
    assert 'push.token (channel "hall", service "fund"): warning: environment variable ' in err
    assert '"FH_HALL6_PUSH_TOKNE" is not set (did you mean "FH_HALL6_PUSH_TOKEN"?)' in err
    assert run(capsys, "validate", "--strict", "--config", path)[0] == 2


def test_names_that_differ_by_more_than_a_slip_are_not_misspellings() -> None:
    from monitor.plan.hints import _misspelt

    assert _misspelt("SI_HALL_PUSH_TOKEN", ["TAX_HALL_PUSH_TOKEN"]) == []
    assert _misspelt("HALL2_TOKEN", ["HALL1_TOKEN"]) == []
    assert _misspelt("PORTAL_URL", ["PORTAL_URI"]) == ["PORTAL_URI"]


def test_two_spellings_of_one_variable_in_the_plan_are_pointed_out(tmp_path: Path) -> None:
    text = QUOTED_PLAN.replace(
        "[channels.services.probe]",
        '[channels.services.probe]\nheaders = { X = "${FH_HALL6_PUSH_TOKNE}" }',
    )
    warnings: list[str] = []
    load_config(write(tmp_path, text), warnings=warnings)
    assert any('did you mean "FH_HALL6_PUSH_TOKEN"' in w for w in warnings), warnings


def test_the_shipped_plan_has_no_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers import REAL_PLAN

    warnings: list[str] = []
    load_config(REAL_PLAN, warnings=warnings)
    assert warnings == []


# --- 3. `check` fails when what it should observe could not be --------------------------------


def test_check_fails_when_every_service_is_unknown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing set: the portal's URL and the hall's token are both unset.
    path = str(write(tmp_path, QUOTED_PLAN))
    code, out, _ = run(capsys, "check", "--config", path, "--at", "2026-12-19T00:00")
    assert code == 1
    assert out.splitlines()[-1].startswith(
        "0 mismatch(es), 2 not observed (unknown): exit 1 (--allow-unknown to pass)"
    )
    code, out, _ = run(
        capsys, "check", "--config", path, "--at", "2026-12-19T00:00", "--allow-unknown"
    )
    assert code == 0 and "allowed by --allow-unknown" in out
    code, out, _ = run(
        capsys, "check", "--config", path, "--at", "2026-12-19T00:00", "--format", "json"
    )
    assert code == 1 and json.loads(out)["unobserved"] == 2


def test_check_does_not_fail_for_a_configured_push_it_cannot_see(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FH_HALL6_PUSH_TOKEN", "a-token-of-twenty-chars")
    text = QUOTED_PLAN.replace('[channels.services.probe]\nurl = "${FH_PORTAL_URL}"\n', "")
    path = str(write(tmp_path, text))
    code, out, _ = run(capsys, "check", "--config", path, "--at", "2026-12-19T00:00")
    assert code == 0, out
    assert "0 not observed (unknown); 1 push service(s) not checked" in out


def test_check_fails_when_a_probe_cannot_reach_its_channel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from servers import closed_port

    monkeypatch.setenv("FH_HALL6_PUSH_TOKEN", "a-token-of-twenty-chars")
    monkeypatch.setenv("FH_PORTAL_URL", f"http://127.0.0.1:{closed_port()}/")
    path = str(write(tmp_path, QUOTED_PLAN))
    code, out, _ = run(capsys, "check", "--config", path, "--at", "2026-12-19T00:00")
    # A refused connection says "not serving": down as planned during the freeze, no unknown.
    assert (code, out.splitlines()[-1].split(" / ")[0].split(";")[0]) == (
        0,
        "0 mismatch(es), 0 not observed (unknown)",
    )


# --- 12. output piped into a reader that stops early -------------------------------------------


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("validate", "--config", "channels.toml"), 120),
        (("plan", "--example"), 120),
        (("--help",), 0),
        (("plan", "--help"), 0),
    ],
)
def test_a_reader_that_left_gets_no_traceback(args: tuple[str, ...], code: int) -> None:
    import os
    import subprocess

    from helpers import MONITOR, ROOT

    read, write_end = os.pipe()
    os.close(read)  # the reader is gone before the first line is written (`| head -0`)
    try:
        done = subprocess.run(
            [*MONITOR, *args],
            cwd=ROOT,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == code


# --- 5. `channel_monitor_mismatch` for every observed service ----------------------------------

#: The quoted plan with its variables filled in: a probed portal and a push hall, both expected
#: down during the freeze, and a hall service observed by nobody.
OBSERVED_PLAN = (
    QUOTED_PLAN.replace("${FH_PORTAL_URL}", "http://127.0.0.1:9/fund")
    .replace("${FH_HALL6_PUSH_TOKEN}", "a-token-of-twenty-chars")
    .replace(
        "[channels.services.push]",
        '[[channels.services]]\nid = "cards"\nname = "社保卡"\n\n[[channels.services]]\n'
        'id = "loans"\nname = "贷款"\nexpect = [{ during = "freeze", state = "down" }]\n'
        "[channels.services.push]",
    )
)


async def test_a_push_service_has_mismatch_series_and_they_show_its_incident(
    tmp_path: Path,
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from monitor.clock import ReplayClock
    from monitor.kinds.http import Prober
    from monitor.metrics import Metrics
    from monitor.observation import Observation
    from monitor.pipeline import Pipeline
    from monitor.store import Store

    plan = Plan(load_config(write(tmp_path, OBSERVED_PLAN)))
    clock = ReplayClock(datetime(2026, 12, 19, 12, tzinfo=SHANGHAI))
    store = Store(tmp_path / "monitor.db")
    try:
        pipeline = Pipeline(plan, store, clock, Prober())
        metrics = Metrics(plan, pipeline, clock, store=store)
        pipeline.listeners = (metrics,)

        def mismatch() -> dict[tuple[str, str, str], float]:
            text = metrics.render().decode()
            return {
                (s.labels["channel"], s.labels["business"], s.labels["direction"]): s.value
                for family in text_string_to_metric_families(text)
                if family.name == "channel_monitor_mismatch"
                for s in family.samples
            }

        before = mismatch()
        assert before[("hall", "loans", "unexpected_up")] == 0
        assert before[("portal", "fund", "unexpected_up")] == 0
        assert not any(key[1] == "cards" for key in before)  # observed by nobody
        for _ in range(2):  # the hall says it is serving during the freeze, twice
            await pipeline.judge(
                plan.service("hall", "loans"),
                Observation(at=clock.now(), serving=True, reason="the channel reported its state"),
            )
            clock.advance(timedelta(seconds=30))
        after = mismatch()
        assert after[("hall", "loans", "unexpected_up")] == 1
        assert after[("hall", "loans", "unexpected_down")] == 0
    finally:
        store.close()


# --- 9. `plan --transitions` over the plan's whole span, grouped by instant ---------------------


def test_transitions_default_to_the_plans_whole_span(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(write(tmp_path, QUOTED_PLAN))
    code, out, err = run(capsys, "plan", "--config", path, "--transitions", "--format", "json")
    assert (code, err) == (0, ""), err
    ats = [item["at"] for item in json.loads(out)["transitions"]]
    assert ats[0] == "2026-12-18T17:00:00+08:00" and ats[-1] == "2026-12-21T08:00:00+08:00"
    # one end given: the other is the plan's
    code, out, _ = run(
        capsys, "plan", "--config", path, "--transitions", "--from", "2026-12-19", "--format",
        "json",
    )  # fmt: skip
    assert code == 0
    assert json.loads(out)["transitions"][0]["at"][:16] == "2026-12-19T09:00"


def test_transitions_of_one_instant_are_one_group(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(write(tmp_path, QUOTED_PLAN))
    code, out, _ = run(capsys, "plan", "--config", path, "--transitions")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("2026-12-17 17:00 .. 2026-12-22 08:00 (Asia/Shanghai): ")
    assert "6 change(s) at 4 instant(s)" in lines[0]
    rows = lines[3:]
    starts = [row for row in rows if row.startswith("2026-12-18 17:00")]
    assert len(starts) == 1  # the freeze's start: named once for both services
    following = rows[rows.index(starts[0]) + 1]
    assert following.startswith(" ") and "up -> down" in following


def test_a_recurring_plan_lists_a_capped_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = QUOTED_PLAN.replace(
        '[periods.freeze]\ntitle = "核心系统升级"\ntitle_en = "Core system upgrade"\n'
        'start = "2026-12-18T17:00:00"\nend = "2026-12-21T08:00:00"',
        '[periods.freeze]\nweekdays = ["saturday:sunday"]',
    )
    path = str(write(tmp_path, text))
    code, out, _ = run(capsys, "plan", "--config", path, "--transitions", "--from", "2020-01-01")
    assert code == 0
    assert out.splitlines()[0].startswith("2020-01-01 00:00 .. 2026-12-21 18:00")
    # the plan's last instant is more than ten years after --from: ten years are listed
    code, out, _ = run(capsys, "plan", "--config", path, "--transitions", "--from", "2000-01-01")
    assert code == 0
    assert out.splitlines()[0].startswith("2000-01-01 00:00 .. 2010-01-01 00:00")


# --- 11. the headline never names the main pause as "another" ----------------------------------


def test_the_headline_does_not_name_the_freeze_beside_itself(tmp_path: Path) -> None:
    from monitor.site.history import History
    from monitor.site.model import Snapshot, build
    from monitor.site.render import headline
    from monitor.site.words import Lang

    plan = Plan(load_config(write(tmp_path, QUOTED_PLAN)))
    # Inside the freeze, before the certificate window: the hall's service reopens earlier
    # (its window) than the portal's (the freeze's end), both paused by the freeze.
    when = datetime(2026, 12, 19, 8, tzinfo=SHANGHAI)
    model = build(plan, when, Snapshot(), History(when.date(), when.date()))
    assert model.headline.period is not None and model.headline.period.id == "freeze"
    assert model.headline.others == ()
    assert [len(part.services) for part in model.headline.parts] == [1]
    zh, en = (
        " ".join(str(line) for line in headline(model, Lang(code, SHANGHAI, when)))
        for code in ("zh", "en")
    )
    assert "核心系统升级" in zh and "另有" not in zh, zh
    assert "其中 1 项业务预计 " in zh and "12月19日 09:00（北京时间）</time>恢复办理" in zh
    assert "Core system upgrade" in en and "more service" not in en, en
    assert "Of these, 1 service(s) are planned to reopen " in en


# --- 7. a push's answer: the push and the incident apart --------------------------------------


async def test_a_push_down_in_the_freeze_matches_the_plan_while_the_incident_is_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import aiohttp

    from monitor.clock import ReplayClock
    from monitor.daemon import Daemon

    token = "a-token-of-twenty-chars"
    monkeypatch.setenv("FH_HALL6_PUSH_TOKEN", token)
    monkeypatch.setenv("FH_PORTAL_URL", "http://127.0.0.1:9/")
    plan = Plan(load_config(write(tmp_path, QUOTED_PLAN)))
    clock = ReplayClock(datetime(2026, 12, 20, 12, tzinfo=SHANGHAI))  # frozen, no window
    daemon = Daemon(plan, tmp_path / "monitor.db", tmp_path / "site", port=0, clock=clock)
    await daemon.start(schedule=False)
    try:
        url = f"http://127.0.0.1:{daemon.port}/push/hall/fund"
        headers = {"Authorization": f"Bearer {token}"}
        answers = []
        async with aiohttp.ClientSession() as session:
            for body in ('{"serving": true}', '{"serving": true}', '{"serving": false}'):
                async with session.post(url, data=body, headers=headers) as response:
                    assert response.status == 202
                    answers.append(await response.json())
        opened, down = answers[1], answers[2]
        assert opened["matches_plan"] is False
        assert opened["incident"] == {"open": True, "direction": "unexpected_up"}
        assert down["serving"] is False and down["expected"] == "down"
        assert down["matches_plan"] is True
        assert down["incident"] == {"open": True, "direction": "unexpected_up"}
        assert down["verdict"] == "unexpected_up"  # kept for pushers written against it
        assert down["accepted"] is True
    finally:
        await daemon.stop()


def test_the_push_command_says_the_push_and_the_incident_apart() -> None:
    from monitor.cli.push import _answer

    said = _answer(
        {
            "serving": False,
            "expected": "down",
            "matches_plan": True,
            "incident": {"open": True, "direction": "unexpected_up"},
            "verdict": "unexpected_up",
        }
    )
    assert said.startswith(
        "this push: not serving, expected down, matches the plan; "
        "incident still open (unexpected_up) / 本次推送符合计划"
    )
    assert _answer({"verdict": "ok"}) == "verdict ok"  # an older monitor's answer


# --- 8. the reload log says what moved ---------------------------------------------------------


def test_moving_the_freezes_end_is_told_in_the_reload_summary(tmp_path: Path) -> None:
    from monitor.plan.change import PlanChange

    old = Plan(load_config(write(tmp_path, QUOTED_PLAN, "old.toml")))
    later = QUOTED_PLAN.replace('end = "2026-12-21T08:00:00"', 'end = "2026-12-22T08:00:00"')
    new = Plan(load_config(write(tmp_path, later, "new.toml")))
    # Two days before the old end: nothing is expected otherwise now, but within the week.
    change = PlanChange.between(old, new, datetime(2026, 12, 19, 12, tzinfo=SHANGHAI))
    assert change.expecting == frozenset()
    assert change.expecting_soon == {("portal", "fund"), ("hall", "fund")}
    assert [pid for pid, _, _ in change.moved] == ["freeze"]
    summary = change.summary()
    assert "0 now expected otherwise, 2 expected otherwise within 7 days" in summary
    assert "(hall/fund, portal/fund)" in summary
    assert (
        "period freeze moved: 2026-12-18 17:00 .. 2026-12-21 08:00 -> "
        "2026-12-18 17:00 .. 2026-12-22 08:00"
    ) in summary
    # A month before: the freeze still moved, though no service changes within the week.
    early = PlanChange.between(old, new, datetime(2026, 11, 19, tzinfo=SHANGHAI))
    assert early.expecting_soon == frozenset() and "period freeze moved" in early.summary()
    # Only the titles changed: nothing moved.
    retitled = Plan(
        load_config(write(tmp_path, QUOTED_PLAN.replace("核心系统升级", "升级"), "t.toml"))
    )
    assert PlanChange.between(old, retitled, datetime(2026, 12, 19, tzinfo=SHANGHAI)).moved == ()


# --- 10. the report's default range ends now; its reasons are the operators' ---------------------


def _pushed_store(tmp_path: Path, plan: Plan, times: list[datetime], reason: str) -> Path:
    """A store with the hall's pushes at `times`, judged as the pipeline does."""
    from monitor.judge import ServiceState, judge, thresholds_for, with_incident_id
    from monitor.observation import Observation
    from monitor.store import PendingObservation, Store

    db = tmp_path / "monitor.db"
    store = Store(db)
    try:
        ref = plan.service("hall", "loans")
        state = ServiceState()
        for when in times:
            observation = Observation(at=when, serving=True, reason=reason)
            expectation = plan.expected(ref, when)
            result = judge(
                state, expectation, plan.in_grace(ref, when), observation, thresholds_for(plan, ref)
            )
            store.add(PendingObservation(*ref.key, observation, expectation.state, result.counted))
            state = result.state
            for event in result.events:
                record = store.record_event(*ref.key, event)
                if event.kind == "opened":
                    state = with_incident_id(state, record.id)
        store.flush()
    finally:
        store.close()
    return db


def test_the_reports_default_range_ends_now_mid_hour(tmp_path: Path) -> None:
    from monitor.report import build_report, open_readonly

    plan = Plan(load_config(write(tmp_path, OBSERVED_PLAN)))
    start = datetime(2026, 12, 19, 20, 0, tzinfo=SHANGHAI)
    pushes = [start + timedelta(minutes=m) for m in range(0, 10)]
    db = _pushed_store(tmp_path, plan, pushes, "pushed: count 3")
    now = start + timedelta(minutes=10)  # ten minutes into the hour
    store = open_readonly(db)
    try:
        report = build_report(plan, store, now=now)
    finally:
        store.close()
    assert (report.start, report.end) == (start, now)
    [line] = [s for ch in report.channels for s in ch.services if s.ref.key == ("hall", "loans")]
    assert line.times.unobserved < 60, line.times.unobserved  # not the rest of the hour
    # a store whose data lies in the past keeps its own end
    store = open_readonly(db)
    try:
        later = build_report(plan, store, now=start + timedelta(days=3))
    finally:
        store.close()
    assert later.end == start + timedelta(hours=1)


def test_the_report_keeps_what_the_channel_pushed(tmp_path: Path) -> None:
    from monitor.report import build_report, open_readonly
    from monitor.report.formats import as_json, as_text

    plan = Plan(load_config(write(tmp_path, OBSERVED_PLAN)))
    start = datetime(2026, 12, 19, 20, 0, tzinfo=SHANGHAI)  # frozen: an incident opens
    db = _pushed_store(tmp_path, plan, [start, start + timedelta(minutes=1)], "pushed: count 3")
    store = open_readonly(db)
    try:
        report = build_report(plan, store, start, start + timedelta(hours=1), now=start)
    finally:
        store.close()
    data = as_json(report)
    incidents = [i for ch in data["channels"] for s in ch["services"] for i in s["incidents"]]
    assert incidents and incidents[0]["reason_zh"] == "渠道推送：count 3"
    assert incidents[0]["reason"] == "the channel pushed: count 3"
    assert "the channel pushed: count 3" in as_text(report)

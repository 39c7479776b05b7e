"""The plan file's validation: every mistake gets its own precise, actionable message.

Each message must name the file, the key path (with the channel and service ids where they
help), quote the offending value and say what was expected. All mistakes of one file are
reported at once, and none of them reaches the user as a traceback.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.cli import main
from monitor.fields import format_duration, parse_duration
from monitor.kinds import KINDS
from monitor.kinds.browser import BrowserProbe
from monitor.kinds.http import HttpProbe, Probe
from monitor.kinds.prometheus import PrometheusProbe
from monitor.plan import Plan
from monitor.plan.errors import ConfigError
from monitor.plan.load import load_config, validate_config
from monitor.plan.schema import PlanConfig, Service

# A small, valid plan. Every bad config below is this text with one mistake put in, so each
# test shows exactly the one change that breaks it.
BASE = """\
[periods.freeze]
title = "停机切换"
start = 2022-06-22T18:00:00
end = 2022-07-25T08:30:00

[[channels]]
id = "hubei-portal"
name = "湖北政务服务网"
kind = "web"
group = "online"

[[channels.services]]
id = "pension"
name = "企业职工养老保险"
expect = [{ during = "freeze", state = "down" }]
"""

CHANNEL = BASE[BASE.index("[[channels]]") :]
SERVICE = BASE[BASE.index("[[channels.services]]") :]
CHANNEL_HEAD = BASE[BASE.index("[[channels]]") : BASE.index("[[channels.services]]")]

PORTAL = '(channel "hubei-portal")'
PENSION = '(channel "hubei-portal", service "pension")'


def with_monitor(lines: str, text: str = BASE) -> str:
    return f"[monitor]\n{lines}\n\n{text}"


def replaced(old: str, new: str, text: str = BASE) -> str:
    assert text.count(old) == 1, f"the test's edit {old!r} must match exactly once"
    return text.replace(old, new)


def with_probe(lines: str) -> str:
    return f"{BASE}\n[channels.services.probe]\n{lines}\n"


def with_period(lines: str) -> str:
    return f"[periods.office-hours]\n{lines}\n\n{BASE}"


def write(tmp_path: Path, text: str, name: str = "plan.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(tmp_path: Path, text: str) -> tuple[Path, list[str]]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = caught.value.problems
    assert problems, "a ConfigError must carry at least one problem"
    assert str(caught.value) == "\n".join(problems)
    return path, problems


def only_problem(tmp_path: Path, text: str) -> tuple[Path, str]:
    path, problems = problems_of(tmp_path, text)
    assert len(problems) == 1, problems
    message = problems[0]
    assert message.startswith(f"{path}: "), message
    assert "Traceback" not in message
    return path, message


def test_base_plan_is_valid(tmp_path: Path) -> None:
    """The starting point of every bad config below is itself fine."""
    config = load_config(write(tmp_path, BASE))
    assert [c.id for c in config.channels] == ["hubei-portal"]
    assert config.periods["freeze"].start.isoformat() == "2022-06-22T18:00:00+08:00"


# --- one mistake, one message ----------------------------------------------------------------


def test_wrong_type(tmp_path: Path) -> None:
    path, message = only_problem(tmp_path, with_monitor('failure_threshold = "two"'))
    assert message.startswith(f"{path}: monitor.failure_threshold: ")
    assert 'got "two"' in message
    assert "valid integer" in message


def test_wrong_type_for_a_duration(tmp_path: Path) -> None:
    path, message = only_problem(tmp_path, with_monitor("interval = 60"))
    assert message.startswith(f"{path}: monitor.interval: ")
    assert "got 60" in message
    assert 'expected a duration string such as "30s"' in message


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    path, message = only_problem(tmp_path, replaced("expect = [", "expcet = ["))
    assert message.startswith(f"{path}: channels[0].services[0].expcet {PENSION}: ")
    assert 'unknown key "expcet"' in message
    assert 'did you mean "expect"?' in message
    assert "allowed keys: id, name, name_en, note, note_en, default, expect, probe" in message


def test_unknown_key_in_monitor_and_period(tmp_path: Path) -> None:
    text = with_monitor(
        'timzone = "UTC"', replaced("[periods.freeze]", "[periods.freeze]\nweekday = []")
    )
    path, problems = problems_of(tmp_path, text)
    assert len(problems) == 2, problems
    monitor, period = sorted(problems)
    assert monitor.startswith(f"{path}: monitor.timzone: ")
    assert 'did you mean "timezone"?' in monitor
    assert period.startswith(f"{path}: periods.freeze.weekday: ")
    assert 'did you mean "weekdays"?' in period
    # `id` is filled in from the table name; the user never writes it, so it is not offered.
    assert "allowed keys: title, title_en, start, end, weekdays," in period
    assert " id," not in period


def test_unknown_period(tmp_path: Path) -> None:
    path, message = only_problem(tmp_path, replaced('during = "freeze"', 'during = "frezee"'))
    assert message.startswith(f"{path}: channels[0].services[0].expect[0].during {PENSION}: ")
    assert 'unknown period "frezee"' in message
    assert 'did you mean "freeze"?' in message
    assert "expected one of the periods defined under [periods]: freeze" in message


def test_end_before_start(tmp_path: Path) -> None:
    text = replaced("end = 2022-07-25T08:30:00", "end = 2022-06-01T08:30:00")
    path, message = only_problem(tmp_path, text)
    assert message.startswith(f"{path}: periods.freeze: ")
    assert "end 2022-06-01T08:30:00+08:00" in message
    assert "is not after start 2022-06-22T18:00:00+08:00" in message


def test_end_equal_to_start(tmp_path: Path) -> None:
    """An empty period is as wrong as a reversed one: the end is exclusive."""
    text = replaced("end = 2022-07-25T08:30:00", "end = 2022-06-22T18:00:00")
    _, message = only_problem(tmp_path, text)
    assert "end 2022-06-22T18:00:00+08:00 is not after start 2022-06-22T18:00:00+08:00" in message


def test_bad_regex(tmp_path: Path) -> None:
    text = with_probe('url = "https://zwfw.hubei.gov.cn/"\nbody_not_matches = "(系统维护"')
    path, message = only_problem(tmp_path, text)
    prefix = f"{path}: channels[0].services[0].probe.body_not_matches {PENSION}: "
    assert message.startswith(prefix)
    assert 'got "(系统维护"' in message
    assert "expected a valid regular expression" in message


def test_bad_zone(tmp_path: Path) -> None:
    path, message = only_problem(tmp_path, with_monitor('timezone = "Asia/Shanghia"'))
    assert message.startswith(f"{path}: monitor.timezone: ")
    assert 'got "Asia/Shanghia"' in message
    assert 'expected an IANA time zone name such as "Asia/Shanghai"' in message


def test_bad_period_location(tmp_path: Path) -> None:
    path, message = only_problem(tmp_path, with_period('location = "Europe/Lodnon"'))
    assert message.startswith(f"{path}: periods.office-hours.location: ")
    assert 'got "Europe/Lodnon"' in message
    assert "IANA time zone" in message


def test_duplicate_channel_id(tmp_path: Path) -> None:
    path, message = only_problem(tmp_path, BASE + "\n" + CHANNEL)
    assert message.startswith(f"{path}: channels[1].id {PORTAL}: ")
    assert 'duplicate channel id "hubei-portal"' in message
    assert "already used by channels[0]" in message


def test_duplicate_service_id(tmp_path: Path) -> None:
    path, message = only_problem(tmp_path, BASE + "\n" + SERVICE)
    assert message.startswith(f"{path}: channels[0].services[1].id {PENSION}: ")
    assert 'duplicate service id "pension" in this channel' in message
    assert "already used by services[0]" in message


def test_same_service_id_in_two_channels_is_fine(tmp_path: Path) -> None:
    other = replaced('id = "hubei-portal"', 'id = "ehb-app"', CHANNEL)
    config = load_config(write(tmp_path, BASE + "\n" + other))
    assert [(c.id, c.services[0].id) for c in config.channels] == [
        ("hubei-portal", "pension"),
        ("ehb-app", "pension"),
    ]


def test_bad_service_id_characters(tmp_path: Path) -> None:
    path, message = only_problem(tmp_path, replaced('id = "pension"', 'id = "Pension_1"'))
    assert message.startswith(
        f'{path}: channels[0].services[0].id (channel "hubei-portal", service "Pension_1"): '
    )
    assert 'got "Pension_1"' in message
    assert "expected an id of lower-case letters, digits and hyphens ([a-z0-9-]+)" in message


def test_bad_channel_id_characters(tmp_path: Path) -> None:
    path, message = only_problem(tmp_path, replaced('id = "hubei-portal"', 'id = "湖北 portal"'))
    assert message.startswith(f'{path}: channels[0].id (channel "湖北 portal"): ')
    assert 'got "湖北 portal"' in message
    assert "[a-z0-9-]+" in message


def test_bad_period_id_characters(tmp_path: Path) -> None:
    text = replaced(
        "[periods.freeze]", "[periods.Cert_Window]\nstart = 2022-06-23T09:00:00\n\n[periods.freeze]"
    )
    path, message = only_problem(tmp_path, text)
    assert message.startswith(f"{path}: periods.Cert_Window: ")
    assert 'period id "Cert_Window"' in message
    assert "[a-z0-9-]+" in message


def test_bad_duration(tmp_path: Path) -> None:
    path, message = only_problem(tmp_path, with_monitor('interval = "5 minutes"'))
    assert message.startswith(f"{path}: monitor.interval: ")
    assert 'got "5 minutes"' in message
    assert 'expected a duration such as "30s", "10m" or "2h" (units ms, s, m, h, d)' in message


def test_zero_interval(tmp_path: Path) -> None:
    path, message = only_problem(tmp_path, with_monitor('interval = "0s"'))
    assert message.startswith(f"{path}: monitor.interval: ")
    assert 'got "0s"' in message
    assert "expected a duration of at least 1s" in message


def test_bad_probe_duration(tmp_path: Path) -> None:
    text = with_probe('url = "https://zwfw.hubei.gov.cn/"\ntimeout = "ten seconds"')
    path, message = only_problem(tmp_path, text)
    assert message.startswith(f"{path}: channels[0].services[0].probe.timeout {PENSION}: ")
    assert 'got "ten seconds"' in message
    assert "expected a duration" in message


def test_zero_threshold(tmp_path: Path) -> None:
    path, message = only_problem(tmp_path, with_monitor("success_threshold = 0"))
    assert message.startswith(f"{path}: monitor.success_threshold: ")
    assert "got 0" in message
    assert "greater than or equal to 1" in message


def test_bad_state_literal(tmp_path: Path) -> None:
    path, message = only_problem(tmp_path, replaced('state = "down"', 'state = "closed"'))
    assert message.startswith(f"{path}: channels[0].services[0].expect[0].state {PENSION}: ")
    assert 'got "closed"' in message
    assert "expected one of 'up', 'down' or 'any'" in message


def test_bad_default_state(tmp_path: Path) -> None:
    text = replaced('name = "企业职工养老保险"', 'name = "企业职工养老保险"\ndefault = "open"')
    path, message = only_problem(tmp_path, text)
    assert message.startswith(f"{path}: channels[0].services[0].default {PENSION}: ")
    assert 'got "open"' in message
    assert "expected one of 'up', 'down' or 'any'" in message


def test_bad_kind(tmp_path: Path) -> None:
    path, message = only_problem(tmp_path, replaced('kind = "web"', 'kind = "website"'))
    assert message.startswith(f"{path}: channels[0].kind {PORTAL}: ")
    assert 'got "website"' in message
    assert "expected one of 'web', 'app', 'wechat', 'alipay', 'tax', 'platform' or 'offline'" in (
        message
    )


def test_bad_group(tmp_path: Path) -> None:
    path, message = only_problem(tmp_path, replaced('group = "online"', 'group = "both"'))
    assert message.startswith(f"{path}: channels[0].group {PORTAL}: ")
    assert 'got "both"' in message
    assert "expected one of 'online' or 'offline'" in message


def test_channel_with_empty_services(tmp_path: Path) -> None:
    path, message = only_problem(tmp_path, CHANNEL_HEAD + "services = []\n")
    assert message == f"{path}: channels[0].services {PORTAL}: expected at least one entry"


def test_channel_without_services(tmp_path: Path) -> None:
    path, message = only_problem(tmp_path, CHANNEL_HEAD)
    assert message == f"{path}: channels[0].services {PORTAL}: missing required key"


def test_time_of_day_25(tmp_path: Path) -> None:
    text = with_period('times = [{ start_time = "09:00", end_time = "25:00" }]')
    path, message = only_problem(tmp_path, text)
    assert message.startswith(f"{path}: periods.office-hours.times[0].end_time: ")
    assert 'got "25:00"' in message
    assert 'expected a time of day between "00:00" and "24:00"' in message


def test_time_of_day_not_hh_mm(tmp_path: Path) -> None:
    text = with_period('times = [{ start_time = "9:00", end_time = "17:00" }]')
    path, message = only_problem(tmp_path, text)
    assert message.startswith(f"{path}: periods.office-hours.times[0].start_time: ")
    assert 'got "9:00"' in message
    assert 'expected a time of day "HH:MM"' in message


def test_times_end_not_after_start(tmp_path: Path) -> None:
    text = with_period('times = [{ start_time = "17:00", end_time = "09:00" }]')
    path, message = only_problem(tmp_path, text)
    assert message == f"{path}: periods.office-hours.times[0]: expected end_time after start_time"


def test_bad_weekday_name(tmp_path: Path) -> None:
    path, message = only_problem(tmp_path, with_period('weekdays = ["mondy:friday"]'))
    assert message.startswith(f"{path}: periods.office-hours.weekdays: ")
    assert '"mondy:friday"' in message
    assert "expected a name or number (monday, tuesday, wednesday" in message


def test_reversed_weekday_range(tmp_path: Path) -> None:
    _, message = only_problem(tmp_path, with_period('weekdays = ["friday:monday"]'))
    assert "periods.office-hours.weekdays: " in message
    assert 'expected a range "a:b" with a not after b, got "friday:monday"' in message


def test_day_of_month_zero(tmp_path: Path) -> None:
    _, message = only_problem(tmp_path, with_period("days_of_month = [0]"))
    assert "periods.office-hours.days_of_month: got [0]: " in message
    assert "expected a value between -31 and 31" in message


def test_non_http_probe_url_is_not_echoed(tmp_path: Path) -> None:
    secret = "ftp://monitor:s3cret-token@zwfw.hubei.gov.cn/health?key=abc123"
    path, message = only_problem(tmp_path, with_probe(f'url = "{secret}"'))
    assert message == (
        f"{path}: channels[0].services[0].probe.url {PENSION}: expected an http:// or https:// URL"
    )
    for part in ("s3cret", "token", "abc123", "ftp://", "zwfw.hubei.gov.cn"):
        assert part not in message


def test_bad_expect_status(tmp_path: Path) -> None:
    text = with_probe('url = "https://zwfw.hubei.gov.cn/"\nexpect_status = [200, 700]')
    path, message = only_problem(tmp_path, text)
    assert message.startswith(f"{path}: channels[0].services[0].probe.expect_status[1] {PENSION}: ")
    assert "got 700" in message
    assert "less than or equal to 599" in message


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    text = replaced('kind = "web"', "kind = web")
    line = text.splitlines().index("kind = web") + 1
    path, message = only_problem(tmp_path, text)
    assert message.startswith(f"{path}: TOML syntax error: ")
    assert f"line {line}" in message


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "gbk.toml"
    path.write_bytes(BASE.encode("gbk"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    [message] = caught.value.problems
    assert message.startswith(f"{path}: the file is not UTF-8 text (")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    [message] = caught.value.problems
    assert message.startswith(f"{path}: cannot read the plan file")


def test_missing_required_key(tmp_path: Path) -> None:
    path, message = only_problem(tmp_path, replaced('group = "online"\n', ""))
    assert message == f"{path}: channels[0].group {PORTAL}: missing required key"


def test_missing_channels(tmp_path: Path) -> None:
    path, message = only_problem(tmp_path, '[monitor]\ntitle = "空"\n')
    assert message == f"{path}: channels: missing required key"


def test_milestone_without_title(tmp_path: Path) -> None:
    path, message = only_problem(tmp_path, BASE + "\n[[milestones]]\nat = 2022-07-31\n")
    assert message == f"{path}: milestones[0].title: missing required key"


def test_distinct_mistakes_give_distinct_messages(tmp_path: Path) -> None:
    """At least 15 different mistakes, each with its own message (not one generic text)."""
    texts = [
        with_monitor('failure_threshold = "two"'),
        replaced("expect = [", "expcet = ["),
        replaced('during = "freeze"', 'during = "frezee"'),
        replaced("end = 2022-07-25T08:30:00", "end = 2022-06-01T08:30:00"),
        with_probe('url = "https://a.example/"\nbody_matches = "(x"'),
        with_monitor('timezone = "Asia/Shanghia"'),
        BASE + "\n" + CHANNEL,
        BASE + "\n" + SERVICE,
        replaced('id = "pension"', 'id = "Pension_1"'),
        with_monitor('interval = "5 minutes"'),
        with_monitor("success_threshold = 0"),
        replaced('state = "down"', 'state = "closed"'),
        replaced('kind = "web"', 'kind = "website"'),
        CHANNEL_HEAD + "services = []\n",
        with_period('times = [{ start_time = "09:00", end_time = "25:00" }]'),
        with_period('weekdays = ["mondy"]'),
        with_probe('url = "ftp://a.example/"'),
        replaced('kind = "web"', "kind = web"),
        replaced('group = "online"\n', ""),
    ]
    messages = []
    for index, text in enumerate(texts):
        folder = tmp_path / str(index)
        folder.mkdir()
        _, message = only_problem(folder, text)
        messages.append(message.split(": ", 1)[1])  # without the file name
    assert len(set(messages)) == len(texts) >= 15, messages


# --- every mistake at once -------------------------------------------------------------------

MANY = f"""\
[monitor]
timezone = "Asia/Shanghia"
interval = "5 minutes"
grace = "soon"

[periods.freeze]
start = 2022-06-22T18:00:00
end = 2022-06-01T08:30:00

[periods.office-hours]
weekdays = ["mondy:friday"]
times = [{{ start_time = "09:00", end_time = "25:00" }}]

[[channels]]
id = "hubei-portal"
name = "湖北政务服务网"
kind = "website"
group = "online"

[[channels.services]]
id = "pension"
name = "企业职工养老保险"
expcet = [{{ during = "freeze", state = "down" }}]
expect = [{{ during = "frezee", state = "down" }}, {{ during = "office-hours", state = "shut" }}]

[[channels.services]]
id = "pension"
name = "again"

[channels.services.probe]
url = "gopher://secret-host/"
body_matches = "[unclosed"

{CHANNEL_HEAD}services = []
"""


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    path, problems = problems_of(tmp_path, MANY)
    expected = [
        'monitor.timezone: got "Asia/Shanghia"',
        'monitor.interval: got "5 minutes"',
        'monitor.grace: got "soon"',
        "periods.freeze: end 2022-06-01T08:30:00+08:00 is not after start",
        'periods.office-hours.weekdays: got ["mondy:friday"]',
        'periods.office-hours.times[0].end_time: got "25:00"',
        f'channels[0].kind {PORTAL}: got "website"',
        f'channels[0].services[0].expcet {PENSION}: unknown key "expcet"',
        f'channels[0].services[0].expect[1].state {PENSION}: got "shut"',
        f'channels[0].services[0].expect[0].during {PENSION}: unknown period "frezee"',
        f'channels[0].services[1].id {PENSION}: duplicate service id "pension"',
        f"channels[0].services[1].probe.url {PENSION}: expected an http:// or https:// URL",
        f'channels[0].services[1].probe.body_matches {PENSION}: got "[unclosed"',
        f'channels[1].id {PORTAL}: duplicate channel id "hubei-portal"',
        f"channels[1].services {PORTAL}: expected at least one entry",
    ]
    for fragment in expected:
        hits = [p for p in problems if p.startswith(f"{path}: {fragment}")]
        assert len(hits) == 1, (fragment, problems)
    assert len(problems) == len(expected), problems
    assert not any("secret-host" in p for p in problems)


def test_validate_config_reports_field_and_reference_errors_together() -> None:
    data = {
        "periods": {"freeze": {"start": "tomorrow"}},
        "channels": [
            {
                "id": "x",
                "name": "X",
                "kind": "web",
                "group": "online",
                "services": [{"id": "s", "name": "S", "expect": [{"during": "nope"}]}],
            }
        ],
    }
    with pytest.raises(ConfigError) as caught:
        validate_config(data, "inline.toml")
    problems = caught.value.problems
    assert len(problems) == 3, problems
    assert problems[0].startswith('inline.toml: periods.freeze.start: got "tomorrow": ')
    assert problems[1] == (
        'inline.toml: channels[0].services[0].expect[0].state (channel "x", service "s"): '
        "missing required key"
    )
    assert problems[2].startswith(
        'inline.toml: channels[0].services[0].expect[0].during (channel "x", service "s"): '
        'unknown period "nope"; expected one of the periods defined under [periods]: freeze'
    )


# --- through the command line ----------------------------------------------------------------


def coverage(**counts: int) -> str:
    """`validate`'s coverage words: every kind of the registry in its order, then `schedule`,
    so a new kind shows up here without an edit."""
    kinds = [*KINDS, "schedule"]
    return "coverage 观测方式: " + ", ".join(f"{kind} {counts.get(kind, 0)}" for kind in kinds)


def run_validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["validate", "--config", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_validate_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, with_probe('url = "https://zwfw.hubei.gov.cn/"'))
    code, out, err = run_validate(path, capsys)
    assert code == 0
    assert err == ""
    assert out == (
        f"{path}: OK: 1 channels, 1 services (1 probed), 1 periods, 0 milestones\n"
        f"{coverage(http=1)} (schedule = not observed 仅按计划)\n"
    )


def test_cli_validate_unknown_period(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, replaced('during = "freeze"', 'during = "frezee"'))
    code, out, err = run_validate(path, capsys)
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert lines[0].startswith(f"{path}: channels[0].services[0].expect[0].during {PENSION}: ")
    assert 'unknown period "frezee" (did you mean "freeze"?)' in lines[0]
    assert lines[1:] == ["1 problem found; nothing was done."]
    assert "Traceback" not in err


def test_cli_validate_lists_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, MANY)
    code, out, err = run_validate(path, capsys)
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert lines[-1] == "15 problems found; nothing was done."
    assert all(line.startswith(f"{path}: ") for line in lines[:-1])
    assert len(lines) == 16
    assert "Traceback" not in err
    assert "secret-host" not in err


def test_cli_validate_bad_zone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, with_monitor('timezone = "Asia/Shanghia"'))
    code, _, err = run_validate(path, capsys)
    assert code == 2
    assert f'{path}: monitor.timezone: got "Asia/Shanghia"' in err
    assert "Traceback" not in err


def test_cli_validate_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[[channels]\nid = 1\n")
    code, out, err = run_validate(path, capsys)
    assert code == 2
    assert out == ""
    assert err.startswith(f"{path}: TOML syntax error: ")
    assert "line 1" in err
    assert "Traceback" not in err


def test_cli_validate_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.toml"
    code, _, err = run_validate(path, capsys)
    assert code == 2
    assert err.startswith(f"{path}: cannot read the plan file")
    assert "Traceback" not in err


def test_cli_validate_hides_probe_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, with_probe('url = "file:///etc/shadow?token=zzz"'))
    code, out, err = run_validate(path, capsys)
    assert code == 2
    assert "expected an http:// or https:// URL" in err
    assert "zzz" not in err + out
    assert "/etc/shadow" not in err + out


# --- defaults --------------------------------------------------------------------------------

MINIMAL = """\
[[channels]]
id = "hall"
name = "社保办事大厅"
kind = "offline"
group = "offline"

[[channels.services]]
id = "pension"
name = "养老保险"
"""


def test_minimal_config_takes_the_documented_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert isinstance(config, PlanConfig)
    monitor = config.monitor
    assert monitor.timezone == "Asia/Shanghai"
    assert monitor.tz == ZoneInfo("Asia/Shanghai")
    assert monitor.interval == timedelta(seconds=60)
    assert monitor.timeout == timedelta(seconds=10)
    assert monitor.grace == timedelta(minutes=5)
    assert monitor.failure_threshold == 2
    assert monitor.success_threshold == 2
    assert config.periods == {}
    assert config.milestones == ()
    [channel] = config.channels
    assert (channel.id, channel.name, channel.kind, channel.group) == (
        "hall",
        "社保办事大厅",
        "offline",
        "offline",
    )
    assert channel.name_en == channel.note == channel.note_en == ""
    [service] = channel.services
    assert service.default == "up"
    assert service.expect == ()
    assert service.probe is None


def test_minimal_config_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, MINIMAL)
    code, out, err = run_validate(path, capsys)
    assert (code, err) == (0, "")
    first, second = out.splitlines()
    assert first == f"{path}: OK: 1 channels, 1 services (0 probed), 0 periods, 0 milestones"
    assert second.startswith(coverage(schedule=1))


def test_shortest_interval_and_zero_grace_are_valid(tmp_path: Path) -> None:
    text = with_monitor('interval = "1s"\ntimeout = "1s"\ngrace = "0s"', MINIMAL)
    monitor = load_config(write(tmp_path, text)).monitor
    assert monitor.interval == timedelta(seconds=1)
    assert monitor.timeout == timedelta(seconds=1)
    assert monitor.grace == timedelta(0)


def test_probe_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, with_probe('url = "https://zwfw.hubei.gov.cn/"')))
    probe = config.channels[0].services[0].probe
    assert probe is not None
    assert probe.method == "GET"
    assert probe.headers == {}
    assert probe.follow_redirects is True
    assert probe.expect_status is None
    assert probe.interval is probe.timeout is probe.max_response_time is None
    assert "zwfw" not in repr(probe)


def test_local_datetimes_are_read_in_the_plan_zone(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, with_monitor('timezone = "Europe/London"')))
    freeze = config.periods["freeze"]
    assert freeze.start.utcoffset() == timedelta(hours=1)  # BST in June
    assert freeze.start.isoformat() == "2022-06-22T18:00:00+01:00"


def test_dates_and_offset_datetimes_in_periods(tmp_path: Path) -> None:
    text = replaced(
        "start = 2022-06-22T18:00:00\nend = 2022-07-25T08:30:00",
        "start = 2022-06-22\nend = 2022-07-25T00:30:00Z",
    )
    freeze = load_config(write(tmp_path, text)).periods["freeze"]
    assert freeze.start.isoformat() == "2022-06-22T00:00:00+08:00"
    assert freeze.end.astimezone(ZoneInfo("Asia/Shanghai")).isoformat() == (
        "2022-07-25T08:30:00+08:00"
    )


def test_period_ids_come_from_table_names(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, with_period('weekdays = ["monday:friday"]')))
    assert {key: p.id for key, p in config.periods.items()} == {
        "office-hours": "office-hours",
        "freeze": "freeze",
    }
    assert config.periods["office-hours"].recurring
    assert not config.periods["freeze"].recurring


# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value", "canonical"),
    [
        ("0s", timedelta(0), "0s"),
        ("1s", timedelta(seconds=1), "1s"),
        ("30s", timedelta(seconds=30), "30s"),
        ("10m", timedelta(minutes=10), "10m"),
        ("2h", timedelta(hours=2), "2h"),
        ("1d", timedelta(days=1), "1d"),
        ("500ms", timedelta(milliseconds=500), "500ms"),
        ("1h30m", timedelta(minutes=90), "1h30m"),
        ("90m", timedelta(minutes=90), "1h30m"),
        ("3600s", timedelta(hours=1), "1h"),
        ("1s500ms", timedelta(milliseconds=1500), "1s500ms"),
        ("1d2h3m4s5ms", timedelta(days=1, hours=2, minutes=3, seconds=4, milliseconds=5), None),
    ],
)
def test_parse_and_format_duration(text: str, value: timedelta, canonical: str | None) -> None:
    assert parse_duration(text) == value
    assert format_duration(value) == (canonical or text)
    assert parse_duration(format_duration(value)) == value


@pytest.mark.parametrize(
    "text", ["", "5", "m5", "1.5s", "-1s", "1y", "30s ", " 30s", "1S", "5 minutes", "s"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


@pytest.mark.parametrize("value", [None, 5, 1.5, ["1s"]])
def test_parse_duration_rejects_non_strings(value: object) -> None:
    with pytest.raises(ValueError, match="expected a duration string"):
        parse_duration(value)


def test_parse_duration_passes_timedelta_through() -> None:
    value = timedelta(seconds=7)
    assert parse_duration(value) is value


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=10**11))
def test_duration_round_trip_from_milliseconds(ms: int) -> None:
    value = timedelta(milliseconds=ms)
    text = format_duration(value)
    assert parse_duration(text) == value
    assert format_duration(parse_duration(text)) == text


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=999), st.sampled_from(["d", "h", "m", "s", "ms"])
        ),
        min_size=1,
        max_size=5,
        unique_by=lambda part: part[1],
    ).map(lambda parts: sorted(parts, key=lambda p: ["d", "h", "m", "s", "ms"].index(p[1])))
)
def test_duration_text_round_trip(parts: list[tuple[int, str]]) -> None:
    """Units in decreasing order, each at most once, as Prometheus writes durations."""
    text = "".join(f"{n}{unit}" for n, unit in parts)
    value = parse_duration(text)
    factor = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}
    assert value == timedelta(milliseconds=sum(n * factor[u] for n, u in parts))
    assert parse_duration(format_duration(value)) == value


SECRET_PLAN = """
[[channels]]
id = "a"
name = "A"
kind = "web"
group = "online"
[[channels.services]]
id = "s"
name = "S"
probe = "https://monitor:s3cret@zwfw.hubei.gov.cn/health"
[[channels.services]]
id = "t"
name = "T"
[channels.services.probe]
url = "https://zwfw.hubei.gov.cn/"
headers = "Bearer s3cret"
[[channels.services]]
id = "u"
name = "U"
[channels.services.probe]
url = "https://zwfw.hubei.gov.cn/"
headers = { Authorization = ["Bearer", "s3cret"] }
"""


def test_probe_values_are_never_quoted_in_errors(tmp_path: Path) -> None:
    """A probe written as a URL string, or headers of the wrong shape, may hold a token."""
    path = tmp_path / "plan.toml"
    path.write_text(SECRET_PLAN, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = info.value.problems
    assert len(problems) == 3
    assert all("s3cret" not in p and "Bearer" not in p for p in problems)
    assert (
        'channels[0].services[0].probe (channel "a", service "s"): expected a table' in problems[0]
    )
    assert "probe.headers (channel" in problems[1]
    assert "probe.headers.Authorization (channel" in problems[2]


def test_a_probe_shows_no_url_or_header_however_it_is_printed(tmp_path: Path) -> None:
    """`%s` in a log call and f-strings use `str`, not `repr`: both must hide the probe."""
    text = with_probe(
        'url = "https://zwfw.hubei.gov.cn/health?token=s3cret"\n'
        'headers = { Authorization = "Bearer s3cret" }'
    )
    ref = Plan(load_config(write(tmp_path, text))).services[0]
    probe = ref.service.probe
    assert probe is not None and "s3cret" in probe.url  # the secret is really there
    logged = logging.LogRecord("monitor", logging.INFO, __file__, 1, "probe %s", (probe,), None)
    shown_ways = (repr(probe), str(probe), f"{probe}", logged.getMessage(), str(ref.service))
    for shown in (*shown_ways, str(ref)):
        assert "s3cret" not in shown and "zwfw.hubei.gov.cn" not in shown, shown


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("follow_redirects", '"yes"'),
        ("expect_status", '["200"]'),
        ("interval", '"1m1m"'),
        ("interval", '"5s1m"'),
    ],
)
def test_probe_fields_are_not_coerced(tmp_path: Path, key: str, value: str) -> None:
    path = tmp_path / "plan.toml"
    plan = SECRET_PLAN.split('[[channels.services]]\nid = "s"')[0]
    plan += '[[channels.services]]\nid = "s"\nname = "S"\n[channels.services.probe]\n'
    plan += f'url = "https://zwfw.hubei.gov.cn/"\n{key} = {value}\n'
    path.write_text(plan, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"probe.{key}" in info.value.problems[0]


def test_threshold_given_as_string_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text('[monitor]\nfailure_threshold = "2"\n' + SECRET_PLAN.split("probe =")[0])
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        f'{path}: monitor.failure_threshold: got "2": input should be a valid integer'
    ]


# --- hostile plans (issue 10): each is refused at its key path, or works ------------------------

PROBE_PATH = f"channels[0].services[0].probe {PENSION}"
#: Marks the secret parts of the URLs and header values below: never in any message.
SECRET = "s3cret"


@pytest.mark.parametrize(
    ("lines", "where", "expected"),
    [
        # header values HTTP cannot carry
        (
            'url = "https://a.example/"\nheaders = { X-Token = "s3cret\\r\\nX-Evil: 1" }',
            "probe.headers.X-Token",
            "without control characters",
        ),
        (
            'url = "https://a.example/"\nheaders = { X-Token = "s3cret\\n" }',
            "probe.headers.X-Token",
            "without control characters",
        ),
        (
            'url = "https://a.example/"\nheaders = { X-Token = "s3cret\\u0000" }',
            "probe.headers.X-Token",
            "without control characters",
        ),
        (
            'url = "https://a.example/"\nheaders = { X-Token = "s3cret\\u0001" }',
            "probe.headers.X-Token",
            "without control characters",
        ),
        (
            f'url = "https://a.example/"\nheaders = {{ X-Token = "{SECRET * 2000}" }}',
            "probe.headers.X-Token",
            "at most 8192 bytes",
        ),
        # header names that are not RFC 9110 tokens
        ('url = "https://a.example/"\nheaders = { "" = "s3cret" }', 'probe.headers.""', "name"),
        (
            'url = "https://a.example/"\nheaders = { "X Token" = "s3cret" }',
            'probe.headers."X Token"',
            "no spaces",
        ),
        (
            'url = "https://a.example/"\nheaders = { "令牌" = "s3cret" }',
            'probe.headers."令牌"',
            "header name of letters, digits",
        ),
        (
            'url = "https://a.example/"\nheaders = { "X-A:b" = "s3cret" }',
            'probe.headers."X-A:b"',
            "header name",
        ),
        (
            'url = "https://a.example/"\nheaders = { '
            + ", ".join(f'X-{i} = "s3cret"' for i in range(101))
            + " }",
            "probe.headers",
            "at most 100 headers",
        ),
        # credentials twice: aiohttp refuses the request
        (
            'url = "https://user:s3cret@a.example/"\nheaders = { authorization = "Basic s3cret" }',
            "probe",
            "credentials in one place",
        ),
        # URLs aiohttp cannot parse or connect to
        ('url = "http://[::1:80/s3cret"', "probe.url", "well-formed"),
        ('url = "http://h:99999/s3cret"', "probe.url", "well-formed"),
        ('url = "http://:80/s3cret"', "probe.url", "well-formed"),
        ('url = "http://h:0/s3cret"', "probe.url", "port from 1 to 65535"),
        ('url = "http://h\\u0000s3cret/"', "probe.url", "without control characters"),
        ('url = "http://h/s3cret\\u0000"', "probe.url", "without control characters"),
        ('url = "http://%00s3cret/"', "probe.url", "host is a DNS name"),
        ('url = "http://s3cret..example/"', "probe.url", "host is a DNS name"),
        (f'url = "http://{SECRET * 11}.example/"', "probe.url", "at most 63 characters"),
        ('url = "https://xn--/s3cret"', "probe.url", "host name cannot be encoded"),
    ],
)
def test_probes_that_could_never_be_sent_are_refused(
    tmp_path: Path, lines: str, where: str, expected: str
) -> None:
    """Each of these validated before and then failed every probe (or `run` at start)."""
    path, message = only_problem(tmp_path, with_probe(lines))
    prefix = f"{path}: {PROBE_PATH}".replace(".probe ", f".{where} ")
    assert message.startswith(prefix + ": "), message
    assert expected in message, message
    assert SECRET not in message, message


@pytest.mark.parametrize(
    "lines",
    [
        'url = "https://例子.测试/办事?事项=社保"',  # an IDN host and a Chinese path
        'url = "http://[::1]:8080/"',
        'url = "http://127.0.0.1:65535/"',
        'url = "https://user:pass@a.example/"',  # credentials in the URL alone
        'url = "https://a.example/"\nheaders = { Authorization = "Basic dTpw" }',
        'url = "https://a.example/"\nheaders = { "X-A!#$%&\'*+.^_`|~" = "a\\tb 中文" }',
        'url = "https://a.example/"\nheaders = { '
        + ", ".join(f'X-{i} = "v"' for i in range(100))
        + " }",
    ],
)
def test_unusual_but_sendable_probes_are_valid(tmp_path: Path, lines: str) -> None:
    load_config(write(tmp_path, with_probe(lines)))


@pytest.mark.parametrize(
    ("lines", "where", "expected"),
    [
        ('grace = "99999999d"', "monitor.grace", "at most 366d"),
        ('grace = "367d"', "monitor.grace", "at most 366d"),
        ('interval = "99999999d"', "monitor.interval", "at most 1d"),
        ('timeout = "1d1s"', "monitor.timeout", "at most 1d"),
        ('grace = "9999999999999d"', "monitor.grace", "shorter duration"),
        (f'interval = "{"9" * 5000}s"', "monitor.interval", "shorter duration"),
        ('timezone = "Asia"', "monitor.timezone", "IANA time zone"),  # a folder of tzdata
        ('timezone = "zone.tab"', "monitor.timezone", "IANA time zone"),  # not a zone file
        (f'timezone = "{"a" * 300}"', "monitor.timezone", "IANA time zone"),  # name too long
        ('timezone = "Asia/"', "monitor.timezone", "IANA time zone"),
    ],
)
def test_monitor_values_that_used_to_crash_later(
    tmp_path: Path, lines: str, where: str, expected: str
) -> None:
    path, message = only_problem(tmp_path, with_monitor(lines))
    assert message.startswith(f"{path}: {where}: "), message
    assert expected in message, message


@pytest.mark.parametrize(
    ("line", "where"),
    [
        ('interval = "99999999d"', "interval"),
        ('timeout = "2d"', "timeout"),
        ('max_response_time = "99999999999999d"', "max_response_time"),
    ],
)
def test_probe_durations_are_bounded(tmp_path: Path, line: str, where: str) -> None:
    path, message = only_problem(tmp_path, with_probe(f'url = "https://a.example/"\n{line}'))
    assert message.startswith(f"{path}: {PROBE_PATH.replace('.probe ', f'.probe.{where} ')}: ")
    assert "expected a" in message and "duration" in message


def test_longest_durations_are_valid(tmp_path: Path) -> None:
    text = with_monitor('interval = "1d"\ntimeout = "1d"\ngrace = "366d"')
    monitor = load_config(write(tmp_path, text)).monitor
    assert (monitor.interval, monitor.grace) == (timedelta(days=1), timedelta(days=366))


def test_period_location_that_is_a_folder(tmp_path: Path) -> None:
    path, message = only_problem(tmp_path, with_period('location = "Asia"\nweekdays = ["monday"]'))
    assert message.startswith(f"{path}: periods.office-hours.location: ")


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("(?=系统)维护", "lookahead (?=...) cannot be used"),
        ("(?!正常)维护", "negative lookahead (?!...) cannot be used"),
        ("(?<=系统)维护", "lookbehind (?<=...) cannot be used"),
        ("(?<!正常)维护", "negative lookbehind (?<!...) cannot be used"),
        ("(维护)\\\\1", "backreferences such as \\1 cannot be used"),
        ("x{99999999999}", "repetition counts {n} of at most 1000"),
        ("x{1,1001}", "repetition counts {n} of at most 1000"),
        ("\\\\pL{100}", "expected a smaller pattern"),
        ("\\\\pL{1000}", "expected a smaller pattern"),
        ("a++", "RE2 syntax"),
        # each took RE2 seconds to minutes to refuse as too large; refused before compiling
        ("(?:a{1,1000}" * 50 + ")" * 50, "adding up to at most 2,000, got 50,000"),
        ("(a" * 1001 + ")" * 1001, "at most 2,000 characters, got 3,003"),
    ],
)
def test_body_patterns_re2_cannot_take_are_refused(
    tmp_path: Path, pattern: str, expected: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """RE2 matches in linear time; what it cannot take is refused with the reason, and RE2
    itself writes nothing to stderr."""
    text = with_probe(f'url = "https://a.example/"\nbody_not_matches = "{pattern}"')
    path, message = only_problem(tmp_path, text)
    assert message.startswith(
        f"{path}: {PROBE_PATH.replace('.probe ', '.probe.body_not_matches ')}"
    )
    assert expected in message, message
    assert capfd.readouterr().err == ""


def test_catastrophic_backtracking_and_deep_nesting_are_valid(tmp_path: Path) -> None:
    """Patterns that freeze a backtracking engine are harmless in RE2: accepted."""
    deep = "(" * 999 + "维护" + ")" * 999
    text = with_probe(
        f'url = "https://a.example/"\nbody_not_matches = "(a+)+$"\nbody_matches = "{deep}"'
    )
    probe = load_config(write(tmp_path, text)).channels[0].services[0].probe
    assert probe is not None and probe.body_not_matches == "(a+)+$"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (replaced("start = 2022-06-22T18:00:00", "start = 0001-01-01T00:00:00"), "start"),
        (replaced("end = 2022-07-25T08:30:00", "end = 9999-12-31T23:59:59"), "end"),
    ],
)
def test_period_instants_outside_the_supported_years(tmp_path: Path, text: str, where: str) -> None:
    path, message = only_problem(tmp_path, text)
    assert message.startswith(f"{path}: periods.freeze.{where}: ")
    assert "expected a date in the years the monitor works with (1900 to 8999)" in message


def test_milestone_dates_outside_the_supported_years(tmp_path: Path) -> None:
    text = BASE + '\n[[milestones]]\nat = 9999-12-31\ntitle = "末日"\n'
    path, message = only_problem(tmp_path, text)
    assert message.startswith(f"{path}: milestones[0].at: ")
    assert "expected a date in the years the monitor works with (1900 to 8999)" in message


HOSTILE_PLANS = {
    "header-crlf": with_probe('url = "https://a.example/"\nheaders = { X = "s3cret\\r\\n" }'),
    "bad-url": with_probe('url = "http://[::1:80/s3cret"'),
    "grace": with_monitor('grace = "99999999d"'),
    "zone-folder": with_monitor('timezone = "Asia"'),
    "huge-repeat": with_probe('url = "https://a.example/"\nbody_matches = "x{99999999999}"'),
    "lookahead": with_probe('url = "https://a.example/"\nbody_matches = "(?=a)"'),
    "too-large": with_probe('url = "https://a.example/"\nbody_matches = "\\\\pL{1000}"'),
}


@pytest.mark.parametrize("command", ["validate", "plan", "check", "render"])
@pytest.mark.parametrize("case", sorted(HOSTILE_PLANS))
def test_hostile_plans_exit_2_through_the_cli(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], command: str, case: str
) -> None:
    """Every command that loads the plan refuses it with the sentence, never a traceback."""
    path = write(tmp_path, HOSTILE_PLANS[case])
    args = [command, "--config", str(path)]
    if command == "render":
        args += ["--site", str(tmp_path / "site"), "--db", str(tmp_path / "m.db")]
    assert main(args) == 2
    out, err = capfd.readouterr()
    assert out == ""
    assert err.startswith(f"{path}: ") and "1 problem found" in err, err
    assert "Traceback" not in err and SECRET not in err


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        ("x = " + "[" * 100_000 + "]" * 100_000, "arrays or tables nest too deeply to read"),
        ("x = " + "{a=" * 5000 + "1" + "}" * 5000, "arrays or tables nest too deeply to read"),
        ("x = " + "9" * 5000, "a number in the plan file is too long to read"),
    ],
)
def test_toml_that_python_cannot_read_is_a_config_error(
    tmp_path: Path, head: str, expected: str
) -> None:
    """Before: RecursionError and ValueError tracebacks out of tomllib."""
    path, message = only_problem(tmp_path, f"{head}\n{BASE}")
    assert message == f"{path}: {expected}" + (
        "; expected a plan file" if "nest" in expected else " (thousands of digits)"
    )


@pytest.mark.parametrize(
    "text",
    [
        # offset datetimes: tomllib's datetime.timezone, not the compiled parser's own class
        "a = 2022-06-22T18:00:00+08:00\nb = [2022-06-22T10:00:00Z, 1979-05-27T07:32:00-07:00]\n"
        "c = { d = 2022-07-25T08:30:00+08:00 }\n[[e]]\nf = 2022-06-22T18:00:00.5+05:45\n",
        "a = 2022-06-22T18:00:00\nb = 2022-06-22\nc = 18:00:00\n",  # local: no zone
        "a = " + "[" * 100 + "1" + "]" * 100 + "\n",  # deeper than the compiled parser goes
        "a = 1.5e400\nb = -1e999\n",  # overflows a double: inf, as tomllib reads it
        'a = "\\u0000 \\U0001F600"\nb = 0x_ff\n',  # the escape; an invalid number below
    ],
)
def test_toml_reads_exactly_as_the_standard_library(text: str) -> None:
    """`parse_toml` reads with the compiled `rtoml` for speed; whatever it reads must equal
    `tomllib`'s result, zones included, and what it refuses is `tomllib`'s to decide."""
    import tomllib

    from monitor.plan.load import parse_toml

    try:
        expected = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        with pytest.raises(ConfigError) as caught:
            parse_toml(text.encode(), "p.toml", "plan file")
        assert caught.value.problems == [f"p.toml: TOML syntax error: {exc}"]
        return
    got = parse_toml(text.encode(), "p.toml", "plan file")
    assert got == expected

    def zones(value: object) -> list:
        if isinstance(value, dict):
            return [z for item in value.values() for z in zones(item)]
        if isinstance(value, list):
            return [z for item in value for z in zones(item)]
        return [type(value.tzinfo)] if isinstance(value, datetime) else []

    assert zones(got) == zones(expected)


def test_overlong_probe_url_is_refused(tmp_path: Path) -> None:
    url = f"https://a.example/{SECRET * 2000}"
    path, message = only_problem(tmp_path, with_probe(f'url = "{url}"'))
    assert message.startswith(f"{path}: {PROBE_PATH.replace('.probe ', '.probe.url ')}: ")
    assert "expected a URL of at most 8,192 characters" in message
    assert SECRET not in message


def test_ids_with_a_final_line_break_are_refused(tmp_path: Path) -> None:
    """`$` matches before a final line break: "pension\\n" passed as an id (and reached metrics
    labels and file names). Key paths show such keys escaped, on one line."""
    text = replaced('id = "pension"', 'id = "pension\\n"')
    text = text.replace("[periods.freeze]", '[periods."freeze\\n"]')
    text = text.replace('during = "freeze"', 'during = "freeze\\n"')
    path, problems = problems_of(tmp_path, text)
    assert problems == [
        f'{path}: channels[0].services[0].id (channel "hubei-portal", service "pension\\n"): '
        'got "pension\\n": expected an id of lower-case letters, digits and hyphens ([a-z0-9-]+)',
        f'{path}: periods."freeze\\n": period id "freeze\\n" must use only lower-case letters, '
        "digits and hyphens ([a-z0-9-]+)",
    ]


# --- kinds of observation (issue 11) -----------------------------------------------------------


def with_push(lines: str) -> str:
    return f"{BASE}\n[channels.services.push]\n{lines}\n"


def service_of(tmp_path: Path, text: str) -> Service:
    return load_config(write(tmp_path, text)).channels[0].services[0]


def test_each_kind_is_read_into_its_own_type(tmp_path: Path) -> None:
    http = service_of(tmp_path, with_probe('url = "https://a.example/"'))
    assert isinstance(http.probe, HttpProbe) and http.probe.kind == "http"
    assert http.observed_by == "http" and Probe is HttpProbe
    browser = service_of(tmp_path, with_probe('kind = "browser"\nurl = "https://a.example/"'))
    assert isinstance(browser.probe, BrowserProbe) and browser.observed_by == "browser"
    # a browser is slow and costly: it looks less often and waits longer unless told otherwise
    assert browser.probe.interval == timedelta(minutes=5)
    assert browser.probe.timeout == timedelta(seconds=30)
    query = 'kind = "prometheus"\nurl = "http://p.example:9090"\nquery = "up"\nserving_if = ">=2"'
    prometheus = service_of(tmp_path, with_probe(query))
    assert isinstance(prometheus.probe, PrometheusProbe)
    assert prometheus.probe.serving_if == ((">=", 2.0))
    assert str(prometheus.probe.serving_if) == ">= 2"
    assert prometheus.probe.no_data == "unknown"
    push = service_of(tmp_path, with_push('token = "0123456789abcdef"'))
    assert push.observed_by == "push" and push.push is not None
    assert push.push.within == timedelta(minutes=5)
    assert service_of(tmp_path, BASE).observed_by == "schedule"
    for service in (http, browser, prometheus, push):
        assert "a.example" not in repr(service.probe) and "0123" not in repr(service.push)


def test_browser_probe_keeps_its_own_interval(tmp_path: Path) -> None:
    text = with_probe('kind = "browser"\nurl = "https://a.example/"\ninterval = "1m"')
    config = load_config(write(tmp_path, text))
    ref = Plan(config).services[0]
    assert Plan(config).interval(ref) == timedelta(minutes=1)
    assert Plan(config).timeout(ref) == timedelta(seconds=30)


def test_monitor_chromium_path(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, with_monitor('chromium = "/opt/chromium/chrome"')))
    assert config.monitor.chromium == "/opt/chromium/chrome"
    assert load_config(write(tmp_path, BASE)).monitor.chromium is None


def test_json_conditions_are_kept_as_written(tmp_path: Path) -> None:
    text = with_probe('url = "https://a.example/"\njson = ["code == `0`", "data.open"]')
    probe = service_of(tmp_path, text).probe
    assert isinstance(probe, HttpProbe)
    assert probe.json_conditions == ("code == `0`", "data.open")


def test_json_condition_that_does_not_compile(tmp_path: Path) -> None:
    text = with_probe('url = "https://a.example/"\njson = ["code == `0`", "data.["]')
    path, message = only_problem(tmp_path, text)
    where = f"{path}: channels[0].services[0].probe.json[1] {PENSION}"
    assert message.startswith(f'{where}: got "data.["')
    assert "expected a JMESPath expression" in message


def test_json_conditions_must_be_a_list(tmp_path: Path) -> None:
    path, message = only_problem(tmp_path, with_probe('url = "https://a.example/"\njson = "a"'))
    assert message.startswith(f"{path}: channels[0].services[0].probe.json {PENSION}: got")


def test_body_only_with_post_and_never_quoted(tmp_path: Path) -> None:
    text = with_probe('url = "https://a.example/"\nbody = "{\\"token\\": \\"s3cret\\"}"')
    path, message = only_problem(tmp_path, text)
    assert message == (
        f"{path}: channels[0].services[0].probe {PENSION}: "
        'expected `body` only with method = "POST"'
    )
    text = with_probe('url = "https://a.example/"\nmethod = "POST"\nbody = 5')
    path, message = only_problem(tmp_path, text)
    assert message.startswith(f"{path}: channels[0].services[0].probe.body {PENSION}: ")
    assert "not repeated" in message and "5" not in message.split(":", 2)[2]


def test_unknown_probe_kind(tmp_path: Path) -> None:
    path, message = only_problem(tmp_path, with_probe('kind = "grpc"\nurl = "https://a/"'))
    probed = ", ".join(f'"{name}"' for name, kind in KINDS.items() if kind.table == "probe")
    assert probed.startswith('"http", "browser", "prometheus"')  # the registry's, in its order
    assert message == (
        f'{path}: channels[0].services[0].probe.kind {PENSION}: got "grpc"; '
        f"expected one of {probed}"
    )


def test_unknown_key_of_a_kind_lists_that_kinds_keys(tmp_path: Path) -> None:
    text = with_probe('kind = "browser"\nurl = "https://a/"\nwiat_for = "#status"')
    path, message = only_problem(tmp_path, text)
    assert message.startswith(f"{path}: channels[0].services[0].probe.wiat_for {PENSION}: ")
    assert 'did you mean "wait_for"?' in message
    assert "allowed keys: kind, url, headers, interval, timeout, wait_for, text_matches" in message
    text = with_probe('url = "https://a/"\njsn = ["a"]')
    path, message = only_problem(tmp_path, text)
    assert 'did you mean "json"?' in message and "json_conditions" not in message


def test_browser_bad_text_regex(tmp_path: Path) -> None:
    text = with_probe('kind = "browser"\nurl = "https://a/"\ntext_not_matches = "(升级"')
    path, message = only_problem(tmp_path, text)
    assert message.startswith(f"{path}: channels[0].services[0].probe.text_not_matches {PENSION}: ")
    assert "expected a valid regular expression" in message


@pytest.mark.parametrize("serving_if", ["> x", "0", ">", "=> 1", "> 1 2", "~ 3"])
def test_bad_serving_if(tmp_path: Path, serving_if: str) -> None:
    query = f'kind = "prometheus"\nurl = "http://p:9090"\nquery = "up"\nserving_if = "{serving_if}"'
    path, message = only_problem(tmp_path, with_probe(query))
    assert message.startswith(f"{path}: channels[0].services[0].probe.serving_if {PENSION}: ")
    assert 'expected a comparison such as "> 0"' in message


@pytest.mark.parametrize(
    ("text", "op", "number"),
    [("> 0", ">", 0.0), (">=2", ">=", 2.0), ("== 1", "==", 1.0), ("!= -1.5", "!=", -1.5)],
)
def test_serving_if_forms(tmp_path: Path, text: str, op: str, number: float) -> None:
    query = f'kind = "prometheus"\nurl = "http://p:9090"\nquery = "up"\nserving_if = "{text}"'
    probe = service_of(tmp_path, with_probe(query)).probe
    assert isinstance(probe, PrometheusProbe)
    assert (probe.serving_if.op, probe.serving_if.number) == (op, number)


def test_prometheus_probe_needs_query_and_serving_if(tmp_path: Path) -> None:
    path, problems = problems_of(tmp_path, with_probe('kind = "prometheus"\nurl = "http://p/"'))
    assert problems == [
        f"{path}: channels[0].services[0].probe.query {PENSION}: missing required key",
        f"{path}: channels[0].services[0].probe.serving_if {PENSION}: missing required key",
    ]


def test_bad_no_data(tmp_path: Path) -> None:
    query = 'kind = "prometheus"\nurl = "http://p/"\nquery = "up"\nserving_if = ">0"'
    path, message = only_problem(tmp_path, with_probe(f'{query}\nno_data = "maybe"'))
    where = f"{path}: channels[0].services[0].probe.no_data {PENSION}"
    assert message.startswith(f'{where}: got "maybe"')


def test_probe_and_push_together(tmp_path: Path) -> None:
    text = with_probe('url = "https://a/"') + '\n[channels.services.push]\ntoken = "${T}"\n'
    path, message = only_problem(tmp_path, text)
    assert message == (
        f"{path}: channels[0].services[0] {PENSION}: expected either "
        "[channels.services.probe] or [channels.services.push], not both"
    )


def test_push_token_too_short_is_not_quoted(tmp_path: Path) -> None:
    path, message = only_problem(tmp_path, with_push('token = "kiosk-42"'))
    assert message == (
        f"{path}: channels[0].services[0].push.token {PENSION}: "
        "expected a token of at least 16 characters"
    )
    path, message = only_problem(tmp_path, with_push("token = 12345678901234567890"))
    assert message.startswith(f"{path}: channels[0].services[0].push.token {PENSION}: expected")
    assert "1234" not in message


def test_push_within_and_unknown_key(tmp_path: Path) -> None:
    text = with_push('token = "0123456789abcdef"\nwithin = "0s"\ntokn = "x"')
    path, problems = problems_of(tmp_path, text)
    assert problems == [
        f'{path}: channels[0].services[0].push.within {PENSION}: got "0s": '
        "expected a duration of at least 1s",
        f'{path}: channels[0].services[0].push.tokn {PENSION}: unknown key "tokn" '
        '(did you mean "token"?); allowed keys: token, within',
    ]


def test_unset_variables_leave_the_service_not_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ZWFW_URL", raising=False)
    monkeypatch.setenv("ZWFW_TOKEN", "")  # empty counts as unset
    monkeypatch.setenv("ZWFW_HOST", "api.example")
    text = with_probe(
        'url = "${ZWFW_URL}"\nmethod = "POST"\nbody = "{}"\n'
        'headers = { Authorization = "Bearer ${ZWFW_TOKEN}", Host = "${ZWFW_HOST}" }'
    )
    service = service_of(tmp_path, text)
    assert service.unset == ("ZWFW_URL", "ZWFW_TOKEN")
    assert not service.configured and service.observed_by == "http"
    assert service.probe is not None and service.probe.headers["Host"] == "api.example"
    monkeypatch.delenv("KIOSK_TOKEN", raising=False)
    push = service_of(tmp_path, with_push('token = "${KIOSK_TOKEN}"'))
    assert push.unset == ("KIOSK_TOKEN",) and not push.configured
    query = 'kind = "prometheus"\nurl = "http://p/"\nquery = "${Q}"\nserving_if = ">0"'
    monkeypatch.delenv("Q", raising=False)
    assert service_of(tmp_path, with_probe(query)).unset == ("Q",)


def test_set_variables_are_substituted_then_validated_without_quoting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZWFW_URL", "https://api.example/status")
    monkeypatch.setenv("KIOSK_TOKEN", "0123456789abcdef0123")
    service = service_of(tmp_path, with_probe('url = "${ZWFW_URL}"'))
    assert service.probe is not None and service.probe.url == "https://api.example/status"
    assert service.configured and service.unset == ()
    push = service_of(tmp_path, with_push('token = "${KIOSK_TOKEN}"'))
    assert push.push is not None and push.push.token == "0123456789abcdef0123"
    monkeypatch.setenv("ZWFW_URL", "ftp://user:s3cret@api.example/")
    path, message = only_problem(tmp_path, with_probe('url = "${ZWFW_URL}"'))
    assert message == (
        f"{path}: channels[0].services[0].probe.url {PENSION}: expected an http:// or https:// URL"
    )
    monkeypatch.setenv("KIOSK_TOKEN", "short-s3cret")
    path, message = only_problem(tmp_path, with_push('token = "${KIOSK_TOKEN}"'))
    assert "s3cret" not in message and "at least 16 characters" in message


TWO_SERVICES_UNSET = f"""{BASE}
[channels.services.probe]
url = "${{ZWFW_URL}}"
headers = {{ Authorization = "Bearer ${{ZWFW_TOKEN}}" }}

[[channels.services]]
id = "kiosk"
name = "自助终端"

[channels.services.push]
token = "${{KIOSK_TOKEN}}"

[[channels.services]]
id = "medical"
name = "医保缴费"

[channels.services.probe]
kind = "prometheus"
url = "${{PROM_URL}}"
query = 'sum(up{{job="${{JOB}}"}})'
serving_if = "> 0"
"""


def test_validate_summarises_coverage_and_unset_variables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("ZWFW_URL", "ZWFW_TOKEN", "KIOSK_TOKEN", "JOB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PROM_URL", "http://prometheus.internal:9090")
    path = write(tmp_path, TWO_SERVICES_UNSET)
    code, out, err = run_validate(path, capsys)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"{path}: OK: 1 channels, 3 services (2 probed), 1 periods, 0 milestones"
    assert lines[1].startswith(coverage(http=1, prometheus=1, push=1))
    assert lines[2].startswith("not configured 未配置: 3 service(s) stay unknown")
    assert lines[2].endswith(
        "ZWFW_URL (1 service), ZWFW_TOKEN (1 service), KIOSK_TOKEN (1 service), JOB (1 service)"
    )
    assert "prometheus.internal" not in out


def test_validate_strict_fails_while_variables_are_unset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("ZWFW_URL", "ZWFW_TOKEN", "KIOSK_TOKEN", "PROM_URL", "JOB"):
        monkeypatch.delenv(name, raising=False)
    path = write(tmp_path, TWO_SERVICES_UNSET)
    assert main(["validate", "--strict", "--config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert "5 environment variable(s) not set" in err and "Traceback" not in err
    monkeypatch.setenv("ZWFW_URL", "https://api.example/status")
    monkeypatch.setenv("ZWFW_TOKEN", "t0ken-value")
    monkeypatch.setenv("KIOSK_TOKEN", "0123456789abcdef")
    monkeypatch.setenv("PROM_URL", "http://prometheus.internal:9090")
    monkeypatch.setenv("JOB", "tax")
    assert main(["validate", "--strict", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "not configured" not in out
    for secret in ("t0ken-value", "0123456789abcdef", "api.example"):
        assert secret not in out


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (f"http://[::1:80/{SECRET}", "Invalid IPv6 URL"),
        (f"http://h:99999/{SECRET}", "Port out of range 0-65535"),
        (f"http://:80/{SECRET}", "Invalid URL: host is required"),
        ("http://h:${CM_TEST_SINK_PORT}/" + SECRET, "Port out of range 0-65535"),
    ],
)
def test_alert_sink_url_that_cannot_be_sent_is_refused_unquoted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, reason: str
) -> None:
    """Before: these validated and failed only when an incident was sent. The URL is checked
    as a probe's is, after `${NAME}` is replaced, and never quoted."""
    monkeypatch.setenv("CM_TEST_SINK_PORT", "70000")
    text = f'{BASE}\n[[alerts]]\ntype = "webhook"\nurl = "{url}"\n'
    path, message = only_problem(tmp_path, text)
    assert message == (
        f"{path}: alerts[0].url: expected a well-formed http:// or https:// URL "
        f"({reason}; the URL is not repeated here)"
    )
    assert SECRET not in message and "70000" not in message


@pytest.mark.parametrize(
    "text",
    [
        # `[channels.services.probe]` without `[[channels.services]]`: services is a table
        '[monitor]\ntimezone = "Asia/Shanghai"\n\n[[channels]]\nid = "c"\nname = "C"\n'
        'kind = "web"\ngroup = "online"\n\n[channels.services.probe]\n'
        'url = "https://tok:PROBESECRET@x/"\nheaders = { Authorization = "Bearer HEADERSECRET" }\n',
        # `[alerts]` instead of `[[alerts]]`: the sink's URL and secret one level down
        '[monitor]\ntimezone = "Asia/Shanghai"\n\n[alerts]\ntype = "webhook"\n'
        'url = "https://x/?token=SINKSECRET"\nsecret = "SECRETSECRETSECRET"\n',
    ],
)
def test_a_table_above_a_probe_or_sink_of_the_wrong_shape_is_not_quoted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    path = tmp_path / "channels.toml"
    path.write_text(text, encoding="utf-8")
    code, out, err = run_validate(path, capsys)
    assert code == 2
    assert "(its values are not repeated here)" in err
    assert "SECRET" not in out + err

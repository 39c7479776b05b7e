"""The `plan` command's contract: JSON shape, `--at` parsing, transitions, readable tables.

Runs against the real `channels.toml` (Asia/Shanghai), in process through `monitor.cli.main`,
and once as `python -m monitor` in a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from helpers import PLAN_KEYS, REAL_PLAN, ROOT, python_m, real_plan

from monitor.cli import main
from monitor.table import display_width

TRANSITION_KEYS = {"at", "channel", "service", "from", "to", "period"}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([*args])
    out, err = capsys.readouterr()
    return code, out, err


def plan_of_real(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`plan ARGS` on the real plan."""
    return run(capsys, "plan", "--config", str(REAL_PLAN), *args)


def plan_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    code, out, err = plan_of_real(capsys, "--format", "json", *args)
    assert (code, err) == (0, ""), err
    return json.loads(out)


def entry(data: dict, channel: str, service: str) -> dict:
    [found] = [s for s in data["services"] if (s["channel"], s["service"]) == (channel, service)]
    return found


def assert_beijing_iso(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    assert text.endswith("+08:00"), text
    assert value.isoformat() == text
    return value


# --- JSON ------------------------------------------------------------------------------------


def test_plan_json_contract(capsys: pytest.CaptureFixture[str]) -> None:
    data = plan_json(capsys, "--at", "2022-06-23T09:00")
    assert set(data) == {"at", "timezone", "services"}
    assert data["at"] == "2022-06-23T09:00:00+08:00"
    assert data["timezone"] == "Asia/Shanghai"
    plan = real_plan()
    assert [(s["channel"], s["service"]) for s in data["services"]] == [
        ref.key for ref in plan.services
    ]
    for item in data["services"]:
        assert set(item) == PLAN_KEYS, item
        ref = plan.service(item["channel"], item["service"])
        assert item["channel_name"] == ref.channel.name
        assert item["service_name"] == ref.service.name
        assert item["expected"] in ("up", "down", "any")
        assert isinstance(item["in_grace"], bool)
        if item["rule"] is None:
            assert item["period"] is None
            assert item["expected"] == ref.service.default
        else:
            assert isinstance(item["rule"], int) and not isinstance(item["rule"], bool)
            rule = ref.service.expect[item["rule"]]  # 0-based index into `expect`
            assert (rule.during, rule.state) == (item["period"], item["expected"])
        if item["next_change"] is not None:
            assert assert_beijing_iso(item["next_change"]) > assert_beijing_iso(data["at"])
        assert item["observed_by"] == ref.service.observed_by
        assert item["not_configured"] == list(ref.service.unset)


def test_plan_json_certificate_window_opens(capsys: pytest.CaptureFixture[str]) -> None:
    data = plan_json(capsys, "--at", "2022-06-23T09:00")
    certificate = entry(data, "hubei-zwfw", "certificate-print")
    assert certificate["channel_name"] == "湖北政务服务网"
    assert certificate["expected"] == "up"
    assert certificate["period"] == "certificate-window"
    assert certificate["rule"] == 1
    assert certificate["in_grace"] is True
    assert certificate["next_change"] == "2022-07-19T18:00:00+08:00"
    pension = entry(data, "hubei-zwfw", "pension")
    assert (pension["expected"], pension["rule"], pension["period"]) == ("down", 0, "freeze")
    assert pension["in_grace"] is False
    assert pension["next_change"] == "2022-07-25T08:30:00+08:00"


def test_plan_json_open_services_decided_by_their_rule(capsys: pytest.CaptureFixture[str]) -> None:
    data = plan_json(capsys, "--at", "2022-07-01T12:00")
    medical = entry(data, "hubei-etax", "medical-premium")
    assert medical["expected"] == "up"
    assert medical["next_change"] is None
    assert medical["in_grace"] is False
    portal = entry(data, "hubei-zwfw", "portal")
    assert (portal["expected"], portal["rule"], portal["period"]) == ("up", None, None)
    assert portal["next_change"] is None


def test_naive_at_is_read_in_the_plan_zone(capsys: pytest.CaptureFixture[str]) -> None:
    before = plan_json(capsys, "--at", "2022-06-22T17:59:59")
    at = plan_json(capsys, "--at", "2022-06-22T18:00:00")
    assert before["at"] == "2022-06-22T17:59:59+08:00"
    assert at["at"] == "2022-06-22T18:00:00+08:00"
    assert entry(before, "ehuiban", "pension")["expected"] == "up"
    assert entry(before, "ehuiban", "pension")["next_change"] == "2022-06-22T18:00:00+08:00"
    assert entry(at, "ehuiban", "pension")["expected"] == "down"
    assert entry(at, "ehuiban", "pension")["in_grace"] is True
    later = plan_json(capsys, "--at", "2022-06-22 18:05")  # a space instead of "T" is ISO too
    assert later["at"] == "2022-06-22T18:05:00+08:00"
    assert entry(later, "ehuiban", "pension")["in_grace"] is False


@pytest.mark.parametrize(
    ("text", "shown", "state"),
    [
        ("2022-06-22T10:00:00Z", "2022-06-22T18:00:00+08:00", "down"),
        ("2022-06-22T09:59:59+00:00", "2022-06-22T17:59:59+08:00", "up"),
        ("2022-06-22T11:59:59-06:00", "2022-06-23T01:59:59+08:00", "down"),
        ("2022-07-25T02:30:00+02:00", "2022-07-25T08:30:00+08:00", "up"),
        ("2022-07-25T08:29:59.999999+08:00", "2022-07-25T08:29:59.999999+08:00", "down"),
    ],
)
def test_at_with_an_explicit_offset(
    capsys: pytest.CaptureFixture[str], text: str, shown: str, state: str
) -> None:
    data = plan_json(capsys, "--at", text)
    assert data["at"] == shown
    assert entry(data, "si-12333", "pension")["expected"] == state


@pytest.mark.parametrize("text", ["tomorrow", "2022-13-01", "2022-06-22T25:00", "22/06/2022"])
def test_bad_at_is_exit_2_with_a_message(capsys: pytest.CaptureFixture[str], text: str) -> None:
    code, out, err = plan_of_real(capsys, "--at", text)
    assert code == 2
    assert out == ""
    assert err == (
        f'channel-monitor: --at: "{text}" is not an ISO 8601 instant such as '
        '"2022-07-01T12:00" or "2022-07-01T12:00:00+08:00"\n'
    )


def test_plan_with_a_bad_config_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[monitor]\ntimezone = "Asia/Shanghia"\n', encoding="utf-8")
    code, out, err = run(capsys, "plan", "--config", str(path), "--at", "2022-06-22T18:00")
    assert code == 2
    assert out == ""
    assert f'{path}: monitor.timezone: got "Asia/Shanghia"' in err
    assert f"{path}: channels: missing required key" in err
    assert err.endswith("2 problems found; nothing was done.\n")
    assert "Traceback" not in err


# --- transitions -----------------------------------------------------------------------------


def test_transitions_json(capsys: pytest.CaptureFixture[str]) -> None:
    data = plan_json(
        capsys, "--transitions", "--from", "2022-06-01", "--until", "2022-10-01T00:00+08:00"
    )
    assert set(data) == {"transitions"}
    items = data["transitions"]
    assert items
    for item in items:
        assert set(item) == TRANSITION_KEYS, item
        assert item["from"] != item["to"]
        assert {item["from"], item["to"]} <= {"up", "down", "any"}
        assert_beijing_iso(item["at"])
    keys = [(datetime.fromisoformat(i["at"]), i["channel"], i["service"]) for i in items]
    assert keys == sorted(keys)
    certificate = [
        (i["at"], i["from"], i["to"], i["period"])
        for i in items
        if (i["channel"], i["service"]) == ("hubei-zwfw", "certificate-print")
    ]
    assert certificate == [
        ("2022-06-22T18:00:00+08:00", "up", "down", "freeze"),
        ("2022-06-23T09:00:00+08:00", "down", "up", "certificate-window"),
        ("2022-07-19T18:00:00+08:00", "up", "down", "freeze"),
        ("2022-07-25T08:30:00+08:00", "down", "up", "freeze"),
    ]
    plan = real_plan()
    assert len(items) == len(
        plan.transitions(
            datetime.fromisoformat("2022-06-01T00:00+08:00"),
            datetime.fromisoformat("2022-10-01T00:00+08:00"),
        )
    )


def test_transitions_window_is_half_open(capsys: pytest.CaptureFixture[str]) -> None:
    at_start = plan_json(
        capsys, "--transitions", "--from", "2022-06-23T09:00", "--until", "2022-07-19T18:00"
    )
    assert [(i["at"], i["service"]) for i in at_start["transitions"]] == [
        ("2022-06-23T09:00:00+08:00", "certificate-print")
    ]
    empty = plan_json(
        capsys, "--transitions", "--from", "2022-06-23T09:00:01", "--until", "2022-07-19T18:00"
    )
    assert empty == {"transitions": []}


def test_transitions_bad_from(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = plan_of_real(
        capsys, "--transitions", "--from", "soon", "--until", "2022-07-01"
    )
    assert (code, out) == (2, "")
    assert err.startswith('channel-monitor: --from: "soon"')
    assert err.endswith(
        ': "soon" is not an ISO 8601 instant such as '
        '"2022-07-01T12:00" or "2022-07-01T12:00:00+08:00"\n'
    )
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--from", "2022-07-01", "--until", "2022-06-01"],
            "channel-monitor: --until must be after --from\n",
        ),
        (
            ["--from", "2022-07-01", "--until", "2022-07-01"],
            "channel-monitor: --until must be after --from\n",
        ),
    ],
)
def test_transitions_bad_input(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = plan_of_real(capsys, "--transitions", *args)
    assert (code, out, err) == (2, "", message)


# --- instants at the ends of the calendar (issue 10) ----------------------------------------

#: A plan with office hours (a recurring period, walked day by day) and no probes, so `check`
#: needs no network.
OFFICE_HOURS = """
[periods.hours]
weekdays = ["monday:friday"]
times = [{ start_time = "09:00", end_time = "17:00" }]

[[channels]]
id = "hall"
name = "服务大厅"
kind = "offline"
group = "offline"

[[channels.services]]
id = "pension"
name = "养老保险"
default = "down"
expect = [{ during = "hours", state = "up" }]
"""

OUT_OF_RANGE = "is outside the years the monitor works with (1900 to 8999)"


def command_args(command: str, tmp_path: Path) -> list[str]:
    plan = tmp_path / "hours.toml"
    plan.write_text(OFFICE_HOURS, encoding="utf-8")
    args = [command, "--config", str(plan)]
    if command == "render":
        args += ["--site", str(tmp_path / "site"), "--db", str(tmp_path / "m.db")]
    return args


@pytest.mark.parametrize("command", ["plan", "check", "render"])
@pytest.mark.parametrize(
    "at", ["0001-01-01", "0001-01-01T00:00Z", "9999-12-31T23:59", "9999-06-01", "9000-01-01"]
)
def test_at_near_the_ends_of_the_calendar_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, at: str
) -> None:
    """Before: OverflowError tracebacks (grace before year 1, 400 days ahead past 9999)."""
    code, out, err = run(capsys, *command_args(command, tmp_path), "--at", at)
    assert (code, out) == (2, "")
    assert (
        err == f'channel-monitor: --at: "{at}" {OUT_OF_RANGE}; expected an instant in that range\n'
    )


@pytest.mark.parametrize("command", ["plan", "check", "render"])
@pytest.mark.parametrize("at", ["1900-01-01T00:00", "8999-12-31T23:59:59"])
def test_the_first_and_last_supported_instants_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, at: str
) -> None:
    code, out, err = run(capsys, *command_args(command, tmp_path), "--at", at)
    assert (code, err) == (0, ""), err
    assert out


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("0001-01-01", "9999-12-31", f'--from: "0001-01-01" {OUT_OF_RANGE}'),
        ("2022-01-01", "9999-12-31", f'--until: "9999-12-31" {OUT_OF_RANGE}'),
        ("1900-01-01", "8999-12-31", "more than 3,653 days (ten years) apart"),
    ],
)
def test_transitions_over_the_whole_calendar_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], start: str, end: str, message: str
) -> None:
    args = [*command_args("plan", tmp_path), "--transitions", "--from", start, "--until", end]
    code, out, err = run(capsys, *args)
    assert (code, out) == (2, "")
    assert err.startswith("channel-monitor: ") and message in err, err


def test_transitions_over_ten_years_at_the_end_of_the_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*command_args("plan", tmp_path), "--transitions", "--format", "json"]
    code, out, err = run(capsys, *args, "--from", "8990-01-01", "--until", "8999-12-31T23:59:59")
    assert (code, err) == (0, ""), err
    changes = json.loads(out)["transitions"]
    assert changes[-1]["at"] == "8999-12-31T17:00:00+08:00"  # a Tuesday's closing time
    first, last = date(8990, 1, 1), date(8999, 12, 31)
    days = (first + timedelta(days=n) for n in range((last - first).days + 1))
    assert len(changes) == 2 * sum(1 for day in days if day.weekday() < 5)  # open, close


# --- tables ----------------------------------------------------------------------------------


def cells(line: str, starts: list[int]) -> list[str]:
    """Cut a table line at display columns `starts`; asserts that no wide character straddles a
    column start and that two blanks separate the columns."""
    columns: list[str] = []  # one entry per display column; "" continues a wide character
    for char in line:
        columns.append(char)
        if display_width(char) == 2:
            columns.append("")
    out = []
    for index, start in enumerate(starts):
        if start:
            assert columns[start - 2 : start] == [" ", " "], (line, start)
        if start < len(columns):
            assert columns[start] != "", (line, start)
        stop = starts[index + 1] if index + 1 < len(starts) else len(columns)
        out.append("".join(columns[start:stop]).strip())
    return out


def table_of(out: str) -> tuple[list[str], list[int], list[list[str]]]:
    """Header cells, the display columns where columns start, and the rows' cells."""
    lines = out.splitlines()
    rule_index = next(i for i, line in enumerate(lines) if set(line) <= {"-", " "} and line)
    rule = lines[rule_index]
    starts = [i for i, c in enumerate(rule) if c == "-" and (i == 0 or rule[i - 1] == " ")]
    assert starts[0] == 0
    header = cells(lines[rule_index - 1], starts)
    rows = [cells(line, starts) for line in lines[rule_index + 1 :]]
    width = display_width(rule)
    for line in lines[rule_index - 1 :]:
        assert display_width(line) <= width, line
        assert line == line.rstrip(), "no trailing blanks"
    for row in rows:  # the rule is exactly as wide as the widest cell of each column
        assert len(row) == len(starts)
    for index, start in enumerate(starts):
        stop = starts[index + 1] - 2 if index + 1 < len(starts) else width
        column = [header[index]] + [row[index] for row in rows]
        assert max(display_width(c) for c in column) == stop - start
    return header, starts, rows


def test_plan_table_is_aligned_with_chinese_names(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = plan_of_real(capsys, "--at", "2022-06-23T09:02")
    assert (code, err) == (0, "")
    first = out.splitlines()[0]
    assert first == "湖北省企业职工社保信息系统切换期间渠道状态 @ 2022-06-23 09:02 (Asia/Shanghai)"
    header, _, rows = table_of(out)
    assert header == ["channel", "service", "expected", "decided by", "next change"]
    data = plan_json(capsys, "--at", "2022-06-23T09:02")
    assert len(rows) == len(data["services"])
    for row, item in zip(rows, data["services"], strict=True):
        next_change = (
            datetime.fromisoformat(item["next_change"]).strftime("%Y-%m-%d %H:%M")
            if item["next_change"]
            else "-"
        )
        assert row == [
            item["channel_name"],
            item["service_name"],
            item["expected"] + (" (grace)" if item["in_grace"] else ""),
            item["period"] or "default",
            next_change,
        ]
    certificate = rows[[i["service"] for i in data["services"]].index("certificate-print")]
    assert certificate[2:] == ["up (grace)", "certificate-window", "2022-07-19 18:00"]
    # Chinese names are wider than their length: a padding by len() would misalign the table.
    assert any(display_width(row[0]) > len(row[0]) for row in rows)


def test_transitions_table_is_aligned(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = plan_of_real(
        capsys, "--transitions", "--from", "2022-06-23T00:00", "--until", "2022-07-20T00:00"
    )
    assert (code, err) == (0, "")
    header, _, rows = table_of(out)
    assert header == ["at", "channel", "service", "change", "period"]
    assert rows == [
        [
            "2022-06-23 09:00",
            "湖北政务服务网",
            "企业职工社会保险参保证明查询打印",
            "down -> up",
            "certificate-window",
        ],
        [
            "2022-07-19 18:00",
            "湖北政务服务网",
            "企业职工社会保险参保证明查询打印",
            "up -> down",
            "freeze",  # the period that decides the new state
        ],
    ]


# --- as a program ----------------------------------------------------------------------------


def test_python_m_monitor_validate_default_config() -> None:
    done = python_m("validate")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    plan = real_plan()
    config = plan.config
    assert done.stdout.startswith(
        f"channels.toml: OK: {len(config.channels)} channels, {len(plan.services)} services ("
    )


def test_python_m_monitor_validate_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text("[[channels]]\nid = 'Bad Id'\n", encoding="utf-8")
    done = python_m("validate", "--config", str(path), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert f'{path}: channels[0].id (channel "Bad Id"): got "Bad Id"' in done.stderr
    assert f'{path}: channels[0].name (channel "Bad Id"): missing required key' in done.stderr
    assert "Traceback" not in done.stderr


def test_python_m_monitor_plan_json() -> None:
    done = python_m("plan", "--at", "2022-07-19T18:00", "--format", "json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["at"] == "2022-07-19T18:00:00+08:00"
    certificate = entry(data, "hubei-zwfw", "certificate-print")
    assert (certificate["expected"], certificate["in_grace"]) == ("down", True)


def test_python_m_monitor_transitions_over_the_whole_calendar() -> None:
    """The issue's command, as a real process: exit 2 with one sentence, no traceback."""
    done = python_m(
        "plan", "--transitions", "--from", "0001-01-01", "--until", "9999-12-31", cwd=ROOT
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f'channel-monitor: --from: "0001-01-01" {OUT_OF_RANGE}; expected an instant in that range\n'
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["validate"],
        ["plan", "--at", "2022-07-01T12:00"],
        [
            "plan",
            "diff",
            "channels.toml",
            "channels.toml",
            "--from",
            "2022-06-01",
            "--until",
            "2022-08-01",
        ],
        ["report", "--db", "no-such.db"],
        ["notice", "list"],
    ],
)
def test_commands_that_read_the_plan_load_no_server_libraries(argv: list[str]) -> None:
    """DESIGN: commands import what they use; reading a plan must not pay for aiohttp, httpx,
    prometheus_client or APScheduler (they take most of a second to import here)."""
    script = (
        "import sys\n"
        "from monitor.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = {'aiohttp', 'httpx', 'prometheus_client', 'apscheduler', 'playwright'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr

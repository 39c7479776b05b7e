"""`plan diff`: exact spans on hand-made pairs of plans, and the command's exit codes.

Each pair changes one thing a real cutover changes (a window extended, a rule added, a service
added, a window moved, a recurring period across a DST change); the expected spans are written
out by hand, to the second, so a sampled or off-by-one computation fails.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from helpers import load_plan, python_m, write_plan

from monitor.cli import main
from monitor.plan import Expectation
from monitor.plan.diff import default_range, diff_plans

SHANGHAI = ZoneInfo("Asia/Shanghai")
SECRET_URL = "https://probe.example.gov.cn/cert?token=s3cr3t-token"
SECRET_HEADER = "Bearer very-secret-header"


def at(text: str, zone: ZoneInfo = SHANGHAI) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=zone)


BASE: dict = {
    "monitor": {"timezone": "Asia/Shanghai"},
    "periods": {
        "freeze": {"start": datetime(2022, 6, 22, 18), "end": datetime(2022, 7, 25, 8, 30)},
        "window": {"start": datetime(2022, 6, 23, 9), "end": datetime(2022, 7, 19, 18)},
    },
    "milestones": [{"at": datetime(2022, 6, 22, 18), "title": "停机开始"}],
    "channels": [
        {
            "id": "portal",
            "name": "政务服务网",
            "kind": "web",
            "group": "online",
            "services": [
                {
                    "id": "pension",
                    "name": "养老保险",
                    "expect": [{"during": "freeze", "state": "down"}],
                },
                {
                    "id": "cert",
                    "name": "参保证明",
                    "expect": [
                        {"during": "freeze", "state": "down"},
                        {"during": "window", "state": "up"},
                    ],
                    "probe": {"url": SECRET_URL, "headers": {"Authorization": SECRET_HEADER}},
                },
            ],
        }
    ],
}


def variant() -> dict:
    return copy.deepcopy(BASE)


def service(plan: dict, sid: str) -> dict:
    [found] = [s for s in plan["channels"][0]["services"] if s["id"] == sid]
    return found


def diff(tmp_path: Path, old: dict, new: dict, start: str, end: str, zone=SHANGHAI):
    a = load_plan(tmp_path / "old.toml", old)
    b = load_plan(tmp_path / "new.toml", new)
    return diff_plans(a, b, at(start, zone), at(end, zone))


def spans(result) -> list[tuple]:
    return [
        (ref.service.id, span.start, span.end, span.before, span.after)
        for ref, span in result.spans
    ]


RANGE = ("2022-06-01T00:00", "2022-09-01T00:00")


def test_extended_window_gives_one_span_with_the_rules_that_decided(tmp_path: Path) -> None:
    new = variant()
    new["periods"]["window"]["end"] = datetime(2022, 7, 20, 18)
    result = diff(tmp_path, BASE, new, *RANGE)
    assert spans(result) == [
        (
            "cert",
            at("2022-07-19T18:00"),
            at("2022-07-20T18:00"),
            Expectation("down", 0, "freeze"),
            Expectation("up", 1, "window"),
        )
    ]
    [change] = result.periods
    assert (change.key, change.change, [f.name for f in change.fields]) == (
        "window",
        "changed",
        ["end"],
    )
    assert not result.same_expectations


def test_added_rule_differs_exactly_over_its_period(tmp_path: Path) -> None:
    new = variant()
    service(new, "pension")["expect"].append({"during": "window", "state": "any"})
    result = diff(tmp_path, BASE, new, *RANGE)
    assert spans(result) == [
        (
            "pension",
            at("2022-06-23T09:00"),
            at("2022-07-19T18:00"),
            Expectation("down", 0, "freeze"),
            Expectation("any", 1, "window"),
        )
    ]
    assert [(s.key, [f.name for f in s.fields]) for s in result.services] == [
        ("portal/pension", ["expect"])
    ]


def test_moved_window_gives_two_spans_in_opposite_directions(tmp_path: Path) -> None:
    new = variant()
    new["periods"]["window"] = {"start": datetime(2022, 6, 25, 9), "end": datetime(2022, 7, 21, 18)}
    result = diff(tmp_path, BASE, new, *RANGE)
    up, down = Expectation("up", 1, "window"), Expectation("down", 0, "freeze")
    assert spans(result) == [
        ("cert", at("2022-06-23T09:00"), at("2022-06-25T09:00"), up, down),
        ("cert", at("2022-07-19T18:00"), at("2022-07-21T18:00"), down, up),
    ]


def test_the_range_clips_spans(tmp_path: Path) -> None:
    new = variant()
    new["periods"]["window"]["end"] = datetime(2022, 7, 20, 18)
    result = diff(tmp_path, BASE, new, "2022-07-20T00:00", "2022-07-20T12:00")
    assert [(s[1], s[2]) for s in spans(result)] == [
        (at("2022-07-20T00:00"), at("2022-07-20T12:00"))
    ]
    assert diff(tmp_path, BASE, new, "2022-07-21T00:00", "2022-08-01T00:00").same_expectations


def test_services_added_and_removed(tmp_path: Path) -> None:
    new = variant()
    services = new["channels"][0]["services"]
    services.remove(service(new, "cert"))
    services.append({"id": "card", "name": "社保卡"})
    result = diff(tmp_path, BASE, new, *RANGE)
    assert [r.key for r in result.added] == [("portal", "card")]
    assert [r.key for r in result.removed] == [("portal", "cert")]
    assert result.spans == []
    assert not result.same_expectations


def test_dst_change_moves_a_recurring_span_in_utc(tmp_path: Path) -> None:
    """Office hours 09:00-17:00 become 09:00-18:00 on weekdays in New York; summer time starts
    on Sunday 2022-03-13, so the extra hour is 22:00 UTC before it and 21:00 UTC after."""
    hours = [{"start_time": "09:00", "end_time": "17:00"}]
    desk = {"id": "desk", "name": "窗口", "default": "down"}
    old = {
        "monitor": {"timezone": "America/New_York"},
        "periods": {"office": {"weekdays": ["monday:friday"], "times": hours}},
        "channels": [
            {
                "id": "hall",
                "name": "服务大厅",
                "kind": "offline",
                "group": "offline",
                "services": [
                    {**desk, "expect": [{"during": "office", "state": "up"}]}
                ],
            }
        ],
    }  # fmt: skip
    new = copy.deepcopy(old)
    new["periods"]["office"]["times"][0]["end_time"] = "18:00"
    york, utc = ZoneInfo("America/New_York"), ZoneInfo("UTC")
    result = diff(tmp_path, old, new, "2022-03-10T00:00", "2022-03-16T00:00", york)
    found = [(s[1].astimezone(utc), s[2].astimezone(utc)) for s in spans(result)]
    assert found == [
        (at("2022-03-10T22:00", utc), at("2022-03-10T23:00", utc)),
        (at("2022-03-11T22:00", utc), at("2022-03-11T23:00", utc)),
        (at("2022-03-14T21:00", utc), at("2022-03-14T22:00", utc)),
        (at("2022-03-15T21:00", utc), at("2022-03-15T22:00", utc)),
    ]
    assert all(s[3] == Expectation("down") and s[4].state == "up" for s in spans(result))


def test_default_range_pads_what_the_plans_name(tmp_path: Path) -> None:
    new = variant()
    new["periods"]["later"] = {"start": datetime(2022, 8, 1), "end": datetime(2022, 8, 2)}
    a = load_plan(tmp_path / "a.toml", BASE)
    b = load_plan(tmp_path / "b.toml", new)
    start, end = default_range(a.config, b.config, at("2030-01-01T00:00"))
    assert (start, end) == (at("2022-06-21T18:00"), at("2022-08-03T00:00"))


# --- through the command line ----------------------------------------------------------------


def test_probe_and_sink_changes_name_fields_never_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = variant()
    probe = service(new, "cert")["probe"]
    probe["url"] = SECRET_URL + "-rotated"
    probe["headers"] = {"Authorization": SECRET_HEADER + "-rotated"}
    probe["timeout"] = "5s"
    old_path = write_plan(tmp_path / "old.toml", BASE)
    new_path = write_plan(tmp_path / "new.toml", new)
    for form in ("table", "json"):
        code = main(["plan", "diff", str(old_path), str(new_path), "--format", form])
        out, err = capsys.readouterr()
        assert code == 0, err  # expectations are the same: only the probe changed
        assert "s3cr3t" not in out and "very-secret" not in out
        assert "url" in out and "headers" in out and "timeout" in out
    data = json.loads(out)
    assert data["probes"] == [
        {"key": "portal/cert", "change": "changed", "fields": ["url", "headers", "timeout"]}
    ]
    assert data["same_expectations"] is True


def test_exit_codes_and_json_through_the_real_command(tmp_path: Path) -> None:
    new = variant()
    new["periods"]["window"]["end"] = datetime(2022, 7, 20, 18)
    old_path = write_plan(tmp_path / "old.toml", BASE)
    new_path = write_plan(tmp_path / "new.toml", new)

    same = python_m("plan", "diff", str(old_path), str(old_path))
    assert (same.returncode, same.stderr) == (0, "")
    assert "Both plans expect the same" in same.stdout

    changed = python_m(
        "plan", "diff", str(old_path), str(new_path), "--from", "2022-06-01", "--format", "json"
    )
    assert (changed.returncode, changed.stderr) == (1, "")
    data = json.loads(changed.stdout)
    assert data["from"] == "2022-06-01T00:00:00+08:00"
    assert data["until"] == "2022-07-26T08:30:00+08:00"  # default: a day after the last instant
    [span] = data["spans"]
    assert (span["service"], span["start"], span["end"], span["duration_seconds"]) == (
        "cert",
        "2022-07-19T18:00:00+08:00",
        "2022-07-20T18:00:00+08:00",
        86400.0,
    )
    assert span["before"] == {"state": "down", "rule": 0, "period": "freeze"}
    assert span["after"] == {"state": "up", "rule": 1, "period": "window"}


def test_invalid_plans_exit_2_with_the_errors_validate_prints(tmp_path: Path) -> None:
    good = write_plan(tmp_path / "good.toml", BASE)
    broken = variant()
    service(broken, "pension")["expect"][0]["during"] = "freez"
    bad = write_plan(tmp_path / "bad.toml", broken)
    validate = python_m("validate", "--config", str(bad))
    assert validate.returncode == 2
    problem = validate.stderr.splitlines()[0]
    assert "freez" in problem and "bad.toml" in problem

    result = python_m("plan", "diff", str(good), str(bad))
    assert result.returncode == 2 and result.stdout == ""
    assert problem in result.stderr.splitlines()
    both = python_m("plan", "diff", str(bad), str(bad))
    assert both.stderr.splitlines().count(problem) == 2

    backwards = python_m(
        "plan", "diff", str(good), str(good), "--from", "2022-08-01", "--until", "2022-07-01"
    )
    assert backwards.returncode == 2 and "--until must be after --from" in backwards.stderr
    nonsense = python_m("plan", "diff", str(good), str(good), "--from", "yesterday")
    assert (
        nonsense.returncode == 2
        and "--from" in nonsense.stderr
        and "Traceback" not in nonsense.stderr
    )


def test_milestones_settings_and_sinks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = variant()
    old["alerts"] = [{"type": "webhook", "url": "https://hooks.example.org/T0KEN-old"}]
    new = variant()
    new["milestones"][0]["at"] = datetime(2022, 6, 22, 20)
    new["milestones"].append({"at": datetime(2022, 7, 25, 8, 30), "title": "恢复办理"})
    new["monitor"]["interval"] = "30s"
    new["alerts"] = [{"type": "webhook", "url": "https://hooks.example.org/T0KEN-new"}]
    result = diff(tmp_path, old, new, *RANGE)
    assert result.same_expectations  # nothing here changes what any service is expected to do
    assert [(m.key, m.change) for m in result.milestones] == [
        ("恢复办理", "added"),
        ("停机开始", "changed"),
    ]
    [moved] = [m for m in result.milestones if m.change == "changed"]
    assert [(f.name, f.before, f.after) for f in moved.fields] == [
        ("at", "2022-06-22T18:00:00+08:00", "2022-06-22T20:00:00+08:00")
    ]
    assert [(f.name, f.before, f.after) for f in result.settings] == [("interval", "1m", "30s")]
    [sink] = result.alerts
    assert (sink.key, sink.change, [f.name for f in sink.fields]) == ("webhook", "changed", ["url"])
    assert all(f.before is None and f.after is None for f in sink.fields)
    paths = [str(write_plan(tmp_path / n, p)) for n, p in (("a.toml", old), ("b.toml", new))]
    assert main(["plan", "diff", *paths]) == 0
    out = capsys.readouterr()[0]
    assert "T0KEN" not in out and "monitor.interval  1m" in out


PUSH_TOKEN = "push-t0ken-very-secret-old"


def test_push_changes_name_the_field_never_the_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A push token is a secret like a probe's URL: the JSON and the table name `push` only."""
    old = variant()
    service(old, "pension")["push"] = {"token": PUSH_TOKEN}
    new = copy.deepcopy(old)
    service(new, "pension")["push"] = {"token": PUSH_TOKEN.replace("old", "new")}
    service(new, "pension")["note"] = "新备注"
    old_path = write_plan(tmp_path / "old.toml", old)
    new_path = write_plan(tmp_path / "new.toml", new)
    for form in ("table", "json"):
        code = main(["plan", "diff", str(old_path), str(new_path), "--format", form])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert "push-t0ken" not in out and "push-t0ken" not in err
        assert "push" in out
    [item] = json.loads(out)["services"]
    assert item["fields"] == ["note", "push"]
    assert item["values"] == {"note": {"before": "", "after": "新备注"}}


def test_a_range_of_more_than_ten_years_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Recurring periods are walked day by day: 7,000 years took minutes; like
    `plan --transitions`, `plan diff` refuses more than ten years, given or by default."""
    old = variant()
    old["periods"]["office"] = {"weekdays": ["monday:friday"]}
    service(old, "pension")["expect"].append({"during": "office", "state": "up"})
    new = copy.deepcopy(old)
    new["periods"]["office"]["weekdays"] = ["monday:thursday"]
    old_path = write_plan(tmp_path / "old.toml", old)
    new_path = write_plan(tmp_path / "new.toml", new)
    paths = [str(old_path), str(new_path)]
    given = main(["plan", "diff", *paths, "--from", "1900-01-01", "--until", "8999-01-01"])
    assert given == 2
    assert "ten years" in capsys.readouterr().err
    ten = main(["plan", "diff", *paths, "--from", "2020-01-01", "--until", "2029-12-31"])
    assert ten == 1  # ten years are still compared
    capsys.readouterr()
    far = copy.deepcopy(new)
    far["milestones"].append({"at": datetime(2099, 1, 1), "title": "远期"})
    far_path = write_plan(tmp_path / "far.toml", far)
    default = main(["plan", "diff", str(old_path), str(far_path)])
    err = capsys.readouterr().err
    assert default == 2 and "--from and --until" in err and "Traceback" not in err

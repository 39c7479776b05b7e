"""`channel-monitor check` and `channel-monitor run` end to end, against real local servers.

`check` runs the real plan (channels.toml, with every service's probe pointed at a local server)
on the freeze and after it; `run` runs as a real subprocess that is stopped with SIGTERM and
started again on the same store.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import tomllib
from pathlib import Path

import pytest
from helpers import (
    FAST_MONITOR,
    MAINTENANCE_PATTERN,
    MONITOR,
    PLAN_KEYS,
    REAL_PLAN,
    ChannelServer,
    MonitorRun,
    db_rows,
    python_m,
    silent_listener,
    wait_for,
    write_plan,
)

from monitor.cli import main

OBSERVED_KEYS = {"serving", "reason", "status_code", "duration_seconds"}


def real_plan_data() -> dict:
    """The real plan (the project's channels.toml), parsed."""
    return tomllib.loads(REAL_PLAN.read_text("utf-8"))


def probe_everything(data: dict, base_url: str, **probe: object) -> dict:
    """Give every service of the plan an HTTP probe of `base_url/<channel>/<service>` (in place
    of the plan's own probe or push)."""
    for channel in data["channels"]:
        for service in channel["services"]:
            service.pop("push", None)
            service["probe"] = {"url": f"{base_url}{channel['id']}/{service['id']}", **probe}
    return data


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, out


@pytest.fixture
def real_plan(tmp_path: Path, server: ChannelServer) -> Path:
    data = probe_everything(real_plan_data(), server.url("/"))
    return write_plan(tmp_path / "channels.toml", data)


# --- check -----------------------------------------------------------------------------------


def check_json(plan: Path, at: str) -> tuple[int, dict]:
    """`python -m monitor check --format json` as a real process: exit code and output."""
    proc = python_m("check", "--config", str(plan), "--at", at, "--format", "json", cwd=plan.parent)
    assert proc.stderr == "", proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_check_during_the_freeze_reports_unexpected_up(
    real_plan: Path, server: ChannelServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, data = check_json(real_plan, "2022-07-01T12:00")
    assert code == 1
    assert data["at"] == "2022-07-01T12:00:00+08:00"
    services = data["services"]
    total = sum(len(c["services"]) for c in tomllib.loads(real_plan.read_text("utf-8"))["channels"])
    assert len(services) == total
    assert server.hit_count() == total, "every service probed exactly once"

    # the JSON is the plan's, plus `observed` and `verdict`
    plan_code, plan_out = run_cli(
        capsys, "plan", "--config", str(real_plan), "--at", "2022-07-01T12:00", "--format", "json"
    )
    assert plan_code == 0
    planned = json.loads(plan_out)
    assert (data["at"], data["timezone"]) == (planned["at"], planned["timezone"])
    for entry, plan_entry in zip(services, planned["services"], strict=True):
        assert set(entry) == PLAN_KEYS | {"observed", "verdict"}
        assert {k: entry[k] for k in PLAN_KEYS} == plan_entry
        observed = entry["observed"]
        assert set(observed) == OBSERVED_KEYS
        assert observed["serving"] is True
        assert observed["reason"] == "HTTP 200"
        assert observed["status_code"] == 200
        assert 0 <= observed["duration_seconds"] < 10

    suspended = [s for s in services if s["expected"] == "down" and not s["in_grace"]]
    assert suspended, "the freeze suspends something"
    for entry in services:
        wanted = "unexpected_up" if entry in suspended else "ok"
        assert entry["verdict"] == wanted, (entry["channel"], entry["service"])
    # the services that stay open, and the certificate window, are not mismatches
    open_ids = {"medical-premium", "social-security-card"}
    kept_open = [s for s in services if s["service"] in open_ids]
    assert kept_open
    assert {s["verdict"] for s in kept_open} == {"ok"}
    (certificate,) = [s for s in services if s["service"] == "certificate-print"]
    assert (certificate["expected"], certificate["verdict"]) == ("up", "ok")


def test_check_after_the_freeze_exits_0(real_plan: Path, server: ChannelServer) -> None:
    code, data = check_json(real_plan, "2022-08-01T12:00")
    assert code == 0, [
        (s["channel"], s["service"], s["expected"], s["verdict"]) for s in data["services"]
    ]
    assert {s["verdict"] for s in data["services"]} == {"ok"}
    assert all(s["observed"]["serving"] for s in data["services"])


SMALL_PLAN = """
[monitor]
timezone = "Asia/Shanghai"
timeout = "{timeout}"

[periods.freeze]
start = 2022-06-22T18:00:00
end = 2022-07-25T08:30:00

[[channels]]
id = "portal"
name = "门户"
kind = "web"
group = "online"

[[channels.services]]
id = "pension"
name = "养老保险"
expect = [{{ during = "freeze", state = "down" }}]
probe = {{ url = "{url}pension", body_not_matches = "{pattern}" }}

[[channels.services]]
id = "medical"
name = "医保缴费"
probe = {{ url = "{url}medical", body_not_matches = "{pattern}" }}

[[channels.services]]
id = "kiosk"
name = "自助机"
expect = [{{ during = "freeze", state = "down" }}]
"""


def small_plan(tmp_path: Path, url: str, timeout: str = "5s") -> Path:
    text = SMALL_PLAN.format(url=url, pattern=MAINTENANCE_PATTERN, timeout=timeout)
    return write_plan(tmp_path / "small.toml", text)


def by_service(out: str) -> dict[str, dict]:
    return {s["service"]: s for s in json.loads(out)["services"]}


def test_check_maintenance_page_and_schedule_only(
    tmp_path: Path, server: ChannelServer, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = small_plan(tmp_path, server.url("/"))
    server.set("maintenance", "/pension")  # as planned during the freeze
    server.set("error", "/medical")  # should be up: unexpected_down

    code, out = run_cli(
        capsys, "check", "--config", str(plan), "--at", "2022-07-01T12:00", "--format", "json"
    )
    assert code == 1
    services = by_service(out)
    pension = services["pension"]
    assert pension["observed"]["serving"] is False
    assert pension["observed"]["reason"] == "body matches maintenance notice"
    assert pension["verdict"] == "ok"
    medical = services["medical"]
    assert (medical["observed"]["reason"], medical["observed"]["status_code"]) == (
        "HTTP 503",
        503,
    )
    assert medical["verdict"] == "unexpected_down"
    kiosk = services["kiosk"]
    assert kiosk["observed"] is None, "schedule-only: nothing observed"
    assert kiosk["verdict"] == "unknown"
    assert kiosk["expected"] == "down"
    assert json.loads(out)["mismatches"] == 1

    # after the freeze the maintenance page is a mismatch; the unknown kiosk never is
    server.set("serving", "/medical")
    code, out = run_cli(
        capsys, "check", "--config", str(plan), "--at", "2022-08-01T12:00", "--format", "json"
    )
    assert code == 1
    services = by_service(out)
    assert services["pension"]["verdict"] == "unexpected_down"
    assert services["medical"]["verdict"] == "ok"
    assert services["kiosk"]["verdict"] == "unknown"

    server.set("serving", "/pension")
    code, out = run_cli(
        capsys, "check", "--config", str(plan), "--at", "2022-08-01T12:00", "--format", "json"
    )
    assert code == 0, "an unknown schedule-only service is not a mismatch"


def test_check_grace_is_not_a_mismatch(
    tmp_path: Path, server: ChannelServer, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = small_plan(tmp_path, server.url("/"))
    code, out = run_cli(
        capsys, "check", "--config", str(plan), "--at", "2022-06-22T18:02", "--format", "json"
    )
    pension = by_service(out)["pension"]
    assert (pension["expected"], pension["in_grace"], pension["verdict"]) == ("down", True, "ok")
    assert code == 0
    code, out = run_cli(
        capsys, "check", "--config", str(plan), "--at", "2022-06-22T18:05", "--format", "json"
    )
    assert by_service(out)["pension"]["verdict"] == "unexpected_up"
    assert code == 1


def test_check_table(
    tmp_path: Path, server: ChannelServer, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = small_plan(tmp_path, server.url("/"))
    code, out = run_cli(capsys, "check", "--config", str(plan), "--at", "2022-07-01T12:00")
    assert code == 1
    lines = out.splitlines()
    pension = next(line for line in lines if "养老保险" in line)
    assert "serving" in pension
    assert "unexpected_up" in pension
    kiosk = next(line for line in lines if "自助机" in line)
    assert "unknown" in kiosk
    assert lines[-1].startswith("1 mismatch(es), 0 not observed (unknown)")


def test_check_takes_about_one_timeout_not_one_per_service(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with silent_listener() as url:
        data = {
            "monitor": {"timezone": "Asia/Shanghai", "timeout": "1s"},
            "channels": [
                {
                    "id": "portal",
                    "name": "门户",
                    "kind": "web",
                    "group": "online",
                    "services": [
                        {"id": f"s{i}", "name": f"服务{i}", "probe": {"url": f"{url}s{i}"}}
                        for i in range(10)
                    ],
                }
            ],
        }
        plan = write_plan(tmp_path / "silent.toml", data)
        started = time.monotonic()
        code, out = run_cli(
            capsys, "check", "--config", str(plan), "--at", "2022-08-01T12:00", "--format", "json"
        )
        elapsed = time.monotonic() - started
    services = json.loads(out)["services"]
    assert len(services) == 10
    for entry in services:
        assert entry["observed"]["reason"] == "timeout after 1s"
        assert entry["observed"]["serving"] is False
        assert entry["observed"]["status_code"] is None
        assert entry["verdict"] == "unexpected_down"
    assert code == 1
    assert elapsed < 4, f"ten 1 s timeouts took {elapsed:.1f} s: they ran one after another"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--at", "yesterday"], "--at"),
        (["--format", "yaml"], None),
    ],
)
def test_check_bad_input_exits_2(
    tmp_path: Path, server: ChannelServer, argv: list[str], message: str | None
) -> None:
    plan = small_plan(tmp_path, server.url("/"))
    proc = python_m("check", "--config", str(plan), *argv)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    if message:
        assert message in proc.stderr
    assert server.hit_count() == 0, "nothing is probed on bad input"


async def test_check_ends_hostile_answers_as_observations(tmp_path: Path) -> None:
    """`(a+)+$` against 30 `a` and a `b` (before: minutes past the 2 s timeout) and a charset
    Python does not know (before: a LookupError traceback): `check`, as a real process, judges
    both within a bound and prints no traceback."""
    from aiohttp import web
    from servers import aiohttp_server

    async def aaab(_request: web.Request) -> web.Response:
        return web.Response(text="a" * 30 + "b", content_type="text/plain")

    async def codec(_request: web.Request) -> web.Response:
        headers = {"Content-Type": "text/html; charset=x-no-such-codec"}
        return web.Response(body=f"<p>{MAINTENANCE_PATTERN}</p>".encode(), headers=headers)

    app = web.Application()
    app.router.add_get("/aaab", aaab)
    app.router.add_get("/codec", codec)
    async with aiohttp_server(app) as base:
        probes = {
            "backtrack": {"url": f"{base}/aaab", "body_not_matches": "(a+)+$"},
            "codec": {"url": f"{base}/codec", "body_not_matches": MAINTENANCE_PATTERN},
        }
        services = [{"id": key, "name": key, "probe": probe} for key, probe in probes.items()]
        channel = {"id": "portal", "name": "门户", "kind": "web", "group": "online"}
        data = {"monitor": {"timeout": "2s"}, "channels": [{**channel, "services": services}]}
        plan = write_plan(tmp_path / "hostile.toml", data)
        argv = ["check", "--config", str(plan), "--at", "2022-08-01T12:00", "--format", "json"]
        proc = await asyncio.create_subprocess_exec(
            *MONITOR, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            pytest.fail("check did not end within 30 s of a 2 s timeout")
    assert err.decode() == ""
    services = by_service(out.decode())
    assert services["backtrack"]["observed"]["reason"] == "HTTP 200"
    assert services["backtrack"]["verdict"] == "ok"
    assert services["codec"]["observed"]["reason"] == "body matches maintenance notice"
    assert services["codec"]["verdict"] == "unexpected_down"
    assert proc.returncode == 1


@pytest.mark.parametrize("line", ['grace = "99999999d"', 'interval = "99999999d"'])
def test_run_refuses_durations_that_crashed_it_at_start(tmp_path: Path, line: str) -> None:
    """Before: these validated, then `run` died at start with an OverflowError traceback."""
    text = SMALL_PLAN.format(url="http://127.0.0.1:9/", pattern="x", timeout="5s")
    plan = write_plan(tmp_path / "plan.toml", text.replace("[monitor]\n", f"[monitor]\n{line}\n"))
    proc = python_m(
        "run", "--config", str(plan), "--db", str(tmp_path / "m.db"), "--listen", "127.0.0.1:9"
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{plan}: monitor.{line.split()[0]}: " in proc.stderr
    assert not (tmp_path / "m.db").exists(), "nothing was started"


def test_check_missing_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", "--config", str(tmp_path / "nope.toml")])
    assert code == 2
    assert "cannot read the plan file" in capsys.readouterr().err


# --- run -------------------------------------------------------------------------------------

RUN_PLAN = (
    FAST_MONITOR
    + """
[[channels]]
id = "portal"
name = "门户"
kind = "web"
group = "online"

[[channels.services]]
id = "pension"
name = "养老保险"
default = "down"
probe = {{ url = "{url}pension", body_not_matches = "{pattern}" }}

[[channels.services]]
id = "medical"
name = "医保缴费"
probe = {{ url = "{url}medical" }}

[[channels.services]]
id = "kiosk"
name = "自助机"
"""
)


def test_run_serves_healthz_stops_on_sigterm_and_resumes_its_incident(
    tmp_path: Path, server: ChannelServer, processes: list[MonitorRun]
) -> None:
    text = RUN_PLAN.format(url=server.url("/"), pattern=MAINTENANCE_PATTERN)
    config = write_plan(tmp_path / "channels.toml", text)
    db = tmp_path / "state" / "monitor.db"
    log = tmp_path / "run.log"
    server.set("serving")  # pension should be down: unexpected_up

    first = MonitorRun(config, db, log)
    processes.append(first)
    body = first.wait_ticking()
    assert 0 <= body["last_tick_age_seconds"] < 30
    incidents = "SELECT id, business, direction, resolved_at FROM incidents"
    (opened,) = wait_for(lambda: db_rows(db, incidents), timeout=30, what="an incident")
    assert opened[1:] == ("pension", "unexpected_up", None)
    _, health = first.healthz()  # what a watchdog reads: work done, lag, collector pauses
    assert health["observations_judged"] >= 2
    assert 0 <= health["scheduler_lag_p99_seconds"] < 30
    assert health["probes_lent"] == 0  # no target here is slow to answer
    assert set(health["gc"]) == {"gen0", "gen1", "gen2"}

    assert first.stop() == 0, first.output()
    # the log says how long the stop took, step by step (which one held a slow stop)
    stopped = re.search(r"stopped in [0-9.]+ s \((.*)\)", first.output())
    assert stopped is not None, first.output()
    steps = [step.rsplit(" ", 2)[0] for step in stopped.group(1).split(", ")]
    assert steps == ["probes", "page and alerts", "probers and web server", "store"]
    # nothing lost: every request the server answered is an observation in the store
    stored = db_rows(db, "SELECT coalesce(sum(count), 0) FROM observations")[0][0]
    assert stored >= 2
    assert stored == server.hit_count("/pension") + server.hit_count("/medical")
    assert server.hit_count("/kiosk") == 0, "schedule-only services are never probed"

    # start again on the same store: the open incident is taken up, not opened twice
    second = MonitorRun(config, db, log)
    processes.append(second)
    second.wait_ticking()
    count = "SELECT coalesce(sum(count), 0) FROM observations WHERE business = 'pension'"
    before = db_rows(db, count)[0][0]
    wait_for(
        lambda: db_rows(db, count)[0][0] >= before + 4,
        timeout=30,
        what="four more mismatching probes",
    )
    assert db_rows(db, incidents) == [opened]
    assert "resumed 1 open incident" in second.output()

    # the channel puts up its maintenance notice: as planned, the same incident resolves
    server.set("maintenance", "/pension")
    (resolved,) = wait_for(
        lambda: [r for r in db_rows(db, incidents) if r[3] is not None],
        timeout=30,
        what="the incident to resolve",
    )
    assert resolved[:3] == opened[:3]
    assert len(db_rows(db, incidents)) == 1
    assert second.stop() == 0, second.output()
    assert "Traceback" not in second.output()


def test_run_on_a_busy_address_exits_2_with_a_sentence(
    tmp_path: Path, server: ChannelServer
) -> None:
    text = RUN_PLAN.format(url=server.url("/"), pattern=MAINTENANCE_PATTERN)
    config = write_plan(tmp_path / "channels.toml", text)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = python_m("run", "--config", str(config), "--listen", f"127.0.0.1:{port}")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "address already in use" in proc.stderr


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(child) for child in text)
    return found


def test_sigkill_of_run_takes_its_render_worker_with_it(
    tmp_path: Path, server: ChannelServer, processes: list[MonitorRun]
) -> None:
    """A crash must not leave the page's render worker running on its own."""
    text = RUN_PLAN.format(url=server.url("/"), pattern=MAINTENANCE_PATTERN)
    config = write_plan(tmp_path / "channels.toml", text)
    run = MonitorRun(config, tmp_path / "monitor.db", tmp_path / "run.log")
    processes.append(run)
    run.wait_ticking()
    workers = wait_for(lambda: _children(run.pid), timeout=30, what="the render worker")
    run.kill()
    run.wait(timeout=10)
    wait_for(
        lambda: not any(Path(f"/proc/{w}").exists() and _alive(w) for w in workers),
        timeout=10,
        what="the render worker to exit",
    )


def _alive(pid: int) -> bool:
    """Running, not a zombie awaiting its (now gone) parent's wait."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"

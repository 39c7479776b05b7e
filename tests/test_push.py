"""Pushes from the inside: the receiver of `run` (every refusal code, and that none of them
records anything), pushes judged like probes, silence observed as soon as `within` has passed
and again while it lasts, the `push` command as a cron job would run it, and a push token that
never shows up in logs, the page, /metrics or the store.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from helpers import MONITOR, ROOT, async_wait_for, load_plan, write_plan
from servers import closed_port

from monitor.clock import ReplayClock
from monitor.daemon import Daemon
from monitor.judge import Verdict
from monitor.receiver import MAX_BODY, PushRefused, RateLimit, parse_body

TOKEN = "kiosk-push-token-7f3a9c1e5b2d4f60"
WRONG = "kiosk-push-token-0000000000000000"

PLAN = """
[monitor]
timezone = "Asia/Shanghai"

[[channels]]
id = "kiosk"
name = "自助终端"
name_en = "Self-service kiosks"
kind = "offline"
group = "offline"

[[channels.services]]
id = "pension"
name = "养老保险"
[channels.services.push]
token = "${KIOSK_TOKEN}"
within = "WITHIN"

[[channels.services]]
id = "unset"
name = "未配置"
[channels.services.push]
token = "${KIOSK_TOKEN_NOT_SET}"

[[channels.services]]
id = "probed"
name = "网页"
[channels.services.probe]
url = "http://127.0.0.1:9/"

[[channels.services]]
id = "planned"
name = "仅计划"
"""

KEY = ("kiosk", "pension")


def push_plan(tmp_path: Path, within: str = "1h"):
    return load_plan(tmp_path / "channels.toml", PLAN.replace("WITHIN", within))


@pytest.fixture(autouse=True)
def _token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIOSK_TOKEN", TOKEN)
    monkeypatch.delenv("KIOSK_TOKEN_NOT_SET", raising=False)


async def started(tmp_path: Path, within: str = "1h") -> Daemon:
    daemon = Daemon(push_plan(tmp_path, within), tmp_path / "monitor.db", tmp_path / "site", port=0)
    await daemon.start(schedule=False)
    return daemon


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    running = await started(tmp_path)
    try:
        yield running
    finally:
        await running.stop()


async def push(
    daemon: Daemon,
    service: str = "pension",
    body: bytes | str | None = None,
    token: str | None = TOKEN,
    headers: dict[str, str] | None = None,
    channel: str = "kiosk",
) -> tuple[int, dict]:
    """POST one push; (status, JSON answer)."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    data = body.encode() if isinstance(body, str) else body
    url = f"http://127.0.0.1:{daemon.port}/push/{channel}/{service}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=data, headers=sent) as response,
    ):
        return response.status, await response.json(content_type=None)


def stored(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT business, serving, reason FROM observations").fetchall()


# --- what is refused, and that nothing of it is recorded ------------------------------------


async def test_every_refusal_code_and_none_records_anything(daemon: Daemon) -> None:
    refusals = {
        "no such service": (404, dict(service="nope")),
        "no such channel": (404, dict(channel="nope")),
        "a probed service": (404, dict(service="probed")),
        "a schedule-only service": (404, dict(service="planned")),
        "no token": (401, dict(token=None)),
        "a wrong token": (401, dict(token=WRONG)),
        "a token with a prefix of the right one": (401, dict(token=TOKEN[:-1])),
        "another scheme": (401, dict(token=None, headers={"Authorization": f"Basic {TOKEN}"})),
        "a push whose token is not configured": (401, dict(service="unset")),
        "a body over 64 KiB": (413, dict(body=b"{" + b" " * MAX_BODY + b"}")),
        "not JSON": (400, dict(body="serving=false")),
        "not an object": (400, dict(body="[true]")),
        "serving not a bool": (400, dict(body='{"serving": "no"}')),
        "serving as 0": (400, dict(body='{"serving": 0}')),
        "a negative count": (400, dict(body='{"count": -1}')),
        "a fractional count": (400, dict(body='{"count": 1.5}')),
        "a bool count": (400, dict(body='{"count": true}')),
        "a reason over 200 characters": (400, dict(body=json.dumps({"reason": "x" * 201}))),
        "a reason not a string": (400, dict(body='{"reason": 3}')),
        "an unknown field": (400, dict(body='{"servng": false}')),
    }
    daemon.push.monotonic = itertools.count(0.0, 1.0).__next__  # a second between requests
    for what, (code, kwargs) in refusals.items():
        status, answer = await push(daemon, **kwargs)
        assert status == code, what
        assert answer["error"] and answer["error_zh"], what
    await daemon.pipeline.flush()
    assert stored(daemon.db_path) == []
    assert KEY not in daemon.pipeline.states


async def test_a_chunked_body_over_the_cap_is_refused_without_reading_it_all(
    daemon: Daemon,
) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(64):  # 4 MiB offered, 16 KiB at a time, with no Content-Length
            sent += 1
            yield b" " * 16384

    url = f"http://127.0.0.1:{daemon.port}/push/kiosk/pension"
    async with aiohttp.ClientSession() as session:
        try:
            async with session.post(
                url, data=chunks(), headers={"Authorization": f"Bearer {TOKEN}"}
            ) as response:
                assert response.status == 413
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
            pass  # the server may close the connection before the client finished writing
    assert KEY not in daemon.pipeline.states


async def test_a_body_that_trickles_is_refused_in_time(daemon: Daemon) -> None:
    daemon.push.body_timeout = 0.5
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    try:
        writer.write(
            b"POST /push/kiosk/pension HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
            + f"Authorization: Bearer {TOKEN}\r\n\r\n{{".encode()
        )
        await writer.drain()  # one byte of ten, then nothing
        status_line = await asyncio.wait_for(reader.readline(), timeout=10)
    finally:
        writer.close()
    assert status_line.split()[1] == b"408"
    assert KEY not in daemon.pipeline.states


async def test_more_than_ten_pushes_a_second_are_refused(daemon: Daemon) -> None:
    answers = await asyncio.gather(*(push(daemon) for _ in range(15)))
    codes = sorted(status for status, _ in answers)
    assert 429 in codes
    assert codes.count(202) <= 10
    assert set(codes) == {202, 429}


def test_rate_limit_is_a_sliding_second() -> None:
    limit = RateLimit(limit=10, window=1.0)
    assert all(limit.allow(KEY, 100.0 + i * 0.01) for i in range(10))
    assert not limit.allow(KEY, 100.5)
    assert limit.allow(("kiosk", "other"), 100.5), "each service has its own budget"
    assert limit.allow(KEY, 101.0)  # the first of the ten is a second old


# --- accepted pushes are observations judged like probes ------------------------------------


@pytest.mark.parametrize(
    ("body", "serving", "reason"),
    [
        (b"", True, "push"),
        (b"{}", True, "push"),
        (
            b'{"serving": false, "reason": "\\u83dc\\u5355\\u5df2\\u5173\\u95ed"}',
            False,
            "pushed: 菜单已关闭",
        ),
        (b'{"count": 3}', True, "pushed: count 3"),
        (b'{"count": 0}', False, "pushed: count 0"),
        (b'{"serving": true, "count": 0}', True, "pushed: count 0"),
        (b'{"count": 2, "reason": "still open"}', True, "pushed: still open"),
        (b'{"reason": "line\\nbreak\\u0007"}', True, "pushed: line break"),
    ],
)
def test_push_bodies(body: bytes, serving: bool, reason: str) -> None:
    report = parse_body(body)
    assert (report.serving, report.reason) == (serving, reason)


async def test_accepted_pushes_are_judged_and_stored(daemon: Daemon) -> None:
    status, answer = await push(daemon)
    assert status == 202
    assert answer["accepted"] is True
    assert (answer["serving"], answer["expected"]) == (True, "up")
    status, answer = await push(daemon, body='{"serving": false, "reason": "关闭"}')
    assert status == 202 and answer["serving"] is False
    status, answer = await push(daemon, body='{"serving": false}')
    # two in a row that break "up": the judge's failure threshold (2) opens an incident
    assert answer["verdict"] == Verdict.UNEXPECTED_DOWN
    # a verdict stays fresh between pushes that come within `within` (1h here)
    ref = daemon.plan.service(*KEY)
    later = daemon.pipeline.states[KEY].last_at + timedelta(minutes=59)
    assert daemon.pipeline.verdict(ref, later) == Verdict.UNEXPECTED_DOWN
    await daemon.pipeline.flush()
    assert stored(daemon.db_path) == [
        ("pension", 1, "push"),
        ("pension", 0, "pushed: 关闭"),
        ("pension", 0, "push"),
    ]


async def test_a_push_whose_token_is_not_set_is_unknown_and_says_which_variable(
    daemon: Daemon,
) -> None:
    state = daemon.pipeline.states[("kiosk", "unset")]
    assert state.last_reason == "not configured: set KIOSK_TOKEN_NOT_SET"
    assert daemon.pipeline.verdict(daemon.plan.service("kiosk", "unset")) == Verdict.UNKNOWN
    assert ("kiosk", "unset") not in daemon.push._timers, "no silence for what cannot push"


# --- silence ----------------------------------------------------------------------------------


async def test_silence_is_observed_when_within_has_passed_and_again_while_it_lasts(
    tmp_path: Path,
) -> None:
    loop = asyncio.get_running_loop()
    early = 0.01  # the loop may run a timer up to its clock's resolution early
    started_at = loop.time()
    daemon = await started(tmp_path, within="1s")
    try:
        state = await async_wait_for(
            lambda: daemon.pipeline.states.get(KEY), timeout=10, what="the first silence"
        )
        first = loop.time()
        assert first - started_at >= 1.0 - early, "silence is counted from the start, not before"
        assert (state.last_serving, state.last_reason) == (False, "no push for 1s")
        # a second silent `within` is the judge's second failure: the incident opens
        await async_wait_for(
            lambda: daemon.pipeline.verdict(daemon.plan.service(*KEY)) == Verdict.UNEXPECTED_DOWN,
            timeout=10,
            what="the incident of a lasting silence",
        )
        assert loop.time() - started_at >= 2.0 - early

        # pushes resolve it and restart the clock: the next silence comes `within` after
        status, _ = await push(daemon)
        pushed_at = loop.time()
        status, answer = await push(daemon)
        assert status == 202 and answer["verdict"] == Verdict.OK
        await async_wait_for(
            lambda: daemon.pipeline.states[KEY].last_serving is False,
            timeout=10,
            what="the next silence",
        )
        assert loop.time() - pushed_at >= 1.0 - early
    finally:
        await daemon.stop()
    assert daemon.push._timers == {}, "stopping cancels the timers"


async def test_on_a_replayed_clock_silence_is_the_replays_to_observe(tmp_path: Path) -> None:
    start = datetime(2022, 6, 22, 12, tzinfo=UTC)
    plan = load_plan(tmp_path / "channels.toml", PLAN.replace("WITHIN", "1s"))
    daemon = Daemon(plan, tmp_path / "m.db", tmp_path / "site", port=0, clock=ReplayClock(start))
    await daemon.start(schedule=False)
    try:
        assert daemon.push._timers == {}, "no wall-clock timers on a replayed clock"
        result = await daemon.push.silence(plan.service(*KEY))
        assert (result.observation.at, result.observation.reason) == (start, "no push for 1s")
    finally:
        await daemon.stop()


# --- the push command -------------------------------------------------------------------------


async def run_push(*args: str, token: str | None = TOKEN) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CHANNEL_MONITOR_PUSH_TOKEN"}
    env["PYTHONPATH"] = str(ROOT)
    if token is not None:
        env["CHANNEL_MONITOR_PUSH_TOKEN"] = token
    process = await asyncio.create_subprocess_exec(
        *MONITOR,
        "push",
        *args,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_push_command(daemon: Daemon) -> None:
    where = ["--url", f"http://127.0.0.1:{daemon.port}", "--channel", "kiosk"]
    code, out, err = await run_push(*where, "--service", "pension")
    assert (code, err) == (0, "")
    assert "accepted" in out
    code, out, _ = await run_push(
        *where, "--service", "pension", "--down", "--reason", "菜单已关闭", "--count", "0"
    )
    assert code == 0
    assert daemon.pipeline.states[KEY].last_reason == "pushed: 菜单已关闭"
    assert daemon.pipeline.states[KEY].last_serving is False

    code, out, err = await run_push(*where, "--service", "pension", token=WRONG)
    assert code == 1 and "401" in err and WRONG not in err + out
    code, _, err = await run_push(*where, "--service", "probed")
    assert code == 1 and "404" in err
    code, _, err = await run_push(*where, "--service", "pension", token=None)
    assert code == 2 and "CHANNEL_MONITOR_PUSH_TOKEN" in err
    code, _, err = await run_push(*where, "--service", "pension", "--count", "-1")
    assert code == 2

    refused = ["--url", f"http://127.0.0.1:{closed_port()}", "--channel", "kiosk"]
    code, out, err = await run_push(*refused, "--service", "pension")
    assert code == 1
    assert "cannot reach" in err and "Traceback" not in err
    assert TOKEN not in out + err


async def test_push_command_bad_address_or_token_is_a_sentence_without_the_token() -> None:
    """Addresses and tokens the client cannot send: exit 2 and a sentence, never a traceback,
    and never the token (http.client's own error for a header with a line break quotes it)."""
    secret = "kiosk-SECRET-7f3a9c1e5b2d"
    sends = ["--channel", "kiosk", "--service", "pension"]
    here = f"http://127.0.0.1:{closed_port()}"
    cases = [
        (["--url", "http://[::1:80/"], secret, "--url"),
        (["--url", "http://h:99999/"], secret, "--url"),
        (["--url", "http://:80/"], secret, "--url"),
        (["--url", here + "/路径"], secret, "--url"),
        (["--url", here], f"kiosk-\n{secret}", "PUSH_TOKEN"),
        (["--url", here], f"{secret}-令牌", "PUSH_TOKEN"),
    ]
    for url, token, said in cases:
        code, out, err = await run_push(*url, *sends, token=token)
        assert code == 2, (url, err)
        assert said in err and "Traceback" not in err
        assert secret not in out + err


# --- the token never leaves the process -----------------------------------------------------


def test_the_token_never_shows_in_logs_page_metrics_or_store(tmp_path: Path) -> None:
    """A real `run` at debug level (stricter than info) takes good and bad pushes; then the
    token is looked for in its output, the page, /metrics and the SQLite files' bytes."""
    import time
    import urllib.request

    config = write_plan(tmp_path / "channels.toml", PLAN.replace("WITHIN", "1s"))
    port = closed_port()
    log = tmp_path / "run.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "KIOSK_TOKEN": TOKEN}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*MONITOR, "run", "--config", str(config), "--listen", f"127.0.0.1:{port}", "-v"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def post(token: str, body: bytes = b"") -> int:
            request = urllib.request.Request(
                f"{base}/push/kiosk/pension",
                data=body,
                headers={"Authorization": f"Bearer {token}"},
                method="POST",
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    return response.status
            except urllib.error.HTTPError as exc:
                return exc.code

        deadline = time.monotonic() + 30
        while True:
            try:
                if post(TOKEN) == 202:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "run did not accept a push within 30 s"
            time.sleep(0.1)
        assert post(WRONG) == 401
        assert post(TOKEN, b'{"serving": false, "reason": "token?"}') == 202
        assert post(TOKEN, b"[") == 400
        time.sleep(1.5)  # one silence too (within 1s), so every kind of observation is stored
        pages = []
        for path in ("/", "/metrics", "/status.json", "/healthz"):
            try:
                with urllib.request.urlopen(base + path, timeout=5) as response:
                    pages.append(response.read())
            except urllib.error.HTTPError as exc:
                pages.append(exc.read())
    finally:
        process.terminate()
        process.wait(timeout=15)
    secrets = [TOKEN.encode(), WRONG.encode()]
    logged = log.read_bytes()
    assert b"push" in logged.lower() or b"listening" in logged
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "channels.toml"]
    assert any(p.name.startswith("monitor.db") for p in files)
    for secret in secrets:
        assert secret not in logged
        for page in pages:
            assert secret not in page
        for path in files:
            assert secret not in path.read_bytes(), path.name
    with sqlite3.connect(tmp_path / "monitor.db") as conn:
        reasons = {r for (r,) in conn.execute("SELECT reason FROM observations")}
    assert {"push", "pushed: token?"} <= reasons


@pytest.mark.parametrize(
    "reason",
    [
        "push",
        "pushed: 菜单已关闭",
        "pushed: count 3",
        "no push for 5m",
        "rendered text matches maintenance notice",
        "rendered text does not match",
        "browser not available: install Chromium (apt-get install chromium)",
    ],
)
def test_push_and_browser_reasons_have_both_languages(reason: str) -> None:
    from monitor.alerts.message import reason_zh
    from monitor.reasons import PHRASES as REASON_PHRASES
    from monitor.site.words import reason_text

    assert any(reason.startswith(phrase) for phrase in REASON_PHRASES)
    assert reason_text(reason, "zh") != "其他原因"
    assert reason_text(reason, "en") != "other reason"
    assert "菜单" not in reason_text(reason, "zh"), "a pusher's own words are not published"
    assert reason_zh(reason) != reason


# --- the deadline asked with an instant (the demo's replay clock) -----------------------------


def _body(raw: bytes):
    async def read() -> bytes | None:
        return raw

    return read


async def test_overdue_follows_the_clock_it_is_asked_with(tmp_path: Path) -> None:
    """With the timers off (the demo), the replay asks `overdue(at)`: a silence is found at
    the first instant `within` after the last push on the replay clock, wherever the wall
    clock is; pushes handed over in process pass the same checks as POST /push/..."""
    start = datetime(2022, 6, 22, 10, tzinfo=UTC)
    clock = ReplayClock(start)
    plan = push_plan(tmp_path, "5m")
    daemon = Daemon(plan, tmp_path / "m.db", tmp_path / "site", port=0, clock=clock)
    await daemon.start(schedule=False, serve=False)
    receiver = daemon.push
    try:
        assert receiver._timers == {}, "no wall-clock timers in a replay"
        assert await receiver.overdue(start + timedelta(minutes=4, seconds=59)) == []
        clock.set(start + timedelta(minutes=5))
        found = await receiver.overdue(clock.now())
        seen = [(r.ref.key, r.observation.serving, r.observation.reason) for r in found]
        assert seen == [(KEY, False, "no push for 5m")]
        assert found[0].observation.at == start + timedelta(minutes=5)

        clock.set(start + timedelta(minutes=7))
        result = await receiver.receive(KEY, f"Bearer {TOKEN}", _body(b""))
        assert (result.observation.at, result.observation.serving) == (clock.now(), True)
        assert await receiver.overdue(start + timedelta(minutes=11, seconds=59)) == []
        assert len(await receiver.overdue(start + timedelta(minutes=12))) == 1

        with pytest.raises(PushRefused) as refused:
            await receiver.receive(KEY, "Bearer wrong-token-of-some-length", _body(b""))
        assert refused.value.status == 401
        # the rate limit counts seconds of the replay clock: a push per replay second is fine,
        # ten more within one replay second are not
        for _ in range(12):
            clock.advance(timedelta(seconds=1))
            await receiver.receive(KEY, f"Bearer {TOKEN}", _body(b'{"count": 3}'))
        for _ in range(9):
            await receiver.receive(KEY, f"Bearer {TOKEN}", _body(b""))
        with pytest.raises(PushRefused) as refused:
            await receiver.receive(KEY, f"Bearer {TOKEN}", _body(b""))
        assert refused.value.status == 429
    finally:
        await daemon.stop()

"""Issue 24's done-when: a plan that is not the 2022 one (tests/data/own-plan.toml: http pages
and a JSON back end, a browser page, a prometheus query, pushes, dns, a certificate window
inside a freeze, a webhook with a secret) replays with `demo --config`, with and without
`--faults`, and `rehearse` holds local stand-ins to it at high speed.

The stand-ins (aiohttp on 127.0.0.1) follow the plan on the rehearsal's own time, which
`rehearse` prints as it starts, except where the test breaks it: the withdrawal page keeps
serving through the freeze (应停未停), a hall pushes "serving" during it, and the balance page
is switched off and on again while it is expected up (应开未开). Every wait polls with a
deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path

import aiohttp
from aiohttp import web
from servers import closed_port

from monitor.plan import Plan
from monitor.plan.load import load_config

ROOT = Path(__file__).resolve().parent.parent
PLAN = ROOT / "tests" / "data" / "own-plan.toml"
FAULTS = ROOT / "tests" / "data" / "own-faults.toml"
SECRET = "rehearsal-webhook-secret"
HALL_TOKEN = "hall-push-token-0123456789"
#: A plan hour a real second: the freeze's first 19 hours pass in 19 s.
SPEED = 3600.0
START = "2026-12-18T16:30"
UNTIL = "2026-12-19T12:00"
#: The longest the whole rehearsal may take (the brief bounds the test at 90 s).
DEADLINE = 75.0


def _env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTAL_", "APP_", "BANK_"))}
    env.pop("KIOSK_PUSH_TOKEN", None)
    env.pop("HALL_PUSH_TOKEN", None)
    env["PYTHONPATH"] = str(ROOT)
    env["DUTY_WEBHOOK_SECRET"] = SECRET
    env.setdefault("DUTY_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    env.update(more)
    return env


async def _command(*args: str, env: dict[str, str], cwd: Path, timeout: float) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitor", *args,
        cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode or 0, out.decode()


def test_demo_replays_our_own_plan_with_and_without_faults(tmp_path: Path) -> None:
    """(a) `demo --config` on a plan of our own: no traceback, no incident without faults,
    and each fault of the file in its direction with it; a bad faults file exits 2 naming
    the file, the key path and what was expected."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[[faults]]\nservice = "portal/withdrawl"\nbehaviour = "sideways"\n')

    async def both() -> list[tuple[int, str]]:
        base = ("demo", "--config", str(PLAN), "--no-serve")
        env = _env()
        return [
            await _command(*base, "--site", "a", env=env, cwd=tmp_path, timeout=120),
            await _command(
                *base, "--site", "b", "--faults", str(FAULTS), env=env, cwd=tmp_path, timeout=120
            ),
            await _command(
                *base, "--site", "c", "--faults", str(bad), env=env, cwd=tmp_path, timeout=60
            ),
        ]

    (plain_rc, plain), (faulty_rc, faulty), (bad_rc, refused) = asyncio.run(both())
    assert plain_rc == 0 and "Traceback" not in plain, plain
    assert "0 incident(s)" in plain and "no faults" in plain
    assert "dns: the simulator serves no DNS" in plain
    assert (tmp_path / "a" / "index.html").exists()
    assert faulty_rc == 0 and "Traceback" not in faulty, faulty
    opened = re.findall(r"OPEN   #\d+ \[(\w+)\] (.+?) / (.+?): (应\S+)", faulty)
    assert {(kind, service, word) for kind, _, service, word in opened} == {
        ("http", "提取业务", "应停未停"),  # up
        ("http", "余额查询", "应开未开"),  # slow
        ("http", "贷款还款", "应开未开"),  # down
        ("push", "自助终端", "应开未开"),  # silent
    }, faulty
    assert bad_rc == 2 and "Traceback" not in refused, refused
    assert f"{bad}: faults[0].service:" in refused and 'did you mean "portal/withdrawal"' in refused
    assert "faults[0].behaviour: expected one of up, down, slow, silent" in refused
    assert "faults[0].from: missing" in refused


class StandIns:
    """The channels' own systems, following the plan on the rehearsal's time unless told
    otherwise, and a webhook receiver that keeps what it is sent (with the real instant)."""

    def __init__(self) -> None:
        self.plan = Plan(load_config(PLAN, alerts=False))
        self.origin: tuple[datetime, datetime] | None = None  # (real, plan) from rehearse
        self.forced: dict[str, bool] = {"withdrawal": True}  # serves through the freeze
        self.alerts: list[tuple[float, dict, str]] = []

    def plan_now(self) -> datetime:
        assert self.origin is not None
        real, plan = self.origin
        return plan + (datetime.now(real.tzinfo) - real) * SPEED

    def serving(self, channel: str, service: str) -> bool:
        if service in self.forced:
            return self.forced[service]
        if self.origin is None:
            return True
        ref = self.plan.service(channel, service)
        return self.plan.expected(ref, self.plan_now()).state != "down"

    async def page(self, request: web.Request) -> web.Response:
        service = request.match_info["service"]
        if not self.serving("portal", service):
            return web.Response(status=503, text="系统升级，暂停办理")
        return web.Response(text="<p>业务办理 证明打印</p>", content_type="text/html")

    async def loan(self, request: web.Request) -> web.Response:
        open_ = self.serving("app", "loan")
        return web.json_response(
            {"status": "open" if open_ else "closed", "service": {"enabled": open_}}
        )

    async def query(self, request: web.Request) -> web.Response:
        value = "3" if self.serving("bank", "deposit") else "0"
        result = [{"metric": {}, "value": [time.time(), value]}]
        return web.json_response(
            {"status": "success", "data": {"resultType": "vector", "result": result}}
        )

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.alerts.append(
            (time.monotonic(), body, request.headers.get("X-Channel-Monitor-Signature", ""))
        )
        return web.json_response({"ok": True})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/portal/{service}", self.page)
        app.router.add_get("/app/loan/status", self.loan)
        app.router.add_route("*", "/prom/api/v1/query", self.query)
        app.router.add_post("/hook", self.hook)
        return app

    def opened(self, service: str, direction: str) -> float | None:
        """When (monotonic) the opening alert of `service` in `direction` arrived."""
        for at, body, _ in self.alerts:
            if (
                body.get("kind") == "opened"
                and body.get("business") == service
                and body.get("direction") == direction
            ):
                return at
        return None


async def _until(condition: object, deadline: float, what: str) -> None:
    """Poll `condition` (a callable) until true, failing at `deadline` (monotonic)."""
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within the deadline: {what}"
        await asyncio.sleep(0.05)


def test_rehearse_holds_stand_ins_to_our_plan_in_both_directions(tmp_path: Path) -> None:
    """(b) `rehearse` at a plan hour a real second: the incidents the plan implies open in
    both directions within the thresholds, everything says it is a rehearsal, and the run
    ends at --until with the report."""
    stand = StandIns()
    port = closed_port()
    thresholds = 2  # failure_threshold, success_threshold of the plan, in 1 s intervals
    grace, interval, timeout = 1.0, 1.0, 2.0  # real seconds, as the plan says

    async def main() -> dict:
        runner = web.AppRunner(stand.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        env = _env(
            PORTAL_URL=f"{base}/portal",
            APP_API_URL=f"{base}/app",
            APP_API_TOKEN="app-token",
            BANK_PROMETHEUS_URL=f"{base}/prom",
            HALL_PUSH_TOKEN=HALL_TOKEN,
            DUTY_WEBHOOK_URL=f"{base}/hook",
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "monitor", "rehearse", "--config", str(PLAN),
            "--from", START, "--speed", f"{SPEED:g}", "--until", UNTIL,
            "--listen", f"127.0.0.1:{port}", "--db", str(tmp_path / "r.db"),
            "--site", str(tmp_path / "site"), "--notices", str(tmp_path / "notices.toml"),
            cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        began = time.monotonic()
        deadline = began + DEADLINE
        out: list[str] = []
        found: dict = {}
        try:
            assert process.stdout is not None
            while stand.origin is None:
                line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
                assert line, "".join(out)
                out.append(line)
                match = re.search(r"plan time (\S+) was real time (\S+)", line)
                if match:
                    plan0, real0 = (datetime.fromisoformat(g) for g in match.groups())
                    stand.origin = (real0, plan0)
            reader = asyncio.create_task(process.stdout.read())
            real0, plan0 = stand.origin
            freeze = datetime.fromisoformat("2026-12-18T17:00:00+08:00")
            freeze_real = time.monotonic() + ((freeze - stand.plan_now()).total_seconds() / SPEED)
            # 应停未停: the withdrawal page keeps serving into the freeze
            await _until(
                lambda: stand.opened("withdrawal", "unexpected_up"), deadline, "unexpected_up"
            )
            found["up_after"] = stand.opened("withdrawal", "unexpected_up") - freeze_real
            # a hall still open during the freeze, pushed from inside
            async with aiohttp.ClientSession() as session:
                answers = []
                for _ in range(thresholds):
                    async with session.post(
                        f"http://127.0.0.1:{port}/push/halls/counter",
                        headers={"Authorization": f"Bearer {HALL_TOKEN}"},
                        json={"serving": True, "reason": "窗口仍在受理"},
                    ) as response:
                        answers.append((response.status, await response.json()))
                found["push"] = answers
                # 应开未开: the balance page, expected up all along, goes off
                stand.forced["balance"] = False
                off = time.monotonic()
                await _until(
                    lambda: stand.opened("balance", "unexpected_down"), deadline, "unexpected_down"
                )
                found["down_after"] = stand.opened("balance", "unexpected_down") - off
                stand.forced["balance"] = True
                await _until(
                    lambda: any(
                        b.get("kind") == "resolved" and b.get("business") == "balance"
                        for _, b, _ in stand.alerts
                    ),
                    deadline,
                    "balance resolved",
                )
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    found["metrics"] = await response.text()
                async with session.get(f"http://127.0.0.1:{port}/") as response:
                    found["page"] = await response.text()
                await _until(
                    lambda: (tmp_path / "site" / "en" / "index.html").exists(), deadline, "page"
                )
                found["page_en"] = (tmp_path / "site" / "en" / "index.html").read_text()
            rc = await asyncio.wait_for(process.wait(), max(1.0, deadline - time.monotonic()))
            out.append((await reader).decode())
            found["rc"] = rc
            found["elapsed"] = time.monotonic() - began
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await runner.cleanup()
        found["out"] = "".join(out)
        return found

    found = asyncio.run(main())
    out = found["out"]
    print(f"rehearsal at speed {SPEED:g}: unexpected_up {found['up_after']:.1f} s after the "
          f"freeze began, unexpected_down {found['down_after']:.1f} s after the page went off, "
          f"whole run {found['elapsed']:.1f} s")  # fmt: skip
    # within the thresholds: grace, then `thresholds` probes (each up to its timeout)
    assert 0 < found["up_after"] <= grace + thresholds * interval + timeout + 1.5, found
    assert 0 < found["down_after"] <= thresholds * interval + timeout + 1.5, found
    assert [status for status, _ in found["push"]] == [202, 202]
    assert found["push"][-1][1]["verdict"] == "unexpected_up", found["push"]
    # every alert says it is a rehearsal, in both languages, and is signed with the secret
    assert stand.alerts
    for _, body, signature in stand.alerts:
        assert body["title"].startswith("【演练】"), body
        assert body["title_en"].startswith("[rehearsal] "), body
        assert signature, "the webhook's secret signs every delivery"
    assert re.search(r'channel_monitor_expected_up\{[^}]*rehearsal="true"', found["metrics"])
    assert 'class="rehearsal"' in found["page"] and "演练" in found["page"]
    assert "Rehearsal" in found["page"] and 'class="rehearsal"' in found["page_en"]
    # it ended at --until by itself, with the report on its own store
    assert found["rc"] == 0, out
    assert "Traceback" not in out, out
    assert "rehearsal ended at plan time 2026-12-19 12:00" in out, out
    assert "report against the plan" in out and "应停未停 unexpected_up" in out, out
    assert "应开未开 unexpected_down" in out, out
    assert found["elapsed"] < DEADLINE
    assert not (tmp_path / "monitor.db").exists()

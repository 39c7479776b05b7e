"""Browser probes against real local servers and Debian's Chromium through Playwright: a notice
written by script after load (which an HTTP probe of the same page misses), settling by network
idle or a selector within the timeout, status and network failures in the HTTP probe's words,
one browser process reused and started again after it is killed, a fresh context per probe,
headers kept to the probed origin, at most two pages at once, HTTP probes never held up, and
`unknown` with what to install when Playwright or Chromium is missing.

Chromium or Playwright missing fails these tests in CI (`CI=true`) and skips them elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from time import perf_counter

import pytest
from aiohttp import web
from helpers import async_wait_for, load_plan, missing, python_m, write_plan
from servers import RawServer, aiohttp_server, closed_port, make_server_cert, never_answer

from monitor.clock import RealClock
from monitor.daemon import Daemon
from monitor.kinds.browser import BrowserProbe, BrowserProber, find_chromium, missing_parts
from monitor.kinds.http import Prober
from monitor.pipeline import Pipeline, make_probers
from monitor.store import Store

NOTICE = "系统升级，暂停办理 · service paused for the upgrade"
NORMAL = "业务办理 · online service"
TIMEOUT = timedelta(seconds=5)
#: A generous allowance over a probe's timeout on a busy machine (a bound, not a measurement).
MARGIN = 3

SHELL = """<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,">
<title>portal</title></head><body><div id="app">加载中 loading</div><script>
fetch('/api/state').then(r => r.json()).then(s => {
  const p = document.createElement('p'); p.id = 'status'; p.textContent = s.notice;
  document.body.appendChild(p);
});
</script></body></html>"""

#: Polls every 100 ms forever: never network idle; shows the notice at once.
POLLING = """<!doctype html><html><head><link rel="icon" href="data:,"></head><body>
<p>系统升级，暂停办理</p><script>setInterval(() => fetch('/api/ping'), 100);</script>
</body></html>"""

#: Sets a cookie from script, and asks another origin for a resource.
TRACKED = """<!doctype html><html><head><link rel="icon" href="data:,"></head><body>
<p>业务办理</p><img src="{other}/pixel.gif"><script>document.cookie = 'seen=1';</script>
</body></html>"""


def page_probe(url: str, **fields: object) -> BrowserProbe:
    """A browser probe as the plan holds it, looking for the notice unless told otherwise."""
    return BrowserProbe(
        kind="browser", url=url, **{"text_not_matches": "系统升级|暂停办理", **fields}
    )


@dataclass
class Portal:
    """A portal whose status line is written by script from `/api/state`."""

    notice: str = NORMAL
    delay: float = 0.0
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    held: int = 0
    max_held: int = 0
    headers: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    base: str = ""

    def app(self, other: str = "") -> web.Application:
        async def shell(_: web.Request) -> web.Response:
            return web.Response(text=SHELL, content_type="text/html")

        async def state(_: web.Request) -> web.Response:
            await asyncio.sleep(self.delay)
            return web.json_response({"notice": self.notice})

        async def hold(_: web.Request) -> web.Response:
            self.held += 1
            self.max_held = max(self.max_held, self.held)
            try:
                await self.gate.wait()
            finally:
                self.held -= 1
            return web.Response(text=f"<p>{NORMAL}</p>", content_type="text/html")

        async def status(request: web.Request) -> web.Response:
            code = int(request.match_info["code"])
            text = "" if request.query.get("empty") else f"<p>{NORMAL}</p>"
            return web.Response(status=code, text=text, content_type="text/html")

        async def page(text: str) -> web.Response:
            return web.Response(text=text, content_type="text/html")

        async def ping(_: web.Request) -> web.Response:
            return await page("pong")

        async def polling(_: web.Request) -> web.Response:
            return await page(POLLING)

        async def tracked(request: web.Request) -> web.Response:
            self.headers.setdefault("tracked", []).append(dict(request.headers))
            return await page(TRACKED.format(other=other))

        async def record(request: web.Request) -> web.Response:
            self.headers.setdefault(request.path, []).append(dict(request.headers))
            return web.Response(body=b"GIF89a", content_type="image/gif")

        app = web.Application()
        app.router.add_get("/", shell)
        app.router.add_get("/api/state", state)
        app.router.add_get("/api/ping", ping)
        app.router.add_get("/hold", hold)
        app.router.add_get("/status/{code}", status)
        app.router.add_get("/polling", polling)
        app.router.add_get("/tracked", tracked)
        app.router.add_get("/pixel.gif", record)
        return app


def require_browser() -> None:
    what = missing_parts()
    if what is not None:
        missing(f"browser probes need {what}")


@pytest.fixture
async def prober() -> AsyncIterator[BrowserProber]:
    require_browser()
    browser = BrowserProber()
    try:
        yield browser
    finally:
        await browser.close()


@pytest.fixture
async def portal() -> AsyncIterator[Portal]:
    state = Portal()
    async with aiohttp_server(state.app()) as base:
        state.base = base
        try:
            yield state
        finally:
            state.gate.set()


def chromium_processes() -> list[int]:
    """Chromium processes started (through Playwright's driver) by this test process."""
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            names[int(entry.name)] = (entry / "comm").read_text().strip()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        if names.get(pid, "").startswith("chrom"):
            found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def at() -> datetime:
    return datetime.now(UTC)


# --- what the page shows --------------------------------------------------------------------


async def test_notice_written_by_script_is_seen_where_an_http_probe_misses_it(
    prober: BrowserProber, portal: Portal
) -> None:
    from monitor.kinds.http import Probe

    portal.notice = NOTICE
    http = Probe(url=portal.base + "/", body_not_matches="系统升级|暂停办理")
    async with Prober() as plain:
        seen_by_get = await plain.probe(http, TIMEOUT, at())
    assert seen_by_get.serving, "the notice is not in the HTML: a GET cannot see it"

    observation = await prober.probe(page_probe(portal.base + "/"), TIMEOUT, at())
    assert not observation.serving
    assert observation.reason == "rendered text matches maintenance notice"
    assert observation.status_code == 200

    portal.notice = NORMAL
    observation = await prober.probe(page_probe(portal.base + "/"), TIMEOUT, at())
    assert observation.serving, observation.reason
    assert observation.reason == "HTTP 200"


async def test_text_matches_on_rendered_text(prober: BrowserProber, portal: Portal) -> None:
    spec = page_probe(portal.base + "/", text_matches="业务办理", text_not_matches=None)
    assert (await prober.probe(spec, TIMEOUT, at())).serving
    portal.notice = "页面走丢了 · page not found"
    observation = await prober.probe(spec, TIMEOUT, at())
    assert (observation.serving, observation.reason) == (False, "rendered text does not match")


async def test_wait_for_a_selector_written_late(prober: BrowserProber, portal: Portal) -> None:
    portal.delay = 1.0  # the status line comes a second after load
    spec = page_probe(portal.base + "/", wait_for="#status", text_matches="业务办理")
    observation = await prober.probe(spec, TIMEOUT, at())
    assert observation.serving, observation.reason


async def test_selector_that_never_comes_is_a_timeout_within_the_bound(
    prober: BrowserProber, portal: Portal
) -> None:
    spec = page_probe(portal.base + "/", wait_for="#nowhere", text_not_matches=None)
    await prober.start()  # starting Chromium is not part of any probe's time
    started = perf_counter()
    observation = await prober.probe(spec, timedelta(seconds=3), at())
    assert (observation.serving, observation.reason) == (False, "timeout after 3s")
    assert perf_counter() - started < 3 + MARGIN  # bounded by the timeout

    portal.notice = NOTICE  # the notice is there, the selector is not: say what it shows
    noticed = page_probe(portal.base + "/", wait_for="#nowhere")
    observation = await prober.probe(noticed, timedelta(seconds=3), at())
    assert observation.reason == "rendered text matches maintenance notice"


async def test_a_page_that_never_goes_idle_is_judged_by_what_it_shows(
    prober: BrowserProber, portal: Portal
) -> None:
    started = perf_counter()
    observation = await prober.probe(
        page_probe(portal.base + "/polling"), timedelta(seconds=3), at()
    )
    assert observation.reason == "rendered text matches maintenance notice"
    assert perf_counter() - started < 3 + MARGIN


# --- status and network failures in the HTTP probe's words ----------------------------------


@pytest.mark.parametrize("empty", [False, True], ids=["with-body", "empty-body"])
async def test_error_status_of_the_main_document(
    prober: BrowserProber, portal: Portal, empty: bool
) -> None:
    url = portal.base + "/status/503" + ("?empty=1" if empty else "")
    observation = await prober.probe(page_probe(url), TIMEOUT, at())
    assert (observation.serving, observation.reason) == (False, "HTTP 503")
    assert observation.status_code == 503


async def test_network_failures_use_the_http_probes_reasons(
    prober: BrowserProber, tmp_path: Path
) -> None:
    refused = await prober.probe(page_probe(f"http://127.0.0.1:{closed_port()}/"), TIMEOUT, at())
    assert (refused.serving, refused.reason) == (False, "connection refused")
    dns = await prober.probe(page_probe("http://no-such-host.invalid/"), TIMEOUT, at())
    assert (dns.serving, dns.reason) == (False, "DNS lookup failed")

    await prober.start()
    async with RawServer(never_answer) as silent:
        started = perf_counter()
        observation = await prober.probe(page_probe(silent.url()), timedelta(seconds=2), at())
    assert (observation.serving, observation.reason) == (False, "timeout after 2s")
    assert perf_counter() - started < 2 + MARGIN

    # (Chromium checks trust before dates, so an expired self-signed certificate reads the same)
    app = web.Application()
    app.router.add_get("/", _ok)
    self_signed = make_server_cert(tmp_path, stem="self")
    async with aiohttp_server(app, ssl_context=self_signed.server_context()) as base:
        observation = await prober.probe(page_probe(base + "/"), TIMEOUT, at())
    assert (observation.serving, observation.reason) == (False, "TLS certificate not trusted")


async def _ok(_: web.Request) -> web.Response:
    return web.Response(text="ok")


# --- one browser, fresh contexts, headers, limits -------------------------------------------


async def test_fresh_context_per_probe_and_headers_only_to_the_probed_origin(
    prober: BrowserProber,
) -> None:
    other = Portal()
    async with aiohttp_server(other.app()) as other_base:
        portal = Portal()
        # the same server under another origin (localhost vs 127.0.0.1) is another origin
        async with aiohttp_server(
            portal.app(other=other_base.replace("127.0.0.1", "localhost"))
        ) as base:
            spec = page_probe(base + "/tracked", headers={"X-Probe-Token": "s3cret-probe-token"})
            for _ in range(2):
                observation = await prober.probe(spec, TIMEOUT, at())
                assert observation.serving, observation.reason
    first, second = portal.headers["tracked"]
    assert first["X-Probe-Token"] == "s3cret-probe-token"
    assert "Cookie" not in second, "a cookie set in one probe reached the next"
    assert other.headers["/pixel.gif"], "the page's other-origin image was loaded"
    assert all("X-Probe-Token" not in h for h in other.headers["/pixel.gif"])


async def test_one_browser_and_at_most_two_pages_at_once(
    prober: BrowserProber, portal: Portal
) -> None:
    probes = [
        asyncio.create_task(prober.probe(page_probe(portal.base + "/hold"), TIMEOUT, at()))
        for _ in range(4)
    ]
    await async_wait_for(lambda: portal.held == 2, what="two held pages")
    await asyncio.sleep(0.3)  # give a third page every chance to open (it must not)
    assert portal.held == 2
    portal.gate.set()
    observations = await asyncio.gather(*probes)
    assert all(o.serving for o in observations), [o.reason for o in observations]
    assert portal.max_held == 2
    assert prober.launches == 1


async def test_an_http_probe_completes_while_a_browser_probe_is_in_flight(
    prober: BrowserProber, portal: Portal
) -> None:
    from monitor.kinds.http import Probe

    slow = asyncio.create_task(prober.probe(page_probe(portal.base + "/hold"), TIMEOUT, at()))
    await async_wait_for(lambda: portal.held == 1, what="the browser probe in flight")
    async with Prober() as plain:
        observation = await plain.probe(Probe(url=portal.base + "/api/ping"), TIMEOUT, at())
    assert observation.serving
    assert not slow.done(), "the browser probe was still loading"
    portal.gate.set()
    assert (await slow).serving


async def test_killed_chromium_is_started_again(prober: BrowserProber, portal: Portal) -> None:
    assert (await prober.probe(page_probe(portal.base + "/"), TIMEOUT, at())).serving
    pids = chromium_processes()
    assert pids, "no Chromium process found under this test"
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # gone already with its parent
            os.kill(pid, signal.SIGKILL)
    observation = await prober.probe(page_probe(portal.base + "/"), TIMEOUT, at())
    assert observation.serving, observation.reason
    assert prober.launches == 2


async def test_close_leaves_no_chromium_behind(portal: Portal) -> None:
    require_browser()
    prober = BrowserProber()
    assert (await prober.probe(page_probe(portal.base + "/"), TIMEOUT, at())).serving
    assert chromium_processes()
    await prober.close()
    await async_wait_for(lambda: not chromium_processes(), what="Chromium to exit")


# --- nothing to run a browser with -----------------------------------------------------------


async def test_without_chromium_the_service_is_unknown_saying_what_to_install(
    tmp_path: Path,
) -> None:
    prober = BrowserProber(chromium=str(tmp_path / "no-chromium"))
    observation = await prober.probe(page_probe("http://127.0.0.1:9/"), TIMEOUT, at())
    assert observation.serving is None
    assert observation.reason == (
        "browser not available: install Chromium (apt-get install chromium) "
        "or set [monitor] chromium"
    )


async def test_without_playwright_the_service_is_unknown_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "playwright", None)  # as if it were not installed
    observation = await BrowserProber().probe(page_probe("http://127.0.0.1:9/"), TIMEOUT, at())
    assert observation.serving is None
    assert observation.reason == (
        "browser not available: install Playwright (pip install playwright, or the [browser] extra)"
    )


def test_chromium_setting_and_path_lookup(tmp_path: Path) -> None:
    assert find_chromium(str(tmp_path / "absent")) is None
    if find_chromium() is None:
        missing("Debian's chromium is not installed")
    assert find_chromium(find_chromium()) == find_chromium()


# --- in the pipeline and the daemon ------------------------------------------------------------

TWO_KINDS = """
[monitor]
CHROMIUM

[[channels]]
id = "portal"
name = "政务服务网"
kind = "web"
group = "online"

[[channels.services]]
id = "scripted"
name = "脚本页面"
[channels.services.probe]
kind = "browser"
url = "BASE/hold"
text_not_matches = "系统升级|暂停办理"

[[channels.services]]
id = "plain"
name = "普通页面"
[channels.services.probe]
url = "BASE/api/ping"
"""


def two_kinds(base: str, chromium: str | None = None) -> str:
    """A plan of one browser and one HTTP service on `base`."""
    setting = f'chromium = "{chromium}"' if chromium else ""
    return TWO_KINDS.replace("BASE", base).replace("CHROMIUM", setting)


def test_validate_warns_when_browser_probes_cannot_run_here(tmp_path: Path) -> None:
    absent = write_plan(
        tmp_path / "absent.toml",
        two_kinds("https://portal.example.invalid", chromium=str(tmp_path / "no-chromium")),
    )
    result = python_m("validate", "--config", str(absent))
    assert result.returncode == 0, result.stderr
    assert "warning: 1 browser service(s) will stay unknown here: install Chromium" in result.stderr
    assert "apt-get install chromium" in result.stderr and "警告" in result.stderr

    require_browser()
    present = write_plan(tmp_path / "present.toml", two_kinds("https://portal.example.invalid"))
    result = python_m("validate", "--config", str(present))
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr


async def test_queued_browser_probes_never_take_the_slots_of_http_probes(
    portal: Portal, tmp_path: Path
) -> None:
    require_browser()
    plan = load_plan(tmp_path / "channels.toml", two_kinds(portal.base))
    probers = make_probers()
    store = Store(tmp_path / "monitor.db")
    pipeline = Pipeline(plan, store, RealClock(), probers["http"], probers=probers, concurrency=1)
    scripted, plain = plan.service("portal", "scripted"), plan.service("portal", "plain")
    try:
        slow = asyncio.create_task(pipeline.probe(scripted))
        await async_wait_for(lambda: portal.held == 1, what="the browser probe in flight")
        result = await asyncio.wait_for(pipeline.probe(plain), timeout=10)
        assert result is not None and result.observation.serving
        assert not slow.done()
        portal.gate.set()
        result = await slow
        assert result is not None and result.observation.serving, result
    finally:
        await pipeline.close()
        store.close()
    assert not chromium_processes(), "closing the pipeline closes the browser"


async def test_daemon_stop_closes_the_browser(portal: Portal, tmp_path: Path) -> None:
    require_browser()
    portal.gate.set()
    plan = load_plan(tmp_path / "channels.toml", two_kinds(portal.base))
    daemon = Daemon(plan, tmp_path / "monitor.db", tmp_path / "site", port=0)
    await daemon.start(schedule=False, serve=False)
    try:
        result = await daemon.pipeline.probe(plan.service("portal", "scripted"))
        assert result is not None and result.observation.serving
        assert chromium_processes()
    finally:
        await daemon.stop()
    await async_wait_for(lambda: not chromium_processes(), what="Chromium to exit")

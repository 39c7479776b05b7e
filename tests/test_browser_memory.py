"""The browser kind bounds what one page may take (issue 23): a page that allocates without end
is stopped by Chromium's V8 heap limit, the probe says so, and the browser goes on.

Against Debian's Chromium through Playwright, like tests/test_browser_probe.py (missing, these
fail in CI and skip elsewhere). A local page allocates arrays in a loop; the probe must end as
`browser page crashed (out of memory?)`, judged `unknown`, well before its timeout; the same
Chromium process then loads a normal page; and the memory of Chromium's processes (their
proportional set size, so shared pages count once) stays under a bound. Without the limit the
same page took Chromium's processes past 4 GB here before V8 gave up after about 40 s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp import web
from servers import aiohttp_server
from test_browser_probe import at, chromium_processes, page_probe, require_browser

from monitor import reasons
from monitor.kinds.browser import HEAP_LIMIT_MB, PAGE_CRASHED, BrowserProber

#: Allocates 8 MB arrays until the renderer's heap is exhausted.
HOG = """<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,">
</head><body><p>业务办理</p><script>
let a = []; while (true) a.push(new Array(1e6).fill(1));
</script></body></html>"""
NORMAL = """<!doctype html><html><head><link rel="icon" href="data:,"></head>
<body><p>业务办理 · online service</p></body></html>"""
#: Long enough that a page still allocating when it ends would be far past any bound below.
TIMEOUT = timedelta(seconds=30)
#: Chromium's processes together, at most: the browser, a renderer at its heap limit, the GPU
#: and network processes. Measured about 0.9 GB here with a 512 MB heap, 4.3 GB without it.
MEMORY_BOUND_MB = HEAP_LIMIT_MB + 1024


def chromium_pss_mb() -> int:
    """The proportional set size of this test's Chromium processes, in MB."""
    total = 0
    for pid in chromium_processes():
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total // 1024


@pytest.fixture
async def site() -> AsyncIterator[str]:
    async def page(text: str) -> web.Response:
        return web.Response(text=text, content_type="text/html")

    async def hog(_: web.Request) -> web.Response:
        return await page(HOG)

    async def normal(_: web.Request) -> web.Response:
        return await page(NORMAL)

    app = web.Application()
    app.router.add_get("/hog", hog)
    app.router.add_get("/", normal)
    async with aiohttp_server(app) as base:
        yield base


async def test_a_page_that_eats_memory_is_a_crashed_page_and_the_browser_goes_on(
    site: str,
) -> None:
    require_browser()
    prober = BrowserProber()
    peak = 0

    async def watch() -> None:
        """Samples the memory while the probe runs (a measurement, not a synchronisation)."""
        nonlocal peak
        while True:
            peak = max(peak, chromium_pss_mb())
            await asyncio.sleep(0.05)

    try:
        assert (await prober.probe(page_probe(site + "/"), TIMEOUT, at())).serving
        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            crashed = await prober.probe(page_probe(site + "/hog"), TIMEOUT, at())
        finally:
            watcher.cancel()
        assert (crashed.serving, crashed.reason) == (None, PAGE_CRASHED)
        assert crashed.duration_seconds < TIMEOUT.total_seconds() / 2
        print(f"Chromium's processes at most {peak} MB while the page allocated")
        assert peak < MEMORY_BOUND_MB, f"Chromium took {peak} MB"
        after = await prober.probe(page_probe(site + "/"), TIMEOUT, at())
        assert (after.serving, after.reason) == (True, "HTTP 200")
        assert prober.launches == 1  # the browser process lived through its page's crash
    finally:
        await prober.close()


def test_the_crash_reads_in_both_languages() -> None:
    """Operators and citizens both read it; it names no part that must stay private."""
    assert (
        reasons.describe(PAGE_CRASHED, "zh", public=True)
        == "监测用浏览器中的页面崩溃（可能内存耗尽）"
    )
    assert reasons.describe(PAGE_CRASHED, "en", public=True) == (
        "the page crashed in the monitoring browser (out of memory?)"
    )
    assert reasons.public_phrase(PAGE_CRASHED) == PAGE_CRASHED

"""The subscription form in a real browser: Debian's Chromium driven by Playwright with
JavaScript off loads the rendered page from a static server on 127.0.0.1, fills the form and
submits it to a running monitor's API on another port of 127.0.0.1 (so the page's
Content-Security-Policy `form-action` is enforced by the browser); the answer is the 202 page,
and the confirmation mail arrives at a local aiosmtpd.

Chromium or Playwright missing fails the test in CI (`CI=true`) and skips it elsewhere.
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from pathlib import Path

from aiohttp import web
from aiosmtpd.smtp import SMTP as SMTPServer
from helpers import missing
from test_site_browser import CHROMIUM_FLAGS, chromium_path
from test_subscriptions import ADDRESS, KEY, ZONE, Relay, plan_with

from monitor.clock import ReplayClock
from monitor.plan import Plan
from monitor.server import Server
from monitor.site.render import render
from monitor.store import Store
from monitor.subscriptions import Keys, Subscriptions
from monitor.subscriptions.words import WORDS


async def test_the_form_without_javascript_subscribes_and_the_confirmation_arrives(
    tmp_path: Path,
) -> None:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        missing("Playwright's Python package is not installed")
    executable = chromium_path()
    if executable is None:
        missing("Debian's chromium is not installed (apt-get install chromium)")

    relay = Relay()
    loop = asyncio.get_running_loop()
    smtp = await loop.create_server(lambda: SMTPServer(relay), "127.0.0.1", 0)
    plan = plan_with(smtp.sockets[0].getsockname()[1])
    current = {"plan": plan}
    store = Store(tmp_path / "store.db")
    settings = plan.config.subscriptions
    assert settings is not None
    clock = ReplayClock(datetime(2022, 6, 22, 9, 0, tzinfo=ZONE))
    subs = Subscriptions(lambda: current["plan"], store, clock, settings, Keys(KEY))
    api = Server("127.0.0.1", 0, lambda: ({}, 200))
    api.add(subs.part())
    static: web.AppRunner | None = None
    try:
        await api.start()
        # the plan names the API's real address, as an operator's public_url would
        settings = settings.model_copy(update={"public_url": f"http://127.0.0.1:{api.port}"})
        subs.settings = subs.sender.settings = settings
        current["plan"] = Plan(plan.config.model_copy(update={"subscriptions": settings}))
        site = tmp_path / "site"
        render(current["plan"], site, clock.now())
        app = web.Application()
        app.router.add_static("/", site)
        static = web.AppRunner(app)
        await static.setup()
        pages = web.TCPSite(static, "127.0.0.1", 0)
        await pages.start()
        page_port = static.addresses[0][1]

        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=executable, args=CHROMIUM_FLAGS
            )
            try:
                context = await browser.new_context(java_script_enabled=False)
                page = await context.new_page()
                await page.goto(f"http://127.0.0.1:{page_port}/index.html")
                form = page.locator("#subscribe form")
                await form.locator('input[name="email"]').fill(ADDRESS)
                await form.locator('input[name="services"][value="web"]').check()
                async with page.expect_response(
                    lambda r: r.url.endswith("/api/subscriptions")
                ) as answered:
                    await form.locator('button[type="submit"]').click()
                answer = await answered.value
                assert answer.status == 202
                await page.wait_for_load_state()
                assert WORDS["zh"]["page_accepted"] in await page.content()
            finally:
                await browser.close()

        while await subs.sender.drain_once():
            pass
        (confirmation,) = relay.take()
        assert relay.envelopes == [("noreply@example.gov.cn", [ADDRESS.lower()])]
        assert str(confirmation["Subject"]) == WORDS["zh"]["confirm_subject"]
        link = re.search(r"http://\S+/confirm/\S+", confirmation.get_content())
        assert link is not None and link.group(0).startswith(settings.public_url)
        assert "湖北政务服务网" in confirmation.get_content(), "the channel chosen is named"
    finally:
        await subs.close()
        if static is not None:
            await static.cleanup()
        await api.stop()
        store.close()
        smtp.close()
        await smtp.wait_closed()

"""One browser probe: load a page in headless Chromium and read what a citizen would see.

Some portals send an empty shell and write their maintenance notice with JavaScript after load,
so an HTTP probe of the HTML never sees it. A browser probe loads the page in Debian's Chromium
through Playwright, waits for it to settle (the `load` event, then network idle, or the
`wait_for` CSS selector), all within the probe's timeout, and holds the rendered visible text
(`document.body.innerText`) to `text_matches` / `text_not_matches`.

A browser costs far more than a GET, so: ONE Chromium process serves every browser probe (it is
started on first use and started again if it dies), each probe gets a fresh browser context (no
cookies, cache or storage carried from one probe to the next), and at most `pages` (2) pages are
open at once. All of it is asyncio talking to Playwright's driver over a pipe, so a slow page
never holds up the HTTP probes on the same event loop.

Reasons (besides the HTTP probe's `HTTP <code>`, `timeout after <d>`, `connection refused`,
`DNS lookup failed`, `TLS ...`, `too many redirects`, `connection reset`, `connection failed`):

| phrase | serving | meaning |
| --- | --- | --- |
| `rendered text matches maintenance notice` | no | the visible text matched `text_not_matches` |
| `rendered text does not match` | no | the visible text did not match `text_matches` |
| `browser not available: install ...` | unknown | no Playwright, or no Chromium (says which) |
| `browser page crashed (out of memory?)` | unknown | the page's renderer died, the browser lives |

A page's memory is bounded: Chromium starts with a V8 heap limit (`HEAP_LIMIT_MB` per page),
so a page that allocates without end has its renderer stopped in seconds instead of taking
gigabytes from the machine the monitor shares with its other probes. The probe then says the
page crashed and is `unknown`, not `down`: the limit is the observer's (a citizen's browser
allows several times more), so the crash tells nothing about whether the channel serves. Only
that page dies; the browser process and its other pages go on, and the next probe uses it.

Playwright is an optional extra (`pip install 'channel-monitor[browser]'`); this module imports
it only when a browser probe first runs, so nothing else pays for it, and `validate` imports
this module (to say what is missing) without loading aiohttp or Playwright.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import logging
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import urlsplit

from monitor.fields import PositiveDuration, Regex, format_duration
from monitor.kinds.base import Kind, ProberOptions, UrlProbe
from monitor.reason_rows import Reason

if TYPE_CHECKING:  # only for annotations: importing Playwright is the first probe's job
    from playwright.async_api import Browser, BrowserContext, Page, Playwright, Response, Route

    from monitor.observation import Observation

log = logging.getLogger(__name__)

#: Flags that work as root, without a display and without network beyond the probed site.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
#: V8's old-generation heap per renderer (`--max-old-space-size`), in MB. A portal's page
#: needs a few tens; with two pages open this bounds script memory near 1 GB where an
#: unbounded page took Chromium's processes past 4 GB before V8 gave up on its own. Memory
#: outside V8's heap (ArrayBuffer contents, images, the DOM) is not counted by this limit.
HEAP_LIMIT_MB = 512
#: The reason of a probe whose page's renderer died (V8's heap limit, or killed).
PAGE_CRASHED = "browser page crashed (out of memory?)"
#: At most this many pages open at once (each costs a renderer process).
DEFAULT_PAGES = 2
#: How long starting Chromium may take, apart from any probe's own timeout.
LAUNCH_TIMEOUT = timedelta(seconds=30)
#: How long closing one probe's context may take before the browser is thought broken.
CLOSE_TIMEOUT = 5.0
#: The visible text read from a page is cut here (a pattern needs no more).
TEXT_CAP = 1_000_000

INSTALL_PLAYWRIGHT = "install Playwright (pip install playwright, or the [browser] extra)"
INSTALL_CHROMIUM = "install Chromium (apt-get install chromium) or set [monitor] chromium"

#: The visible text of the page, as a reader sees it (hidden elements excluded), capped.
_READ_TEXT = f"() => (document.body ? document.body.innerText : '').slice(0, {TEXT_CAP})"

try:  # RE2 (time linear in the text, whatever the page shows) where the plan's patterns use it
    from monitor.fields import body_pattern as _compile  # type: ignore[attr-defined]
except ImportError:  # (until the hardened probe's RE2 patterns are merged)
    _compile = re.compile
#: A pattern compiled once, not looked up in a cache of `re` on every probe.
_pattern = functools.lru_cache(maxsize=256)(_compile)

#: Chromium's network error codes, read from Playwright's message, as the HTTP probe's phrases.
_NET_ERRORS = (
    ("ERR_CONNECTION_REFUSED", "connection refused"),
    ("ERR_NAME_NOT_RESOLVED", "DNS lookup failed"),
    ("ERR_NAME_RESOLUTION_FAILED", "DNS lookup failed"),
    ("ERR_CERT_DATE_INVALID", "TLS certificate expired"),
    ("ERR_CERT_", "TLS certificate not trusted"),
    ("ERR_SSL_", "TLS handshake failed"),
    ("ERR_BAD_SSL_CLIENT_AUTH_CERT", "TLS handshake failed"),
    ("ERR_TOO_MANY_REDIRECTS", "too many redirects"),
    ("ERR_CONNECTION_RESET", "connection reset"),
    ("ERR_CONNECTION_CLOSED", "connection reset"),
    ("ERR_CONNECTION_ABORTED", "connection reset"),
    ("ERR_EMPTY_RESPONSE", "connection reset"),
    ("ERR_INCOMPLETE_CHUNKED_ENCODING", "connection reset"),
)
_NET_ERROR = re.compile(r"net::(ERR_[A-Z0-9_]+)")
_TIMED_OUT = ("ERR_TIMED_OUT", "ERR_CONNECTION_TIMED_OUT")


class BrowserProbe(UrlProbe):
    """A page built by script: loaded in headless Chromium, judged on its rendered text."""

    kind: Literal["browser"]
    wait_for: str | None = None
    text_matches: Regex | None = None
    text_not_matches: Regex | None = None
    # A browser is slow and costly: look less often and wait longer than for a GET.
    interval: PositiveDuration | None = timedelta(minutes=5)
    timeout: PositiveDuration | None = timedelta(seconds=30)


class BrowserSpec(Protocol):
    """What a browser probe needs of its plan entry (`BrowserProbe`)."""

    url: str
    headers: dict[str, str]
    wait_for: str | None
    text_matches: str | None
    text_not_matches: str | None


class _BrowserGone(Exception):
    """Chromium (or the page's renderer) died during a probe."""


class BrowserUnavailable(Exception):
    """Chromium cannot be started; the message says what to install (no path, no URL)."""


def find_chromium(setting: str | None = None) -> str | None:
    """The Chromium binary: `[monitor] chromium` when set, else `chromium` or
    `chromium-browser` on PATH. None when there is none."""
    if setting:
        found = shutil.which(setting)
        return found if found and Path(found).is_file() else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def missing_parts(setting: str | None = None) -> str | None:
    """What to install before browser probes can run (`install ...`), None when all is there.
    Looks, but imports nothing, so `validate` stays light."""
    try:
        found = importlib.util.find_spec("playwright") is not None
    except (ImportError, ValueError):  # a broken or blocked install
        found = False
    if not found:
        return INSTALL_PLAYWRIGHT
    if find_chromium(setting) is None:
        return INSTALL_CHROMIUM
    return None


def unavailable_reason(what: str) -> str:
    """The reason of a browser service that cannot be observed here."""
    return f"browser not available: {what}"


def unavailable(at: datetime, what: str) -> Observation:
    """The observation of a browser probe that could not run: neither serving nor not (the
    service's verdict stays `unknown`), with the reason saying what to install."""
    from monitor.observation import Observation  # (not at the top: `validate` imports this module)

    return Observation(at, None, unavailable_reason(what))


def net_error_reason(message: str, timeout: timedelta) -> str:
    """The probe reason of a failed navigation, from Chromium's `net::ERR_...` code in
    Playwright's message. The message itself (it holds the URL) is never kept."""
    match = _NET_ERROR.search(message)
    if match is None:
        return "connection failed (browser)"
    code = match.group(1)
    if code in _TIMED_OUT:
        return f"timeout after {format_duration(timeout)}"
    for prefix, reason in _NET_ERRORS:
        if code.startswith(prefix):
            return reason
    return f"connection failed ({code})"


def judge_text(spec: BrowserSpec, text: str) -> tuple[bool, str] | None:
    """(serving, reason) when the rendered text fails a condition; None when it passes."""
    if spec.text_not_matches and _pattern(spec.text_not_matches).search(text):
        return False, "rendered text matches maintenance notice"
    if spec.text_matches and not _pattern(spec.text_matches).search(text):
        return False, "rendered text does not match"
    return None


@dataclass(slots=True)
class _Visit:
    """What one page load saw of its main document, and the closing of its context."""

    status: int | None = None
    closing: asyncio.Task | None = None
    #: The page's renderer died (Playwright's `crash` event): the page, not the browser.
    crashed: bool = False


class BrowserProber:
    """Browser probes over one shared Chromium process (see the module docstring)."""

    kind = "browser"

    #: At most `pages` at once, queued here: the pipeline's general limit is not taken.
    limits_itself = True

    def __init__(
        self,
        chromium: str | None = None,
        pages: int = DEFAULT_PAGES,
        heap_limit_mb: int = HEAP_LIMIT_MB,
    ) -> None:
        """`chromium` is the `[monitor] chromium` setting (None: look on PATH);
        `heap_limit_mb` bounds each page's script heap (see `HEAP_LIMIT_MB`)."""
        self.chromium = chromium
        self.heap_limit_mb = heap_limit_mb
        self._pages = asyncio.Semaphore(pages)
        self._launching = asyncio.Lock()
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self.launches = 0  # how many times Chromium was started (tests, logs)
        #: Contexts being closed after their probe answered (each still holds its page slot).
        self._closing: set[asyncio.Task] = set()

    # --- the browser process ------------------------------------------------------------------

    async def start(self) -> None:
        """Start Chromium now rather than at the first probe (raises BrowserUnavailable)."""
        await self._ensure_browser()

    async def _ensure_browser(self) -> Browser:
        """The running browser, started (again) when there is none or it died."""
        async with self._launching:
            browser = self._browser
            if browser is not None and browser.is_connected():
                return browser
            if browser is not None:
                log.warning("browser: Chromium is gone; starting it again")
                self._browser = None
            what = missing_parts(self.chromium)
            if what is not None:
                raise BrowserUnavailable(what)
            executable = find_chromium(self.chromium)
            assert executable is not None
            heap_limit = f"--js-flags=--max-old-space-size={self.heap_limit_mb}"
            try:
                if self._playwright is None:
                    from playwright.async_api import async_playwright

                    self._playwright = await async_playwright().start()
                self._browser = await self._playwright.chromium.launch(
                    executable_path=executable,
                    args=[*CHROMIUM_FLAGS, heap_limit],
                    timeout=LAUNCH_TIMEOUT.total_seconds() * 1000,
                )
            except Exception as exc:
                log.error("browser: Chromium did not start (%s)", type(exc).__name__)
                await self._stop_driver()
                raise BrowserUnavailable(
                    "Chromium did not start; reinstall it (apt-get install --reinstall chromium) "
                    "or set [monitor] chromium"
                ) from None
            self.launches += 1
            log.info("browser: Chromium %s started", self._browser.version)
            return self._browser

    async def _stop_driver(self) -> None:
        """Stop Playwright's driver (after a failed start, or at close)."""
        playwright, self._playwright = self._playwright, None
        if playwright is not None:
            with contextlib.suppress(Exception):
                await playwright.stop()

    async def close(self) -> None:
        """Close the browser and Playwright's driver (`run` stopping)."""
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=CLOSE_TIMEOUT)
        async with self._launching:
            browser, self._browser = self._browser, None
            if browser is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(browser.close(), CLOSE_TIMEOUT)
            await self._stop_driver()

    # --- one probe ------------------------------------------------------------------------------

    async def probe(
        self, spec: BrowserSpec, timeout: timedelta, at: datetime | None = None
    ) -> Observation:
        """Probe `spec` once; never raises for anything the page, the network or the browser
        does. Waiting for a free page slot is not counted in the timeout; loading is."""
        from monitor.observation import Observation

        at = at or datetime.now(UTC)
        await self._pages.acquire()
        visit = _Visit()
        try:
            for attempt in (1, 2):
                try:
                    browser = await self._ensure_browser()
                except BrowserUnavailable as exc:
                    return unavailable(at, str(exc))
                started = perf_counter()
                visit = _Visit()
                try:
                    serving, reason = await self._visit(browser, spec, timeout, visit)
                except TimeoutError:
                    serving, reason = False, f"timeout after {format_duration(timeout)}"
                except _BrowserGone:
                    # Chromium died under this probe, which says nothing about the service:
                    # start it again and look once more.
                    if visit.closing is not None:
                        await visit.closing
                    await self._discard(browser)
                    if attempt == 1:
                        continue
                    return unavailable(at, "Chromium stopped during the probe; it restarts")
                return Observation(at, serving, reason, visit.status, perf_counter() - started)
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            # The answer does not wait for the context to close (a busy machine can take
            # seconds), but the page slot stays taken until it has: never more than `pages`.
            if visit.closing is None or visit.closing.done():
                self._pages.release()
            else:
                self._closing.add(visit.closing)
                visit.closing.add_done_callback(self._closed)

    def _closed(self, task: asyncio.Task) -> None:
        self._closing.discard(task)
        self._pages.release()

    async def _discard(self, browser: Browser) -> None:
        """Forget a browser that died (or hangs) so the next probe starts a new one."""
        async with self._launching:
            if self._browser is browser:
                self._browser = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(browser.close(), CLOSE_TIMEOUT)

    async def _visit(
        self, browser: Browser, spec: BrowserSpec, timeout: timedelta, visit: _Visit
    ) -> tuple[bool | None, str]:
        """Load, settle, read, judge; in a fresh context that is closed whatever happens."""
        from playwright.async_api import Error as PlaywrightError
        from playwright.async_api import TimeoutError as PlaywrightTimeout

        seconds = timeout.total_seconds()
        deadline = asyncio.get_running_loop().time() + seconds
        context = None
        try:
            async with asyncio.timeout(seconds):
                context = await browser.new_context(
                    accept_downloads=False, service_workers="block", java_script_enabled=True
                )
                page = await context.new_page()
                if spec.headers:
                    await page.route("**/*", _same_origin_headers(spec.url, spec.headers))
                page.on("response", functools.partial(_main_document, page, visit))
                page.on("crash", functools.partial(_crashed, visit))
                return await self._load(page, spec, timeout, deadline, visit)
        except PlaywrightTimeout:
            raise TimeoutError from None
        except PlaywrightError as exc:
            message = str(exc)
            if browser.is_connected() and (visit.crashed or _CRASH_MESSAGE.search(message)):
                return None, PAGE_CRASHED  # the renderer died; the browser did not
            if not browser.is_connected() or type(exc).__name__ == "TargetClosedError":
                raise _BrowserGone from None  # Chromium or the page's renderer died
            if "ERR_HTTP_RESPONSE_CODE_FAILURE" in message and visit.status is not None:
                return False, f"HTTP {visit.status}"  # an error status with an empty body
            return False, net_error_reason(message, timeout)
        finally:
            if context is not None:
                visit.closing = asyncio.get_running_loop().create_task(
                    self._close_context(browser, context)
                )

    async def _close_context(self, browser: Browser, context: BrowserContext) -> None:
        """Close one probe's context; a browser that cannot is not fit to go on."""
        try:
            await asyncio.wait_for(context.close(), CLOSE_TIMEOUT)
        except Exception:
            if browser.is_connected():
                log.warning("browser: a context did not close; Chromium is started again")
            await self._discard(browser)

    async def _load(
        self, page: Page, spec: BrowserSpec, timeout: timedelta, deadline: float, visit: _Visit
    ) -> tuple[bool, str]:
        from playwright.async_api import TimeoutError as PlaywrightTimeout

        loop = asyncio.get_running_loop()

        def ms_until(instant: float) -> float:
            return max(1.0, (instant - loop.time()) * 1000)

        response = await page.goto(
            spec.url, wait_until="domcontentloaded", timeout=ms_until(deadline)
        )
        if response is not None:
            visit.status = response.status
        status = visit.status
        if status is not None and not 200 <= status < 300:
            return False, f"HTTP {status}"
        # Settle: load, then the selector or network idle. Keep a little of the timeout to read
        # the text, so a page that never settles is still judged by what it shows.
        settle_by = deadline - min(2.0, 0.1 * timeout.total_seconds())
        settled = True
        try:
            await page.wait_for_load_state("load", timeout=ms_until(settle_by))
            if spec.wait_for:
                await page.wait_for_selector(spec.wait_for, timeout=ms_until(settle_by))
            else:
                await page.wait_for_load_state("networkidle", timeout=ms_until(settle_by))
        except PlaywrightTimeout:
            # network idle is a courtesy (pages that poll never reach it); the selector is not
            settled = not spec.wait_for
        text = await page.evaluate(_READ_TEXT)
        failed = judge_text(spec, text if isinstance(text, str) else "")
        if failed is not None and (settled or failed[1].endswith("maintenance notice")):
            return failed  # a notice shown is a notice, even if the selector never came
        if not settled:
            return False, f"timeout after {format_duration(timeout)}"
        return True, f"HTTP {status}" if status is not None else "HTTP 200"


def _main_document(page: Page, visit: _Visit, response: Response) -> None:
    """Keep the status of the main frame's document (the last one, after redirects)."""
    request = response.request
    if request.is_navigation_request() and response.frame == page.main_frame:
        visit.status = response.status


def _crashed(visit: _Visit, _page: Page) -> None:
    """Playwright's `crash` event: the page's renderer died (most often V8's heap limit)."""
    visit.crashed = True


#: Playwright's words when a call on a page fails because its renderer died (should the
#: `crash` event arrive after the failed call).
_CRASH_MESSAGE = re.compile(r"\b(Page|Target) crashed\b")


def _same_origin_headers(url: str, headers: dict[str, str]) -> Any:
    """A route handler adding the probe's headers to requests to the probed origin only: a
    token meant for the portal must not travel to a CDN or an analytics host it embeds."""
    origin = _origin(url)

    async def handler(route: Route) -> None:
        request = route.request
        if _origin(request.url) == origin:
            merged = {**await request.all_headers(), **headers}
            await route.continue_(headers=merged)
        else:
            await route.continue_()

    return handler


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or ""), parts.port


#: The browser kind's reasons (the network failures it shares with the http kind are in
#: `monitor.reasons.SHARED`).
REASONS: tuple[Reason, ...] = (
    Reason(
        "rendered text matches maintenance notice",
        "浏览器打开的页面显示维护公告",
        "the page, opened in a browser, shows a maintenance notice",
    ),
    Reason(
        "rendered text does not match",
        "浏览器打开的页面不是正常办理页面",
        "the page, opened in a browser, is not the usual service page",
    ),
    Reason(
        PAGE_CRASHED,
        "监测用浏览器中的页面崩溃（可能内存耗尽）",
        "the page crashed in the monitoring browser (out of memory?)",
    ),
    Reason(
        "browser not available: {what}",
        "监测用的浏览器不可用：{what}",
        "the monitoring browser is not available: {what}",
        "监测用的浏览器不可用",
        "the monitoring browser is not available",
    ),
)


def _prober(options: ProberOptions) -> BrowserProber:
    """The browser kind's prober; Chromium starts only when a browser probe first runs."""
    return BrowserProber(options.chromium)


KIND = Kind("browser", BrowserProbe, reasons=REASONS, prober=_prober, has_status_code=True)

"""The prober against real servers on 127.0.0.1, one test per failure class (issue 3).

Each test checks `serving`, the documented phrase the reason starts with, and the status code.
Probes that must end by their timeout are also held to timeout + 2 s: a correctness bound, not a
speed test.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import gzip
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from helpers import MAINTENANCE_PATTERN, MAINTENANCE_TEXT, SERVING_TEXT
from servers import (
    ENGINES,
    HOST,
    Issued,
    RawServer,
    aiohttp_server,
    closed_port,
    make_ca,
    make_server_cert,
    never_answer,
    read_request,
    reset_mid_body,
    trickle_body,
    trickle_headers,
)

from monitor.kinds.http import DEFAULT_BODY_CAP, Probe, Prober
from monitor.net import tls
from monitor.net.http1 import MAX_REDIRECTS, Response, Timings
from monitor.observation import Observation
from monitor.reasons import PHRASES as REASON_PHRASES

SERVING_PATTERN = "业务办理"

#: The correctness bound on a probe that ends by its timeout.
SLACK = 2.0


# --- helpers -----------------------------------------------------------------------------------


async def run_probe(prober: Prober, url: str, timeout: float = 5.0, **fields) -> Observation:
    return await prober.probe(Probe(url=url, **fields), timedelta(seconds=timeout))


async def timed(call: Awaitable[Observation]) -> tuple[Observation, float]:
    started = time.monotonic()
    observation = await call
    return observation, time.monotonic() - started


def check(observation: Observation, serving: bool, phrase: str, status: int | None) -> None:
    """`serving`, the reason's leading phrase and the status code, with the whole observation
    in the failure message."""
    assert observation.serving is serving, observation
    assert observation.reason.startswith(phrase), observation
    assert observation.status_code == status, observation
    assert any(observation.reason.startswith(p) for p in REASON_PHRASES), observation


# --- the well-behaved (and plainly failing) HTTP server ---------------------------------------


def channel_app() -> web.Application:
    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text=SERVING_TEXT, content_type="text/html")

    async def maintenance(_request: web.Request) -> web.Response:
        return web.Response(text=MAINTENANCE_TEXT, content_type="text/html")

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, text=f"status {code}")

    async def gbk(request: web.Request) -> web.Response:
        page = MAINTENANCE_TEXT if request.match_info["page"] == "maintenance" else SERVING_TEXT
        return web.Response(
            body=page.encode("gbk"), headers={"Content-Type": "text/html; charset=GBK"}
        )

    async def loop(_request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def moved(_request: web.Request) -> web.Response:
        raise web.HTTPFound("/ok")

    async def chain(request: web.Request) -> web.Response:
        left = int(request.match_info["left"])
        if left == 0:
            return await ok(request)
        raise web.HTTPFound(f"/chain/{left - 1}")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.2)  # the behaviour under test, not a wait for something
        return await ok(request)

    async def charset(request: web.Request) -> web.Response:
        """The maintenance page under whatever charset the path names (`x-no-such-codec`)."""
        content_type = f"text/html; charset={request.match_info['name']}"
        body = MAINTENANCE_TEXT.encode("utf-8")
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def text(request: web.Request) -> web.Response:
        """`/text/<count>/<letter>`: that many of the letter; `/text/<count>/<letter>/<tail>`:
        followed by the tail (a page whose notice comes after a long body)."""
        info = request.match_info
        body = info["letter"] * int(info["count"]) + info.get("tail", "")
        return web.Response(text=body, content_type="text/html")

    app = web.Application()
    app.router.add_get("/charset/{name}", charset)
    app.router.add_get("/text/{count:\\d+}/{letter}", text)
    app.router.add_get("/text/{count:\\d+}/{letter}/{tail}", text)
    app.router.add_get("/ok", ok)
    app.router.add_get("/maintenance", maintenance)
    app.router.add_get("/status/{code:\\d+}", status)
    app.router.add_get("/gbk/{page}", gbk)
    app.router.add_get("/loop", loop)
    app.router.add_get("/moved", moved)
    app.router.add_get("/chain/{left:\\d+}", chain)
    app.router.add_get("/slow", slow)
    app.router.add_get("/private/{tail:.*}", ok)
    return app


@pytest.fixture
async def site() -> AsyncIterator[str]:
    """Base URL (`http://127.0.0.1:PORT`) of `channel_app`."""
    async with aiohttp_server(channel_app()) as base:
        yield base


@pytest.fixture
async def prober() -> AsyncIterator[Prober]:
    async with Prober() as prober:
        yield prober


@pytest.fixture
async def silent() -> AsyncIterator[RawServer]:
    """Accepts connections and never answers."""
    async with RawServer(never_answer) as server:
        yield server


# --- status and body ---------------------------------------------------------------------------


async def test_serving_page_is_http_200(prober: Prober, site: str) -> None:
    observation = await run_probe(prober, f"{site}/ok")
    check(observation, True, "HTTP 200", 200)
    assert not observation.degraded
    assert observation.tls_expiry is None


async def test_maintenance_notice_on_a_200_is_not_serving(prober: Prober, site: str) -> None:
    observation = await run_probe(
        prober, f"{site}/maintenance", body_not_matches=MAINTENANCE_PATTERN
    )
    check(observation, False, "body matches maintenance notice", 200)


async def test_normal_page_passes_the_maintenance_condition(prober: Prober, site: str) -> None:
    observation = await run_probe(prober, f"{site}/ok", body_not_matches=MAINTENANCE_PATTERN)
    check(observation, True, "HTTP 200", 200)


async def test_body_without_the_expected_text_does_not_match(prober: Prober, site: str) -> None:
    observation = await run_probe(prober, f"{site}/maintenance", body_matches=SERVING_PATTERN)
    check(observation, False, "body does not match", 200)


@pytest.mark.parametrize(
    ("page", "condition", "serving", "phrase"),
    [
        ("maintenance", {"body_not_matches": MAINTENANCE_PATTERN}, False, "body matches"),
        ("serving", {"body_not_matches": MAINTENANCE_PATTERN}, True, "HTTP 200"),
        ("serving", {"body_matches": SERVING_PATTERN}, True, "HTTP 200"),
        ("maintenance", {"body_matches": SERVING_PATTERN}, False, "body does not match"),
    ],
)
async def test_gbk_page_is_decoded_by_its_declared_charset(
    prober: Prober, site: str, page: str, condition: dict, serving: bool, phrase: str
) -> None:
    observation = await run_probe(prober, f"{site}/gbk/{page}", **condition)
    check(observation, serving, phrase, 200)


@pytest.mark.parametrize("name", ["x-no-such-codec", "rot13", "utf-8", "UTF8", "gbk"])
async def test_unknown_charset_falls_back_to_utf8(prober: Prober, site: str, name: str) -> None:
    """A charset Python does not know (or that is no text encoding) is read as UTF-8, so the
    answer still ends as an observation with a reason (before: LookupError out of the probe)."""
    observation = await run_probe(
        prober, f"{site}/charset/{name}", body_not_matches=MAINTENANCE_PATTERN
    )
    if name == "gbk":  # a known charset is honoured: the UTF-8 bytes do not read as the notice
        check(observation, True, "HTTP 200", 200)
    else:
        check(observation, False, "body matches maintenance notice", 200)


async def test_catastrophic_backtracking_pattern_is_linear(prober: Prober, site: str) -> None:
    """`(a+)+$` against 30 `a` and a `b`: Python's `re` backtracks for minutes, past any
    timeout, with the event loop frozen; RE2 answers at once."""
    observation, elapsed = await timed(
        run_probe(prober, f"{site}/text/30/a/b", timeout=2.0, body_not_matches="(a+)+$")
    )
    check(observation, True, "HTTP 200", 200)
    assert elapsed < 2.0 + SLACK, elapsed


async def test_a_slow_match_is_bounded_by_the_timeout_and_never_stalls_the_loop(
    prober: Prober, site: str
) -> None:
    """RE2's slowest case (a pattern of 3,000 instructions whose states all stay live) takes
    seconds on 128 KB of `a`: the match runs off the loop and the probe ends at its timeout,
    while the loop keeps turning."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    try:
        observation, elapsed = await timed(
            run_probe(
                prober,
                f"{site}/text/131072/a",
                timeout=1.0,
                body_not_matches="(?:a?){1000}a{1000}b",
            )
        )
    finally:
        done.set()
        await ticking
    check(observation, False, "timeout after 1s", None)
    assert elapsed < 1.0 + SLACK, elapsed
    assert max(gaps) < 0.5, f"the event loop stalled for {max(gaps):.2f} s"


@pytest.mark.parametrize(("tail", "serving"), [("系统维护", False), ("正常", True)])
async def test_large_bodies_are_matched_off_the_loop_with_the_same_answer(
    prober: Prober, site: str, tail: str, serving: bool
) -> None:
    """A 200 KB page with the notice at its very end (past the budget for matching on the
    loop): the answer is the same as for a small page."""
    observation = await run_probe(
        prober, f"{site}/text/200000/x/{tail}", body_not_matches=MAINTENANCE_PATTERN
    )
    phrase = "HTTP 200" if serving else "body matches maintenance notice"
    check(observation, serving, phrase, 200)


async def test_any_fault_inside_a_probe_is_an_observation_logged_once(
    prober: Prober, site: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever escapes aiohttp (here: its refusal of a header with a control character, which
    a plan can no longer hold) becomes `probe failed (<type>)`, logged once, without the URL."""
    spec = Probe.model_construct(
        url=f"{site}/private/p4th-s3cret", headers={"X-Api-Key": "k3y-s3cret\x01"}
    )
    with caplog.at_level("DEBUG", logger="monitor.kinds.http"):
        first = await prober.probe(spec, timedelta(seconds=5))
        second = await prober.probe(spec, timedelta(seconds=5))
    for observation in (first, second):
        check(observation, False, "probe failed (ValueError)", None)
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "ValueError" in warnings[0].getMessage()
    info_and_up = [r.getMessage() for r in caplog.records if r.levelno >= 20]
    assert all("s3cret" not in text for text in info_and_up), info_and_up


@pytest.mark.parametrize("code", [404, 500, 503])
async def test_error_status_is_not_serving(prober: Prober, site: str, code: int) -> None:
    observation = await run_probe(prober, f"{site}/status/{code}")
    check(observation, False, f"HTTP {code}", code)


async def test_expected_status_makes_an_error_code_serving(prober: Prober, site: str) -> None:
    observation = await run_probe(prober, f"{site}/status/503", expect_status=[503])
    check(observation, True, "HTTP 503", 503)


# --- redirects ---------------------------------------------------------------------------------


async def test_redirect_loop_is_too_many_redirects(prober: Prober, site: str) -> None:
    observation, elapsed = await timed(run_probe(prober, f"{site}/loop"))
    check(observation, False, "too many redirects", None)
    assert elapsed < 5.0


async def test_redirect_to_a_serving_page_is_followed(prober: Prober, site: str) -> None:
    observation = await run_probe(prober, f"{site}/moved")
    check(observation, True, "HTTP 200", 200)


@pytest.mark.parametrize(
    ("redirects", "serving", "phrase", "status"),
    [
        (MAX_REDIRECTS, True, "HTTP 200", 200),
        (MAX_REDIRECTS + 1, False, "too many redirects", None),
    ],
)
async def test_at_most_ten_redirects_are_followed(
    prober: Prober, site: str, redirects: int, serving: bool, phrase: str, status: int | None
) -> None:
    """The documented limit: `too many redirects` means more than 10."""
    assert MAX_REDIRECTS == 10
    observation = await run_probe(prober, f"{site}/chain/{redirects}")
    check(observation, serving, phrase, status)


async def test_redirect_not_followed_is_its_own_status(prober: Prober, site: str) -> None:
    observation = await run_probe(prober, f"{site}/moved", follow_redirects=False)
    check(observation, False, "HTTP 302", 302)


async def test_redirect_not_followed_but_expected_is_serving(prober: Prober, site: str) -> None:
    observation = await run_probe(
        prober, f"{site}/moved", follow_redirects=False, expect_status=[302]
    )
    check(observation, True, "HTTP 302", 302)


# --- network failures --------------------------------------------------------------------------


async def test_closed_port_is_connection_refused(prober: Prober) -> None:
    observation, elapsed = await timed(run_probe(prober, f"http://{HOST}:{closed_port()}/"))
    check(observation, False, "connection refused", None)
    assert elapsed < 5.0


async def test_unknown_host_is_dns_lookup_failed(prober: Prober) -> None:
    observation, elapsed = await timed(run_probe(prober, "http://no-such-host.invalid/"))
    check(observation, False, "DNS lookup failed", None)
    assert elapsed < 5.0


async def test_server_that_never_answers_times_out(prober: Prober, silent: RawServer) -> None:
    observation, elapsed = await timed(run_probe(prober, silent.url(), timeout=1))
    check(observation, False, "timeout after 1s", None)
    assert silent.connections == 1  # the silence was the server's, not a failed connect
    assert elapsed < 1 + SLACK
    # the whole timeout was waited: uvloop's timers count whole milliseconds of libuv's clock,
    # so one may fire up to a millisecond before `perf_counter` reaches it (0.99995 s was seen)
    assert observation.duration_seconds >= 1.0 - 0.002


@pytest.mark.parametrize("handler", [trickle_body, trickle_headers], ids=["body", "headers"])
async def test_server_that_trickles_a_byte_a_second_times_out(prober: Prober, handler) -> None:
    async with RawServer(handler) as server:
        observation, elapsed = await timed(run_probe(prober, server.url(), timeout=1))
    check(observation, False, "timeout after 1s", None)
    assert elapsed < 1 + SLACK


@pytest.mark.parametrize("rst", [False, True], ids=["fin", "rst"])
async def test_server_that_drops_the_connection_mid_body_is_a_reset(
    prober: Prober, rst: bool
) -> None:
    async with RawServer(reset_mid_body(rst)) as server:
        observation, elapsed = await timed(run_probe(prober, server.url(), timeout=5))
    check(observation, False, "connection reset", None)
    assert elapsed < 5.0


# --- the body cap ------------------------------------------------------------------------------


class HugeBody:
    """Streams up to 2 GB unless the client hangs up first; counts what it managed to send."""

    LIMIT = 2 * 1024**3
    CHUNK = b"\0" * 65536

    def __init__(self) -> None:
        self.sent = 0
        self.done = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = self.LIMIT
        await response.prepare(request)
        try:
            while self.sent < self.LIMIT:
                await response.write(self.CHUNK)
                self.sent += len(self.CHUNK)
        except ConnectionError:
            pass  # the client closed after its cap: the point of the test
        finally:
            self.done.set()
        return response


class CappedReadSpy(Prober):
    """A Prober that records how many body bytes each probe read."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.read_sizes: list[int] = []

    async def _fetch(self, spec: Probe, timings: Timings) -> Response:
        response = await super()._fetch(spec, timings)
        self.read_sizes.append(len(response.body))
        return response


@pytest.mark.parametrize("cap", [4096, DEFAULT_BODY_CAP])
async def test_huge_body_is_read_only_up_to_the_cap(cap: int) -> None:
    huge = HugeBody()
    app = web.Application()
    app.router.add_get("/huge", huge.handle)
    async with aiohttp_server(app) as base, CappedReadSpy(body_cap=cap) as prober:
        observation, elapsed = await timed(run_probe(prober, f"{base}/huge", timeout=10))
        await asyncio.wait_for(huge.done.wait(), timeout=10)  # the server saw the hang-up
    check(observation, True, "HTTP 200", 200)
    assert elapsed < 10
    assert prober.read_sizes and all(size <= cap for size in prober.read_sizes)
    assert huge.sent < 64 * 1024**2, f"server sent {huge.sent} bytes"


# --- slow but serving --------------------------------------------------------------------------


async def test_response_slower_than_the_limit_is_serving_but_degraded(
    prober: Prober, site: str
) -> None:
    observation = await run_probe(prober, f"{site}/slow", timeout=5, max_response_time="1s")
    check(observation, True, "response slower than 1s", 200)
    assert observation.degraded is True


# --- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(params=list(ENGINES))
def engine(
    request: pytest.FixtureRequest,
) -> Callable[[Issued], ssl.SSLContext | tls.ClientContext]:
    """Every TLS test runs on both engines (servers.ENGINES) and expects the same."""
    return ENGINES[request.param]


def tls_app() -> web.Application:
    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text=SERVING_TEXT, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", ok)
    return app


async def test_self_signed_certificate_is_not_trusted(engine, tmp_path: Path) -> None:
    other = make_ca(tmp_path)  # a CA the engine trusts, which signed nothing here
    cert = make_server_cert(tmp_path)
    async with (
        aiohttp_server(tls_app(), cert.server_context()) as base,
        Prober(ssl_context=engine(other)) as prober,
    ):
        observation, elapsed = await timed(run_probe(prober, f"{base}/"))
    check(observation, False, "TLS certificate not trusted", None)
    assert elapsed < 5.0


async def test_expired_certificate_from_a_trusted_ca_is_expired(engine, tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    now = datetime.now(UTC)
    cert = make_server_cert(
        tmp_path, issuer=ca, not_before=now - timedelta(days=60), not_after=now - timedelta(days=30)
    )
    async with (
        aiohttp_server(tls_app(), cert.server_context()) as base,
        Prober(ssl_context=engine(ca)) as prober,
    ):
        observation = await run_probe(prober, f"{base}/")
    check(observation, False, "TLS certificate expired", None)


async def test_certificate_for_another_host_name_is_not_trusted(engine, tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    cert = make_server_cert(tmp_path, issuer=ca, dns_names=("portal.example",), ip_addresses=())
    async with (
        aiohttp_server(tls_app(), cert.server_context()) as base,
        Prober(ssl_context=engine(ca)) as prober,
    ):
        observation = await run_probe(prober, f"{base}/")
    check(observation, False, "TLS certificate not trusted", None)


@pytest.mark.parametrize("host", [HOST, "localhost"])
async def test_trusted_certificate_is_serving_and_records_its_expiry(
    engine, tmp_path: Path, host: str
) -> None:
    ca = make_ca(tmp_path)
    cert = make_server_cert(tmp_path, issuer=ca)
    async with (
        aiohttp_server(tls_app(), cert.server_context()) as base,
        Prober(ssl_context=engine(ca)) as prober,
    ):
        observation = await run_probe(prober, f"{base.replace(HOST, host)}/")
    check(observation, True, "HTTP 200", 200)
    assert observation.tls_expiry is not None
    assert observation.tls_expiry.tzinfo is not None
    difference = observation.tls_expiry - cert.cert.not_valid_after_utc
    assert abs(difference.total_seconds()) <= 1.0


async def test_a_certificate_is_decoded_into_a_dict_once_for_many_probes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's SSL protocol (uvloop's, asyncio's) asks every connection for the peer's
    certificate as a dict, and so does the probe: it is decoded once per certificate, not
    twice a probe (2.4 % of `run`'s CPU at 200 HTTPS probes a second)."""
    ca = make_ca(tmp_path)
    cert = make_server_cert(tmp_path, issuer=ca)
    decoded: list[bool] = []
    real = ssl.SSLObject.getpeercert

    def counting(self: ssl.SSLObject, binary_form: bool = False) -> object:
        if not binary_form and not self.server_side:
            decoded.append(True)
        return real(self, binary_form)

    monkeypatch.setattr(ssl.SSLObject, "getpeercert", counting)
    async with (
        aiohttp_server(tls_app(), cert.server_context()) as base,
        Prober(ssl_context=ca.client_context()) as prober,
    ):
        observations = [await run_probe(prober, f"{base}/") for _ in range(3)]
    for observation in observations:
        check(observation, True, "HTTP 200", 200)
        assert observation.tls_expiry == observations[0].tls_expiry is not None
    assert len(decoded) == 1, f"decoded {len(decoded)} times for three probes"


# --- timings -----------------------------------------------------------------------------------


async def test_phases_are_recorded_for_a_plain_200(prober: Prober, site: str) -> None:
    observation = await run_probe(prober, f"{site}/ok")
    check(observation, True, "HTTP 200", 200)
    assert observation.connect_seconds is not None and observation.connect_seconds >= 0
    assert observation.first_byte_seconds is not None and observation.first_byte_seconds >= 0
    assert observation.duration_seconds >= observation.first_byte_seconds


async def test_dns_phase_is_recorded_for_a_host_name(prober: Prober, site: str) -> None:
    observation = await run_probe(prober, f"{site.replace(HOST, 'localhost')}/ok")
    check(observation, True, "HTTP 200", 200)
    assert observation.dns_seconds is not None and observation.dns_seconds >= 0


# --- isolation ---------------------------------------------------------------------------------


async def test_one_bad_endpoint_does_not_stall_the_others(
    prober: Prober, site: str, silent: RawServer
) -> None:
    timeout = 1.0
    hung = [run_probe(prober, silent.url(), timeout=timeout) for _ in range(10)]
    good = [run_probe(prober, f"{site}/ok", timeout=timeout) for _ in range(10)]
    observations, elapsed = await timed(asyncio.gather(*hung, *good))
    for observation in observations[:10]:
        check(observation, False, "timeout after 1s", None)
    for observation in observations[10:]:
        check(observation, True, "HTTP 200", 200)
        assert observation.duration_seconds < timeout  # not queued behind the silent ones
    assert silent.connections == 10
    assert elapsed < timeout + SLACK


# --- nothing secret in an observation ---------------------------------------------------------

SECRET_HEADERS = {"Authorization": "Bearer h34der-s3cret", "X-Api-Key": "k3y-s3cret"}
SECRET_PARTS = ("p4th-s3cret", "qu3ry-s3cret", "h0st-s3cret", *SECRET_HEADERS.values())


@pytest.mark.parametrize("case", ["served", "refused", "dns", "redirect-loop", "http-error"])
async def test_observation_holds_no_url_or_header_value(
    prober: Prober, site: str, case: str
) -> None:
    urls = {
        "served": f"{site}/private/p4th-s3cret?token=qu3ry-s3cret",
        "refused": f"http://{HOST}:{closed_port()}/p4th-s3cret?token=qu3ry-s3cret",
        "dns": "http://h0st-s3cret.invalid/p4th-s3cret?token=qu3ry-s3cret",
        "redirect-loop": f"{site}/loop?token=qu3ry-s3cret",
        "http-error": f"{site}/status/404?token=qu3ry-s3cret",
    }
    url = urls[case]
    observation = await run_probe(prober, url, headers=SECRET_HEADERS)
    assert observation.reason  # a real outcome was recorded
    for text in (repr(observation), str(observation), repr(dataclasses.asdict(observation))):
        assert url not in text
        for part in SECRET_PARTS:
            assert part not in text, (case, text)


async def test_malformed_host_name_is_a_dns_failure_not_an_exception() -> None:
    """An empty or overlong label cannot be encoded; the probe must still return. (Validation
    refuses such a URL in a plan; the prober does not rely on it.)"""
    async with Prober() as prober:
        for url in ("http://a..b/", f"http://{'a' * 64}.example/"):
            observation = await prober.probe(Probe.model_construct(url=url), timedelta(seconds=2))
            assert not observation.serving
            assert observation.reason == "DNS lookup failed"


# --- the wire: encodings, chunks, methods on redirect, credentials (monitor/net/http1.py) ---


class Wire:
    """A server that answers in the ways a probe's own HTTP client must read, and records what
    each request looked like (method, Authorization header)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []

    def app(self, other: str = "") -> web.Application:
        async def encoded(request: web.Request) -> web.Response:
            """`/encoded/<gzip|deflate|raw-deflate|broken>/<filler bytes>`: the notice after
            that many bytes of filler, compressed."""
            kind, size = request.match_info["kind"], int(request.match_info["size"])
            plain = b"x" * size + MAINTENANCE_TEXT.encode()
            if kind == "gzip":
                data = gzip.compress(plain)
            elif kind == "deflate":
                data = zlib.compress(plain)
            elif kind == "raw-deflate":
                packer = zlib.compressobj(wbits=-15)
                data = packer.compress(plain) + packer.flush()
            else:
                data = b"\x1f\x8b\x08\x00 not gzip at all"
            encoding = "gzip" if kind in ("gzip", "broken") else "deflate"
            headers = {"Content-Encoding": encoding, "Content-Type": "text/html; charset=utf-8"}
            return web.Response(body=data, headers=headers)

        async def chunked(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "text/html; charset=utf-8"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for part in (SERVING_TEXT, "<p>", MAINTENANCE_TEXT, "</p>"):
                await response.write(part.encode())
            await response.write_eof()
            return response

        async def record(request: web.Request) -> web.Response:
            self.seen.append((request.path, request.method, request.headers.get("Authorization")))
            return web.Response(text=SERVING_TEXT, content_type="text/html")

        async def redirect(request: web.Request) -> web.Response:
            self.seen.append((request.path, request.method, request.headers.get("Authorization")))
            code = int(request.match_info["code"])
            target = other + "/record" if request.match_info["where"] == "away" else "../../record"
            return web.Response(status=code, headers={"Location": target})

        app = web.Application()
        app.router.add_get("/encoded/{kind}/{size:\\d+}", encoded)
        app.router.add_get("/chunked", chunked)
        app.router.add_route("*", "/record", record)
        app.router.add_route("*", "/redirect/{code:\\d+}/{where}", redirect)
        return app


@pytest.mark.parametrize("kind", ["gzip", "deflate", "raw-deflate"])
async def test_compressed_bodies_are_matched_decoded(prober: Prober, kind: str) -> None:
    async with aiohttp_server(Wire().app()) as base:
        observation = await run_probe(
            prober, f"{base}/encoded/{kind}/100", body_not_matches=MAINTENANCE_PATTERN
        )
    check(observation, False, "body matches maintenance notice", 200)


@pytest.mark.parametrize(("filler", "serving"), [(3000, False), (4_000_000, True)])
async def test_the_body_cap_counts_decoded_bytes(filler: int, serving: bool) -> None:
    """A small gzip that expands to megabytes is read only up to the cap of decoded bytes: the
    notice within the first 4 KiB is seen, the one past them never is."""
    async with aiohttp_server(Wire().app()) as base, CappedReadSpy(body_cap=4096) as prober:
        observation = await run_probe(
            prober, f"{base}/encoded/gzip/{filler}", body_not_matches=MAINTENANCE_PATTERN
        )
    if serving:
        check(observation, True, "HTTP 200", 200)
    else:
        check(observation, False, "body matches maintenance notice", 200)
    assert prober.read_sizes and all(size <= 4096 for size in prober.read_sizes)


async def test_a_body_that_does_not_decode_is_a_reset(prober: Prober) -> None:
    async with aiohttp_server(Wire().app()) as base:
        observation = await run_probe(prober, f"{base}/encoded/broken/0")
    check(observation, False, "connection reset", None)


async def test_a_chunked_body_is_read_whole(prober: Prober) -> None:
    async with aiohttp_server(Wire().app()) as base:
        observation = await run_probe(
            prober, f"{base}/chunked", body_not_matches=MAINTENANCE_PATTERN
        )
    check(observation, False, "body matches maintenance notice", 200)


async def test_head_answer_ends_at_its_headers(prober: Prober) -> None:
    """A HEAD answer announces a Content-Length it never sends: the probe must not wait for it."""
    wire = Wire()
    async with aiohttp_server(wire.app()) as base:
        observation = await run_probe(prober, f"{base}/record", method="HEAD", timeout=3)
    check(observation, True, "HTTP 200", 200)
    assert wire.seen == [("/record", "HEAD", None)]


@pytest.mark.parametrize(
    ("code", "method"), [(301, "GET"), (302, "GET"), (303, "GET"), (307, "POST")]
)
async def test_a_redirected_post_is_sent_as_browsers_do(
    prober: Prober, code: int, method: str
) -> None:
    wire = Wire()
    async with aiohttp_server(wire.app()) as base:
        observation = await run_probe(
            prober, f"{base}/redirect/{code}/here", method="POST", body='{"q": 1}'
        )
    check(observation, True, "HTTP 200", 200)
    assert [seen[1] for seen in wire.seen] == ["POST", method]


async def test_credentials_stay_with_their_origin() -> None:
    """Basic credentials from the URL are sent; a redirect to another origin drops them."""
    away = Wire()
    async with aiohttp_server(away.app()) as other:
        home = Wire()
        async with aiohttp_server(home.app(other)) as base, Prober() as prober:
            url = base.replace("http://", "http://user:s3cret@")
            here = await run_probe(prober, f"{url}/redirect/302/here")
            there = await run_probe(prober, f"{url}/redirect/302/away")
    check(here, True, "HTTP 200", 200)
    check(there, True, "HTTP 200", 200)
    basic = "Basic " + base64.b64encode(b"user:s3cret").decode()
    assert home.seen == [
        ("/redirect/302/here", "GET", basic),
        ("/record", "GET", basic),
        ("/redirect/302/away", "GET", basic),
    ]
    assert away.seen == [("/record", "GET", None)]


async def endless_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A status line, then headers as fast as the client takes them, never ending."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\n")
    line = b"X-Filler: " + b"x" * 1000 + b"\r\n"
    while True:
        writer.write(line * 64)
        await writer.drain()


async def test_endless_headers_are_cut_off_not_buffered(prober: Prober) -> None:
    """A server streaming headers forever is a failed connection as soon as they pass 64 KiB,
    long before the timeout (before, they would have been buffered for the whole timeout)."""
    async with RawServer(endless_headers) as server:
        observation, elapsed = await timed(run_probe(prober, server.url(), timeout=30))
    check(observation, False, "connection failed (HeadersTooLarge)", None)
    assert elapsed < 30

"""What the probe's own HTTP client reads off the wire, held to what a browser or curl accepts
(issue 23, DESIGN.md "Choices already measured"): folded header lines, a header cap that does
not depend on how TCP cut the head, only the first answer on a connection, stacked content
codings, and reasons in the parser's or the TLS library's own words.

Raw answers come from `RawServer` on 127.0.0.1; where the verdict must not depend on how the
kernel splits the bytes into reads, the client's protocol is fed the splits directly.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import zlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp import web
from helpers import MAINTENANCE_PATTERN, MAINTENANCE_TEXT, SERVING_TEXT
from servers import Handler, RawServer, aiohttp_server, make_ca, make_server_cert, read_request
from test_tls import TlsServer, agree, handshake_failed, observe

from monitor import reasons
from monitor.kinds.http import Probe, Prober
from monitor.net import http1, resolver
from monitor.observation import Observation
from monitor.reasons import PHRASES as REASON_PHRASES

SERVING_PATTERN = "业务办理"


def answer(raw: bytes) -> Handler:
    """A handler that reads the request, writes `raw` in one piece and closes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()

    return handler


def page(text: str, *header_lines: bytes, status: bytes = b"200 OK", eol: bytes = b"\r\n") -> bytes:
    """An answer with a Content-Length, the given header lines (each without its line end)."""
    body = text.encode()
    lines = [b"HTTP/1.1 " + status, b"Content-Type: text/html; charset=utf-8", *header_lines]
    lines.append(b"Content-Length: " + str(len(body)).encode())
    return eol.join(lines) + eol + eol + body


async def probe_raw(raw: bytes, **fields) -> Observation:
    async with RawServer(answer(raw)) as server, Prober() as prober:
        return await prober.probe(Probe(url=server.url(), **fields), timedelta(seconds=5))


async def fetch_raw(raw: bytes, cap: int = 256 * 1024) -> http1.Response:
    async with RawServer(answer(raw)) as server:
        return await http1.fetch(
            "GET",
            server.url(),
            headers={},
            body=None,
            context=ssl.create_default_context,
            cap=cap,
            follow_redirects=False,
            user_agent="test",
            timings=http1.Timings(),
        )


def outcome(observation: Observation) -> tuple[bool | None, str, int | None]:
    assert any(observation.reason.startswith(p) for p in REASON_PHRASES), observation
    assert reasons.lookup(observation.reason) is not None, observation
    return observation.serving, observation.reason, observation.status_code


# --- obs-fold and bare LF (RFC 9112 sections 5.2 and 2.2) ---------------------------------------


@pytest.mark.parametrize("fold", [b"\r\n ", b"\r\n\t", b"\r\n   \t "])
async def test_a_folded_header_line_is_read_as_part_of_the_field_above(fold: bytes) -> None:
    raw = page(SERVING_TEXT, b"X-Note: first" + fold + b"second", b"Cache-Control: no-cache")
    response = await fetch_raw(raw)
    assert response.status == 200
    note = response.headers["x-note"]
    assert note.startswith("first") and note.endswith("second"), note
    assert "\r" not in note and "\n" not in note
    assert response.headers["cache-control"] == "no-cache"
    assert response.body == SERVING_TEXT.encode()


async def test_a_folded_answer_is_judged_by_its_status_and_body() -> None:
    """Before, llhttp refused the fold and a serving channel was reported down."""
    folded = b"Set-Cookie: a=1;\r\n Path=/"
    served = await probe_raw(page(SERVING_TEXT, folded), body_matches=SERVING_PATTERN)
    assert outcome(served) == (True, "HTTP 200", 200)
    notice = await probe_raw(page(MAINTENANCE_TEXT, folded), body_not_matches=MAINTENANCE_PATTERN)
    assert outcome(notice) == (False, "body matches maintenance notice", 200)


async def test_lines_ended_by_a_bare_lf_are_read_as_curl_reads_them() -> None:
    observation = await probe_raw(page(SERVING_TEXT, b"X-A: b", eol=b"\n"), body_matches="业务")
    assert outcome(observation) == (True, "HTTP 200", 200)


# --- the parser's own words ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "words"),
    [
        ((b"Content-Length: 5", b"Content-Length: 7"), "Duplicate Content-Length"),
        (
            (b"Transfer-Encoding: chunked",),
            "Content-Length can't be present with Transfer-Encoding",
        ),
        ((b"Bad Name: x",), "Invalid header token"),
    ],
    ids=["two-lengths", "length-and-chunked", "space-in-name"],
)
async def test_an_answer_the_parser_refuses_is_reported_in_its_words(
    lines: tuple[bytes, ...], words: str
) -> None:
    observation = await probe_raw(page(SERVING_TEXT, *lines))
    serving, reason, status = outcome(observation)
    assert (serving, status) == (False, None)
    assert reason.startswith("invalid HTTP answer ("), reason
    assert words.lower() in reason.lower(), reason
    # operators read the parser's words; the page says only that the answer was unreadable
    assert words in reasons.describe(reason, "en")
    assert words not in reasons.describe(reason, "zh", public=True)


# --- the header cap counts the head, however it was cut ----------------------------------------


def head_of(size: int, interim: bool = False) -> bytes:
    """A head of exactly `size` bytes (filler headers), optionally after a 100 Continue."""
    start = (b"HTTP/1.1 100 Continue\r\n\r\n" if interim else b"") + b"HTTP/1.1 200 OK\r\n"
    end = b"Content-Length: 2\r\n\r\n"
    lines = []
    left = size - len(start) - len(end)
    while left > 0:
        take = min(left, 1000)
        if left - take and left - take < 12:  # never leave less than one header line's worth
            take = left - 12
        lines.append(b"X-F: " + b"f" * (take - 7) + b"\r\n")
        left -= take
    head = start + b"".join(lines) + end
    assert len(head) == size
    return head


async def feed(data: bytes, piece: int) -> BaseException | tuple[int, bytes]:
    """The client's protocol fed `data` in reads of `piece` bytes: its verdict."""
    exchange = http1._Exchange(cap=1024, head=False)
    for at in range(0, len(data), piece):
        exchange.data_received(data[at : at + piece])
    exchange.eof_received()
    try:
        await exchange.done
    except Exception as exc:  # the verdict under test
        return exc
    return exchange.status, b"".join(exchange.chunks)


SPLITS = [120_059 + 2, 65_536, 8192, 1460, 7, 1]


@pytest.mark.parametrize(
    ("size", "fits"),
    [
        (120_059, False),
        (http1.MAX_HEAD_BYTES + 1, False),
        (http1.MAX_HEAD_BYTES, True),
        (500, True),
    ],
)
@pytest.mark.parametrize("interim", [False, True], ids=["", "after-100"])
async def test_the_header_cap_gives_one_verdict_whatever_the_reads(
    size: int, fits: bool, interim: bool
) -> None:
    data = head_of(size, interim) + b"ok"
    verdicts = [await feed(data, piece) for piece in SPLITS]
    for verdict in verdicts:
        if fits:
            assert verdict == (200, b"ok"), verdict
        else:
            assert isinstance(verdict, http1.HeadersTooLarge), verdict


@pytest.mark.parametrize("piece", [None, 8192])
async def test_a_head_over_the_cap_fails_in_one_write_or_many(piece: int | None) -> None:
    """The issue's case: a 120,059-byte head gave HTTP 200 in one read, HeadersTooLarge in
    8 KiB reads. Written here both ways; the reads the kernel makes may differ, not the verdict."""
    raw = head_of(120_059) + b"ok"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        for at in range(0, len(raw), piece or len(raw)):
            writer.write(raw[at : at + (piece or len(raw))])
            await writer.drain()

    async with RawServer(handler) as server, Prober() as prober:
        observation = await prober.probe(Probe(url=server.url()), timedelta(seconds=5))
    assert outcome(observation) == (False, "connection failed (HeadersTooLarge)", None)


# --- only the first answer on a connection ---------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        (b"503 Service Unavailable", b"200 OK", (False, "HTTP 503", 503)),
        (b"200 OK", b"503 Service Unavailable", (True, "HTTP 200", 200)),
    ],
)
async def test_only_the_first_answer_on_a_connection_is_read(
    first: bytes, second: bytes, expected: tuple
) -> None:
    raw = page(MAINTENANCE_TEXT, status=first) + page(SERVING_TEXT, status=second)
    observation = await probe_raw(raw, body_matches=SERVING_PATTERN)
    if expected[1] == "HTTP 200":  # the first answer's body is the notice: that is what counts
        expected = (False, "body does not match", 200)
    assert outcome(observation) == expected


@pytest.mark.parametrize("piece", [1 << 20, 13, 1])
async def test_bytes_after_the_first_answer_change_nothing(piece: int) -> None:
    first = b"HTTP/1.1 503 No\r\nContent-Length: 3\r\nX-First: yes\r\n\r\nbye"
    second = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-First: no\r\n\r\nok"
    assert await feed(first + second, piece) == (503, b"bye")
    assert await feed(first + b"\x00garbage that is no answer", piece) == (503, b"bye")


# --- content codings, stacked ----------------------------------------------------------------


def encoded(text: str, codings: str) -> bytes:
    """`text` under the codings of a Content-Encoding value, applied in the order listed."""
    data = text.encode()
    for coding in (c.strip() for c in codings.split(",")):
        if coding in ("gzip", "x-gzip"):
            data = gzip.compress(data)
        elif coding == "deflate":
            data = zlib.compress(data)
        elif coding == "raw-deflate":
            packer = zlib.compressobj(wbits=-15)
            data = packer.compress(data) + packer.flush()
    return data


def coded_page(text: str, codings: str, declared: str | None = None) -> bytes:
    body = encoded(text, codings)
    declared = declared or codings
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
        + f"Content-Encoding: {declared}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


@pytest.mark.parametrize(
    ("codings", "declared"),
    [
        ("gzip, gzip", None),
        ("gzip", "gzip, identity"),
        ("gzip", "identity, gzip"),
        ("deflate, gzip", None),
        ("gzip, deflate", None),
        ("x-gzip, deflate, gzip", "X-GZIP,deflate ,  gzip"),
        ("raw-deflate, gzip", "deflate, gzip"),
    ],
)
async def test_every_listed_coding_is_undone_before_the_body_is_matched(
    codings: str, declared: str | None
) -> None:
    """Before, a stacked coding left the body compressed: the notice was never seen and a
    channel under maintenance was reported serving."""
    raw = coded_page(MAINTENANCE_TEXT, codings, declared)
    observation = await probe_raw(raw, body_not_matches=MAINTENANCE_PATTERN)
    assert outcome(observation) == (False, "body matches maintenance notice", 200)
    response = await fetch_raw(raw)
    assert response.body == MAINTENANCE_TEXT.encode() and response.undecoded is None


@pytest.mark.parametrize("cap", [1000, 64 * 1024 + 5])
async def test_a_stacked_bomb_is_read_only_up_to_the_cap(cap: int) -> None:
    plain = b"<p>" + b"0" * (8 * 1024 * 1024)
    body = gzip.compress(gzip.compress(plain))
    raw = (
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip, gzip\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    response = await fetch_raw(raw, cap=cap)
    assert response.body == plain[:cap]


@pytest.mark.parametrize("declared", ["br", "zstd", "gzip, br", "br, gzip", "compress"])
@pytest.mark.parametrize(
    "condition",
    [{"body_not_matches": MAINTENANCE_PATTERN}, {"body_matches": SERVING_PATTERN}, {"json": ["a"]}],
    ids=["not-matches", "matches", "json"],
)
async def test_a_body_in_a_coding_not_decoded_is_never_matched(
    declared: str, condition: dict
) -> None:
    """The body is still compressed: whatever a pattern would say of it is meaningless, so the
    probe says it cannot tell (serving None: the judge's `unknown`), naming the coding."""
    raw = coded_page(MAINTENANCE_TEXT, "gzip" if "gzip" in declared else "", declared)
    observation = await probe_raw(raw, **condition)
    coding = "br" if "br" in declared else declared
    assert outcome(observation) == (None, f"content encoding not supported: {coding}", 200)
    assert "br" not in reasons.describe(observation.reason, "en", public=True)
    response = await fetch_raw(raw)
    assert response.body == b"" and response.undecoded == coding


async def test_a_coding_not_decoded_does_not_matter_without_a_body_check() -> None:
    observation = await probe_raw(coded_page("anything", "", "br"))
    assert outcome(observation) == (True, "HTTP 200", 200)
    error = await probe_raw(coded_page("anything", "", "br").replace(b"200 OK", b"503 No"))
    assert outcome(error) == (False, "HTTP 503", 503)


# --- the TLS library's own words ---------------------------------------------------------------


@pytest.fixture
async def tls_1_0_server(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    ca = make_ca(tmp_path)
    cert = make_server_cert(tmp_path, issuer=ca)
    context = cert.server_context()
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.warns(DeprecationWarning):
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1
    server = TlsServer(context, b"")
    async with RawServer(server.serve) as raw:
        yield raw.port, ca
    assert server.errors and set(server.errors) == {"UNSUPPORTED_PROTOCOL"}, server.errors


async def test_a_tls_1_0_server_is_a_failed_handshake_in_openssl_words(tls_1_0_server) -> None:
    """Both engines hear the server's protocol_version alert and say so."""
    port, ca = tls_1_0_server
    seen = await observe(f"https://127.0.0.1:{port}/", ca)
    agree(seen, handshake_failed("protocol version"))
    reason = next(iter(seen.values())).reason
    assert reasons.describe(reason, "zh") == "加密连接失败（protocol version）"
    assert reasons.describe(reason, "zh", public=True) == "加密连接失败"


# --- several addresses: Happy Eyeballs (RFC 8305) ----------------------------------------------

BLACKHOLES = ("2001:db8::1", "2001:db8::2", "192.0.2.1")


class Addresses:
    """A name's addresses from a stubbed resolver, and a connect that never completes for the
    documentation addresses in `BLACKHOLES` (as a host that drops SYNs): which were tried, in
    what order, and which were given up."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *addresses: str) -> None:
        self.tried: list[str] = []
        self.refused: set[str] = set()
        self.hung: set[str] = set()
        self.given_up: set[str] = set()
        self.all_given_up = asyncio.Event()
        real = http1._attempt

        async def attempt(loop, address, port, host, context, exchange):
            self.tried.append(address)
            if address in self.refused:
                raise ConnectionRefusedError(111, "refused")
            if address not in BLACKHOLES:
                return await real(loop, address, port, host, context, exchange)
            self.hung.add(address)
            try:
                await loop.create_future()  # no SYN-ACK, ever
            finally:
                self.given_up.add(address)
                if self.given_up == self.hung:
                    self.all_given_up.set()

        async def getaddrinfo(host, port, *args, **kwargs):
            family = {True: socket.AF_INET6, False: socket.AF_INET}
            return [(family[":" in a], socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

        monkeypatch.setattr(http1, "_attempt", attempt)
        monkeypatch.setattr(resolver, "getaddrinfo", getaddrinfo)


@pytest.fixture
async def site() -> AsyncIterator[int]:
    async with RawServer(answer(page(SERVING_TEXT))) as server:
        yield server.port


async def test_a_blackholed_first_address_costs_a_moment_not_the_timeout(
    monkeypatch: pytest.MonkeyPatch, site: int
) -> None:
    """Before, the probe waited on the first address for its whole timeout."""
    names = Addresses(monkeypatch, "192.0.2.1", "127.0.0.1")
    async with Prober() as prober:
        spec = Probe(url=f"http://channel.test:{site}/", body_matches=SERVING_PATTERN)
        observation = await prober.probe(spec, timedelta(seconds=10))
    assert outcome(observation) == (True, "HTTP 200", 200)
    assert observation.duration_seconds < 5  # a generous bound: the delay is 0.25 s
    assert names.tried == ["192.0.2.1", "127.0.0.1"]
    await asyncio.wait_for(names.all_given_up.wait(), 5)  # the hung attempt was ended


async def test_the_families_alternate_and_every_loser_is_ended(
    monkeypatch: pytest.MonkeyPatch, site: int
) -> None:
    names = Addresses(monkeypatch, "2001:db8::1", "2001:db8::2", "192.0.2.1", "127.0.0.1")
    async with Prober() as prober:
        observation = await prober.probe(
            Probe(url=f"http://channel.test:{site}/"), timedelta(seconds=10)
        )
    assert outcome(observation) == (True, "HTTP 200", 200)
    assert names.tried == ["2001:db8::1", "192.0.2.1", "2001:db8::2", "127.0.0.1"]
    await asyncio.wait_for(names.all_given_up.wait(), 5)
    assert names.given_up == set(BLACKHOLES)


async def test_after_a_refusal_the_next_address_is_tried_at_once(
    monkeypatch: pytest.MonkeyPatch, site: int
) -> None:
    """A delay as long as the timeout: only a failure can start the next attempt in time."""
    monkeypatch.setattr(http1, "ATTEMPT_DELAY", 60.0)
    names = Addresses(monkeypatch, "127.0.0.9", "127.0.0.1")
    names.refused.add("127.0.0.9")
    async with Prober() as prober:
        observation = await prober.probe(
            Probe(url=f"http://channel.test:{site}/"), timedelta(seconds=5)
        )
    assert outcome(observation) == (True, "HTTP 200", 200)
    assert names.tried == ["127.0.0.9", "127.0.0.1"]


async def test_when_every_address_fails_the_last_failure_is_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = Addresses(monkeypatch, "127.0.0.9", "127.0.0.8")
    names.refused.update(("127.0.0.9", "127.0.0.8"))
    async with Prober() as prober:
        refused = await prober.probe(Probe(url="http://channel.test:81/"), timedelta(seconds=5))
    assert outcome(refused) == (False, "connection refused", None)
    assert names.tried == ["127.0.0.9", "127.0.0.8"]


async def test_a_blackhole_left_alone_is_waited_for_until_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The others refused, but the blackholed address might still answer: the probe's timeout
    is what ends the wait, and the reason says so."""
    names = Addresses(monkeypatch, "127.0.0.9", "192.0.2.1")
    names.refused.add("127.0.0.9")
    async with Prober() as prober:
        observation = await prober.probe(Probe(url="http://channel.test:81/"), timedelta(seconds=1))
    assert outcome(observation) == (False, "timeout after 1s", None)
    await asyncio.wait_for(names.all_given_up.wait(), 5)


async def test_tls_through_the_race_on_both_engines(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca = make_ca(tmp_path)
    cert = make_server_cert(tmp_path, issuer=ca, dns_names=("channel.test",))
    Addresses(monkeypatch, "192.0.2.1", "127.0.0.1")
    async with aiohttp_server(tls_page(), cert.server_context()) as base:
        port = base.rsplit(":", 1)[1]
        seen = await observe(f"https://channel.test:{port}/", ca)
    agree(seen, (True, "HTTP 200", 200))


def tls_page() -> web.Application:
    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text=SERVING_TEXT, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", ok)
    return app


def test_addresses_are_interleaved_by_family() -> None:
    assert http1._interleave(["a:1", "a:2", "b", "c", "a:3"]) == ["a:1", "b", "a:2", "c", "a:3"]
    assert http1._interleave(["b", "a:1", "c"]) == ["b", "a:1", "c"]
    assert http1._interleave(["b", "c"]) == ["b", "c"]

"""The probes' own TLS engine (`monitor.net.tls`, `cryptography`'s OpenSSL) against Python's `ssl`.

`monitor.net.tls` is meant to check what `ssl.create_default_context()` checks and to fail the same
way, so that a probe's observation does not depend on which of the two made the handshake.
Every scenario here probes with both engines and asserts that both give the observation stated
in the test: equal to each other, and right (two engines broken the same way still fail).
The servers misbehave on purpose, before, during and after the handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import os
import socket
import ssl
import struct
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.bindings.openssl.binding import Binding
from helpers import MAINTENANCE_PATTERN, MAINTENANCE_TEXT, SERVING_TEXT
from servers import (
    ENGINES,
    HOST,
    Handler,
    Issued,
    RawServer,
    aiohttp_server,
    make_ca,
    make_server_cert,
)

from monitor.kinds.http import Probe, Prober
from monitor.net import resolver, tls
from monitor.observation import Observation

TIMEOUT = 1.0
#: The correctness bound on a probe that must end by its timeout (generous: a shared machine).
SLACK = 3.0
NOT_TRUSTED = (False, "TLS certificate not trusted", None)


def handshake_failed(words: str) -> tuple[bool, str, None]:
    """A failed handshake, with OpenSSL's words for it as both engines must give them."""
    return (False, f"TLS handshake failed ({words})", None)


RESET = (False, "connection reset", None)
TIMED_OUT = (False, "timeout after 1s", None)
OK = (True, "HTTP 200", 200)


async def observe(url: str, ca: Issued, timeout: float = 5.0, **fields) -> dict[str, Observation]:
    """One probe of `url` with each engine, trusting `ca` only."""
    seen = {}
    for name, make in ENGINES.items():
        async with Prober(ssl_context=make(ca)) as prober:
            spec = Probe(url=url, **fields)
            seen[name] = await prober.probe(spec, timedelta(seconds=timeout))
    return seen


def agree(seen: dict[str, Observation], expected: tuple[bool, str, int | None]) -> None:
    """Both engines gave `expected` as (serving, reason, status) and the same certificate end
    date, and `monitor.net.tls` left nothing in OpenSSL's error queue (shared with `cryptography`,
    which would read a stale entry as its own); the whole observations are in the message."""
    outcomes = {name: (o.serving, o.reason, o.status_code) for name, o in seen.items()}
    assert outcomes == dict.fromkeys(ENGINES, expected), seen
    assert len({o.tls_expiry for o in seen.values()}) == 1, seen
    assert all((o.tls_expiry is not None) == (o.status_code is not None) for o in seen.values())
    assert Binding.lib.ERR_peek_error() == 0  # OpenSSL's error queue left empty


def page(text: str = SERVING_TEXT, **headers: str) -> web.Application:
    async def answer(_request: web.Request) -> web.Response:
        return web.Response(text=text, content_type="text/html", headers=headers)

    app = web.Application()
    app.router.add_get("/", answer)
    return app


@pytest.fixture
def ca(tmp_path: Path) -> Issued:
    return make_ca(tmp_path)


@pytest.fixture
def cert(tmp_path: Path, ca: Issued) -> Issued:
    """A certificate for `localhost` and 127.0.0.1 from `ca`."""
    return make_server_cert(tmp_path, issuer=ca)


# --- names: SNI, IP literals, wildcards, the CN ----------------------------------------------


@pytest.mark.parametrize(("host", "sent"), [("localhost", "localhost"), (HOST, None)])
async def test_sni_carries_a_host_name_and_never_an_ip(
    ca: Issued, cert: Issued, host: str, sent: str | None
) -> None:
    names: list[str | None] = []
    context = cert.server_context()
    context.sni_callback = lambda _sock, name, _context: names.append(name)
    async with aiohttp_server(page(), context) as base:
        seen = await observe(f"{base.replace(HOST, host)}/", ca)
    agree(seen, OK)
    assert names == [sent, sent], names


@pytest.mark.parametrize(
    ("names", "addresses", "host", "expected"),
    [
        (("localhost",), (), HOST, NOT_TRUSTED),  # an IP literal needs an IP address SAN
        ((), (HOST,), "localhost", NOT_TRUSTED),  # ... and a name a DNS SAN
        ((HOST,), (), HOST, NOT_TRUSTED),  # an address written as a DNS SAN does not count
        (("*.portal.example",), (), "www.portal.example", OK),
        (("*.portal.example",), (), "a.www.portal.example", NOT_TRUSTED),  # one label only
        (("w*.portal.example",), (), "www.portal.example", NOT_TRUSTED),  # no partial wildcard
        (("local*",), (), "localhost", NOT_TRUSTED),
        (("LOCALHOST",), (), "localhost", OK),  # names compare without case
        # OpenSSL 4.0 refuses to check these names at all (X509_VERIFY_PARAM_set1_host fails);
        # Python's ssl (OpenSSL 3.0) checks them against the certificate
        (("www.portal.example",), (), "www.portal.example.", NOT_TRUSTED),  # a trailing dot
        (("a-.portal.example",), (), "a-.portal.example", OK),  # a label ending in "-"
    ],
    ids=[
        *("dns-san-for-ip", "ip-san-for-name", "ip-as-dns-san", "wildcard", "wildcard-depth"),
        *("partial-wildcard", "star-suffix", "case", "trailing-dot", "label-ends-in-hyphen"),
    ],
)
async def test_host_names_and_addresses_are_matched_alike(
    tmp_path: Path,
    ca: Issued,
    monkeypatch: pytest.MonkeyPatch,
    names: tuple[str, ...],
    addresses: tuple[str, ...],
    host: str,
    expected: tuple,
) -> None:
    real = resolver.getaddrinfo

    async def loopback(name: str, port: int, *args, **kwargs):
        """Names under .example are this machine (only the probe's lookups are redirected)."""
        if name.rstrip(".").endswith(".example"):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (HOST, port))]
        return await real(name, port, *args, **kwargs)

    monkeypatch.setattr(resolver, "getaddrinfo", loopback)
    cert = make_server_cert(tmp_path, issuer=ca, dns_names=names, ip_addresses=addresses)
    async with aiohttp_server(page(), cert.server_context()) as base:
        agree(await observe(f"{base.replace(HOST, host)}/", ca), expected)


async def test_a_certificate_named_only_by_its_common_name(tmp_path: Path, ca: Issued) -> None:
    """No subject alternative names: neither engine reads the Common Name instead, as browsers,
    Go and RFC 9525 do not. Left to the libraries, OpenSSL 4.0 (`cryptography` 48) and
    Python's `ssl` would trust it and OpenSSL 4.1 (`cryptography` 51) would not; the policy set
    in `monitor.net.tls` makes it a host-name mismatch on every build."""
    cert = make_server_cert(
        tmp_path, issuer=ca, dns_names=(), ip_addresses=(), common_name="localhost"
    )
    assert not any(isinstance(e.value, x509.SubjectAlternativeName) for e in cert.cert.extensions)
    async with aiohttp_server(page(), cert.server_context()) as base:
        agree(await observe(f"{base.replace(HOST, 'localhost')}/", ca), NOT_TRUSTED)
    # the same reason as a certificate that names another host: a host-name mismatch
    other = make_server_cert(
        tmp_path, issuer=ca, dns_names=("other.example",), ip_addresses=(), stem="other"
    )
    async with aiohttp_server(page(), other.server_context()) as base:
        agree(await observe(f"{base.replace(HOST, 'localhost')}/", ca), NOT_TRUSTED)


class TlsServer:
    """A TLS server on memory buffers over a raw connection, so the test decides how the
    connection ends: with close_notify (`close_notify=True`) or a bare TCP close (a ragged
    EOF, as a server or middlebox that drops the connection sends). Records handshake errors."""

    def __init__(self, context: ssl.SSLContext, answer: bytes, close_notify: bool = True) -> None:
        self.context, self.answer, self.close_notify = context, answer, close_notify
        self.errors: list[str] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls_ = self.context.wrap_bio(incoming, outgoing, server_side=True)

        async def pump(step):  # run `step` until it needs no more of the client's bytes
            while True:
                try:
                    return step()
                except ssl.SSLWantReadError:
                    writer.write(outgoing.read())  # what the client waits for
                    data = await reader.read(65536)
                    if not data:
                        raise ConnectionResetError from None
                    incoming.write(data)
                finally:
                    writer.write(outgoing.read())  # the alert of a failed handshake too

        try:
            await pump(tls_.do_handshake)
        except ssl.SSLError as exc:
            self.errors.append(exc.reason)
            return
        request = b""
        while b"\r\n\r\n" not in request:
            request += await pump(lambda: tls_.read(65536))
        tls_.write(self.answer)
        if self.close_notify:
            with contextlib.suppress(ssl.SSLWantReadError):
                tls_.unwrap()  # close_notify is sent; the client's own is not waited for
        writer.write(outgoing.read())
        await writer.drain()


# --- servers that fail before or during the handshake ---------------------------------------


async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept and close (RawServer closes the connection when the handler returns)."""


async def close_after_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)


async def reset_after_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)
    sock = writer.get_extra_info("socket")  # a zero linger: the close is a RST
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def silent_after_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)
    await reader.read()  # until the client hangs up


async def trickle_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A handshake record of 16 KiB announced, then a byte of it every 50 ms (bounded)."""
    await reader.read(65536)
    writer.write(b"\x16\x03\x03\x40\x00\x02")
    for _ in range(400):
        writer.write(b"\x00")
        await writer.drain()
        await asyncio.sleep(0.05)  # the pace of the trickle, not a synchronisation


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        (close_at_once, RESET),
        (close_after_hello, RESET),
        (reset_after_hello, RESET),
        (silent_after_hello, TIMED_OUT),
        (trickle_handshake, TIMED_OUT),
    ],
    ids=lambda value: getattr(value, "__name__", ""),
)
async def test_a_server_failing_the_handshake(ca: Issued, handler: Handler, expected) -> None:
    async with RawServer(handler) as server:
        seen = await observe(f"https://{HOST}:{server.port}/", ca, timeout=TIMEOUT)
    agree(seen, expected)
    assert all(o.duration_seconds < TIMEOUT + SLACK for o in seen.values()), seen


async def test_plain_http_on_an_https_url(ca: Issued) -> None:
    async with aiohttp_server(page()) as base:
        agree(
            await observe(f"{base.replace('http:', 'https:')}/", ca),
            handshake_failed("wrong version number"),
        )


async def test_a_server_of_tls_1_1_at_most(ca: Issued, cert: Issued) -> None:
    """The server's protocol_version alert is a failed handshake on both (a server that only
    hangs up instead is a reset, above)."""
    context = cert.server_context()
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.warns(DeprecationWarning):  # Python, too, calls these versions deprecated
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    server = TlsServer(context, b"")
    async with RawServer(server.serve) as raw:
        seen = await observe(f"https://{HOST}:{raw.port}/", ca)
        agree(seen, handshake_failed("protocol version"))
    assert server.errors == ["UNSUPPORTED_PROTOCOL"] * 2, server.errors


def settings(
    ciphers: str | None = None, curve: str | None = None, client_cert: bool = False
) -> Callable[[Issued, Issued], ssl.SSLContext]:
    """A server context (TLS 1.2 at most when `ciphers` are given) for the parity table below."""

    def make(cert: Issued, ca: Issued) -> ssl.SSLContext:
        context = cert.server_context()
        if ciphers is not None:
            context.maximum_version = ssl.TLSVersion.TLSv1_2
            context.set_ciphers(ciphers)
        if curve is not None:
            context.set_ecdh_curve(curve)
        if client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(ca.cert_path)
        return context

    return make


@pytest.mark.parametrize(
    ("server", "expected", "error"),
    [
        (settings(ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"), OK, None),
        (settings(ciphers="ECDHE-ECDSA-AES128-SHA256"), OK, None),
        (
            settings(ciphers="ECDHE-ECDSA-AES128-SHA"),
            handshake_failed("handshake failure"),
            "NO_SHARED_CIPHER",
        ),
        (
            settings(ciphers="ECDHE-ECDSA-AES128-CCM"),
            handshake_failed("handshake failure"),
            "NO_SHARED_CIPHER",
        ),
        (settings(curve="secp521r1"), OK, None),  # a second round trip for the key share
        (
            settings(client_cert=True),
            handshake_failed("certificate required"),
            "PEER_DID_NOT_RETURN_A_CERTIFICATE",
        ),
    ],
    ids=["gcm", "cbc-sha256", "cbc-sha1", "ccm", "p521-only", "client-cert-required"],
)
async def test_what_the_client_offers(
    ca: Issued, cert: Issued, server: Callable, expected: tuple, error: str | None
) -> None:
    """Python's cipher string (TLS 1.2: no SHA-1 MACs, no CCM), OpenSSL 3.0's groups, and no
    client certificate; the server's alert is a failed handshake, before or after it ends."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    tls_server = TlsServer(server(cert, ca), answer)
    async with RawServer(tls_server.serve) as raw:
        agree(await observe(f"https://localhost:{raw.port}/", ca), expected)
    assert tls_server.errors == ([error] * 2 if error else []), tls_server.errors


# --- after the handshake: how the answer ends --------------------------------------------------


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"


@pytest.mark.parametrize(
    ("answer", "close_notify", "expected"),
    [
        (HEAD + b"\r\n" + SERVING_TEXT.encode(), True, OK),  # the body ends at close_notify
        (HEAD + b"\r\n" + SERVING_TEXT.encode(), False, OK),  # ... or at a bare TCP close
        (HEAD + b"Content-Length: 9999\r\n\r\n" + SERVING_TEXT.encode(), False, RESET),
        (HEAD + b"Content-Length: 9999\r\n\r\n" + SERVING_TEXT.encode(), True, RESET),
        (HEAD, True, RESET),  # the headers cut short
    ],
    ids=["close_notify", "ragged", "short-ragged", "short-close_notify", "no-head"],
)
async def test_how_the_answer_ends(
    ca: Issued, cert: Issued, answer: bytes, close_notify: bool, expected: tuple
) -> None:
    server = TlsServer(cert.server_context(), answer, close_notify)
    async with RawServer(server.serve) as raw:
        seen = await observe(f"https://localhost:{raw.port}/", ca, body_matches=SERVING_TEXT)
    agree(seen, expected)
    assert server.errors == []


async def test_a_large_body_is_capped_alike(ca: Issued, cert: Issued) -> None:
    """8 MB, the notice after the 256 KiB cap: never read, so the page is serving."""
    text = "x" * 8_000_000 + MAINTENANCE_TEXT
    async with aiohttp_server(page(text), cert.server_context()) as base:
        seen = await observe(f"{base}/", ca, body_not_matches=MAINTENANCE_PATTERN)
    agree(seen, OK)


async def test_a_gzip_body_is_decoded_alike(ca: Issued, cert: Issued) -> None:
    body = gzip.compress(("x" * 100_000 + MAINTENANCE_TEXT).encode())

    async def answer(_request: web.Request) -> web.Response:
        headers = {"Content-Encoding": "gzip", "Content-Type": "text/html; charset=utf-8"}
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/", answer)
    async with aiohttp_server(app, cert.server_context()) as base:
        seen = await observe(f"{base}/", ca, body_not_matches=MAINTENANCE_PATTERN)
    agree(seen, (False, "body matches maintenance notice", 200))


# --- long chains -------------------------------------------------------------------------------


@pytest.mark.parametrize(("length", "expected"), [(50, OK), (120, NOT_TRUSTED)])
async def test_a_long_chain_of_intermediates(
    tmp_path: Path, ca: Issued, length: int, expected: tuple
) -> None:
    """The server sends its certificate and `length` intermediates; both engines verify at
    most 100 (OpenSSL's default depth, which neither changes)."""
    issuer, pem = ca, b""
    for number in range(length):
        issuer = make_ca(tmp_path, f"intermediate {number}", issuer=issuer, stem=f"i{number}")
        pem = issuer.cert_path.read_bytes() + pem
    cert = make_server_cert(tmp_path, issuer=issuer)
    cert.cert_path.write_bytes(cert.cert_path.read_bytes() + pem)
    async with aiohttp_server(page(), cert.server_context()) as base:
        agree(await observe(f"{base}/", ca), expected)


# --- the fallback, the trust store, leaks ------------------------------------------------------


@pytest.fixture
def fresh_system_context(monkeypatch: pytest.MonkeyPatch):
    """`tls.system_context()` built anew in the test, and not kept after it."""
    bindings = tls._bindings
    tls.system_context.cache_clear()
    bindings.cache_clear()
    yield monkeypatch
    tls.system_context.cache_clear()
    bindings.cache_clear()


@pytest.mark.parametrize("bindings", [True, False], ids=["cryptography", "fallback"])
async def test_the_default_prober_trusts_ssl_cert_file(
    fresh_system_context: pytest.MonkeyPatch,
    ca: Issued,
    cert: Issued,
    bindings: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SSL_CERT_FILE names the trust store for either engine; without `cryptography`'s
    bindings a default Prober makes its handshakes with Python's `ssl`, and sees the same.
    Which library makes them is said once, at info, at the first HTTPS probe."""
    caplog.set_level("INFO")
    fresh_system_context.setenv("SSL_CERT_FILE", str(ca.cert_path))
    fresh_system_context.delenv("SSL_CERT_DIR", raising=False)
    if not bindings:
        fresh_system_context.setattr(tls, "_bindings", lambda: None)
    engine = tls.ClientContext if bindings else ssl.SSLContext
    async with aiohttp_server(page(), cert.server_context()) as base, Prober() as prober:
        for url, expected in [(f"{base}/", OK), (f"{base.replace(HOST, 'localhost')}/", OK)]:
            observation = await prober.probe(Probe(url=url), timedelta(seconds=5))
            assert (observation.serving, observation.reason, observation.status_code) == expected
            assert observation.tls_expiry == cert.cert.not_valid_after_utc
        assert isinstance(prober._context(), engine)
    said = [m for r in caplog.records if "make their handshakes with" in (m := r.getMessage())]
    library = "(cryptography's)" if bindings else f"Python's ssl ({ssl.OPENSSL_VERSION})"
    assert len(said) == 1 and library in said[0], said


def test_a_missing_ca_file_is_an_ssl_error_that_names_no_path(tmp_path: Path) -> None:
    """Python's `ssl` raises FileNotFoundError here; this engine an ssl.SSLError, without
    the path (a plan's file names stay out of logs)."""
    missing = tmp_path / "secret-name.pem"
    with pytest.raises(ssl.SSLError) as raised:
        tls.ClientContext(cafile=missing)
    assert "secret-name" not in str(raised.value)
    assert "trust store" in str(raised.value)
    assert Binding.lib.ERR_peek_error() == 0
    with pytest.raises(FileNotFoundError):
        ssl.create_default_context(cafile=str(missing))


def live_transports() -> int:
    gc.collect()
    return sum(isinstance(o, tls.TlsTransport) for o in gc.get_objects())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_no_connection_or_tls_state_outlives_its_probe(tmp_path: Path, ca: Issued) -> None:
    """200 probes, half refused by the host name check: nothing of theirs stays behind."""
    good = make_server_cert(tmp_path, issuer=ca)
    bad = make_server_cert(
        tmp_path, issuer=ca, dns_names=("portal.example",), ip_addresses=(), stem="bad"
    )
    async with (
        aiohttp_server(page(), good.server_context()) as trusted,
        aiohttp_server(page(), bad.server_context()) as untrusted,
        Prober(ssl_context=ca.tls_context()) as prober,
    ):
        before = open_fds()
        for number in range(200):
            url, expected = (trusted, OK) if number % 2 else (f"{untrusted}/", NOT_TRUSTED)
            observation = await prober.probe(Probe(url=url), timedelta(seconds=5))
            assert (observation.serving, observation.reason, observation.status_code) == expected
            assert Binding.lib.ERR_peek_error() == 0  # OpenSSL's error queue left empty
        for _ in range(100):  # the last connection's close runs on the loop's next turns
            if live_transports() == 0:
                break
            await asyncio.sleep(0)
        assert live_transports() == 0
        assert open_fds() <= before + 5

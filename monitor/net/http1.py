"""A lean HTTP/1.1 client for probes: one request on a fresh connection, nothing more.

Why not aiohttp's client: a probe needs none of its pooling, cookie jars, tracing or streaming
machinery, and on a fresh connection per GET that machinery is most of the CPU (DESIGN.md,
"What a probe costs, and the floor"). Here the request is written by hand, the answer parsed by
`httptools` (llhttp, the parser Node.js uses), on the event loop's own transports (uvloop's
under `run`). What a probe needs and aiohttp gave is kept: DNS and connect timed apart, TLS
with the probe's context (`monitor.net.tls`, or Python's `ssl`) and the certificate's end date,
redirects (at most `MAX_REDIRECTS`, relative `Location`, 301/302/303 become GET, credentials
dropped on leaving the origin), gzip and deflate decoded, chunked bodies, and a body cap counted
after decoding: past it the connection is closed and the rest never read.

What a browser or curl accepts is accepted (DESIGN.md, "Choices already measured"): a folded
header line (RFC 9112 section 5.2) and lines ended by a bare LF; content codings stacked in one
`Content-Encoding` (each decoded in turn; one it cannot decode leaves the body unread and named
in `Response.undecoded`); only the first answer on a connection is read; the header cap holds
for the head as a whole, however TCP cut it into reads; and a name with several addresses is
connected to as RFC 8305 says (the next address tried while the last still waits).

The caller bounds the whole exchange with its own timeout (cancelling `fetch` closes the
connection). Errors are the standard ones (`OSError` and its kinds, `ssl.SSLError`,
`socket.gaierror`) or the few defined here; `monitor.kinds.http` turns each into a reason.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
import itertools
import re
import socket
import ssl
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from time import perf_counter

import httptools
from yarl import URL

from monitor.net import resolver, tls

MAX_REDIRECTS = 10
#: The status line and headers of one answer may take at most this many bytes (aiohttp allowed
#: about 8 KiB a line); past it a server streaming endless headers is cut off, not buffered.
MAX_HEAD_BYTES = 64 * 1024
_REDIRECTS = frozenset((301, 302, 303, 307, 308))
#: A header name: an RFC 9110 token. A value: no control character but a tab.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: llhttp's leniencies, all named so that a release of `httptools` cannot change them. Two are
#: on because RFC 9112 and curl accept what they allow in an answer: `lenient_headers` reads a
#: folded line as part of the field above it (section 5.2; the fold's CRLF is dropped, its
#: spaces kept), `lenient_optional_cr_before_lf` a line ended by LF alone (section 2.2). The
#: rest (chunk framing, a length beside `chunked`, versions) stay strict. What they would let a
#: proxy be fooled by does not apply here: one request per connection, nothing reused.
LENIENCIES = dict.fromkeys(
    (
        "lenient_headers",
        "lenient_chunked_length",
        "lenient_keep_alive",
        "lenient_transfer_encoding",
        "lenient_version",
        "lenient_data_after_close",
        "lenient_optional_lf_after_cr",
        "lenient_optional_cr_before_lf",
        "lenient_optional_crlf_after_chunk",
        "lenient_spaces_after_chunk_size",
    ),
    False,
) | {"lenient_headers": True, "lenient_optional_cr_before_lf": True}
#: The content codings decoded here; `identity` is no coding at all.
_ZLIB_CODINGS = frozenset(("gzip", "x-gzip", "deflate"))
#: The most an outer coding of a stack hands on at a time: a bomb in a bomb stays bounded.
_PIECE = 64 * 1024


class TooManyRedirects(Exception):
    """More than `MAX_REDIRECTS` redirects."""


class DNSLookupError(Exception):
    """The host name could not be resolved (or not even encoded for a lookup)."""


class Disconnected(ConnectionResetError):
    """The server closed the connection before its answer was complete."""


class BadRedirect(Exception):
    """A redirect to something that is not an http(s) URL."""


class BadEncoding(Exception):
    """A gzip or deflate body that does not decode."""


class HeadersTooLarge(Exception):
    """An answer whose status line and headers run past `MAX_HEAD_BYTES`."""


class InvalidAnswer(Exception):
    """An answer the parser refused; the message is llhttp's own (`Duplicate Content-Length`)."""


class _SecondAnswer(Exception):
    """Raised inside the parser to stop it where a second answer begins."""


@dataclass(slots=True)
class Timings:
    """What the probe wants timed: the last connection's DNS and connect (TCP and TLS) seconds,
    the end date of its verified certificate, and when the last answer's headers came."""

    dns: float | None = None
    connect: float | None = None
    expiry: datetime | None = None
    headers_at: float | None = None


@dataclass(slots=True)
class Response:
    """The last answer of a fetch: its status, headers (lower-case names) and capped body."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    timings: Timings = field(default_factory=Timings)
    #: A content coding of the answer this client cannot decode (`br`); the body is then empty,
    #: so that nothing is ever matched against bytes still encoded.
    undecoded: str | None = None

    @property
    def charset(self) -> str | None:
        """The `charset` parameter of Content-Type, as the server wrote it; None without one."""
        return _charset(self.headers.get("content-type", ""))


@functools.lru_cache(maxsize=256)
def _charset(content_type: str) -> str | None:
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"') or None
    return None


@functools.lru_cache(maxsize=4096)
def _is_ip(host: str) -> bool:
    """IP literals are connected to as they are, never looked up (as aiohttp did)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _check_labels(host: str) -> None:
    """An empty or overlong label cannot be looked up (yarl has IDNA-encoded the host)."""
    if not host.isascii() or any(not 0 < len(part) < 64 for part in host.rstrip(".").split(".")):
        raise DNSLookupError("host name cannot be encoded")


@functools.lru_cache(maxsize=1024)
def _header_lines(headers: tuple[tuple[str, str], ...]) -> bytes:
    """The request's header lines from (name, value) pairs; ValueError for a name that is not a
    token or a value holding CR, LF or another control character (it would split the header)."""
    lines = []
    for name, value in headers:
        if not _TOKEN.match(name):
            raise ValueError("header name is not a token")
        if _CONTROL.search(value):
            raise ValueError("header value holds a control character")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("utf-8")


class _Exchange(asyncio.Protocol):
    """One request and its answer on one connection; `done` resolves with the answer or the
    error. The body is decoded as it arrives and kept up to `cap` bytes."""

    def __init__(self, cap: int, head: bool) -> None:
        self.cap = cap
        self.head = head
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.parser.set_dangerous_leniencies(**LENIENCIES)
        self.headers: dict[str, str] = {}
        self.status = 0
        self.chunks: list[bytes] = []
        self.size = 0
        self.headers_at: float | None = None
        #: The answer's content codings in the order they are undone (the last listed first),
        #: and a decoder for each once its first bytes have come.
        self.codings: tuple[str, ...] = ()
        self.decoders: list[zlib._Decompress | None] = []  # type: ignore[name-defined]
        self.undecoded: str | None = None
        self.delimited = False  # the body's end is known (Content-Length or chunked)
        self.head_bytes = 0

    # transport events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        if self.headers_at is None:
            # Still in the head, which may take MAX_HEAD_BYTES of the answer in all: a read
            # reaching past them is fed only up to there, so the verdict is the same however
            # the head was cut into reads (one read of 120 KB or fifteen of 8 KiB).
            room = MAX_HEAD_BYTES - self.head_bytes
            if len(data) > room:
                view = memoryview(data)
                self.head_bytes = MAX_HEAD_BYTES
                self._feed(view[:room])
                if self.headers_at is None:
                    self._fail(HeadersTooLarge(f"more than {MAX_HEAD_BYTES} bytes of headers"))
                elif not self.done.done():
                    self._feed(view[room:])
                return
            self.head_bytes += len(data)
        self._feed(data)

    def _feed(self, data: bytes | memoryview) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._finish()
        except httptools.HttpParserCallbackError as exc:  # a second answer, or a fault of ours
            self._fail(exc)
        except httptools.HttpParserError as exc:  # a malformed answer, in llhttp's own words
            self._fail(InvalidAnswer(str(exc) or type(exc).__name__))
        except Exception as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        self._ended(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended(exc)

    def _ended(self, exc: Exception | None) -> None:
        if self.done.done():
            return
        if exc is not None:
            self._fail(exc)
        elif self.headers_at is not None and not self.delimited and not self.head:
            self._finish()  # a body that runs until the server closes
        else:
            self._fail(Disconnected("server closed the connection before the answer ended"))

    # parser events
    def on_message_begin(self) -> None:
        """Only the first answer counts: anything a server sends after it on the connection
        (a second answer that would overwrite the status) stops the parser unread."""
        if self.headers_at is not None:
            raise _SecondAnswer()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200:  # an interim answer: the real one follows
            self.headers = {}
            return
        self.headers_at = perf_counter()
        headers = self.headers
        self.delimited = "content-length" in headers or "chunked" in headers.get(
            "transfer-encoding", ""
        )
        coding = headers.get("content-encoding")
        if coding:
            self._codings(coding)
        if self.head or self.status in (204, 304):
            self._finish()

    def _codings(self, value: str) -> None:
        """Read `Content-Encoding`: every listed coding is undone, the last listed first
        (RFC 9110 section 8.4); `identity` is none. A coding not decoded here leaves the body
        unkept and is named in `undecoded`."""
        codings = []
        for name in reversed(value.lower().split(",")):
            name = name.strip()
            if name in _ZLIB_CODINGS:
                codings.append(name)
            elif name and name != "identity":
                self.undecoded = name
                return
        self.codings = tuple(codings)
        self.decoders = [None] * len(codings)

    def on_body(self, body: bytes) -> None:
        if self.done.done():
            return
        if self.undecoded is not None:  # unreadable: counted against the cap, never kept
            self.size += len(body)
            if self.size >= self.cap:
                self._finish()
            return
        if self.codings:
            try:
                self._decode(0, body)
            except BadEncoding as exc:
                self._fail(exc)
            return
        self._keep(body)

    def _keep(self, body: bytes) -> bool:
        """Keep decoded bytes up to the cap; False once it is reached (the answer is done)."""
        room = self.cap - self.size
        if len(body) >= room:
            self.chunks.append(body[:room])
            self.size = self.cap
            self._finish()  # the cap: the rest is never read
            return False
        self.chunks.append(body)
        self.size += len(body)
        return True

    def on_message_complete(self) -> None:
        if self.headers_at is not None:
            self._finish()

    def _decode(self, layer: int, data: bytes) -> bool:
        """Undo coding `layer` and those after it on `data`, keeping the result; False once
        the cap is reached. No layer gives more at a time than the next needs: the innermost
        never more than the cap needs (a small bomb cannot grow past it), an outer one
        `_PIECE` bytes, the rest of its input held until the next layer has taken those."""
        decoder = self.decoders[layer]
        if decoder is None:
            decoder = self.decoders[layer] = _decoder(self.codings[layer], data)
        last = layer == len(self.codings) - 1
        while data:
            limit = self.cap - self.size + 1 if last else _PIECE
            try:
                piece = decoder.decompress(data, limit)
            except zlib.error as exc:
                raise BadEncoding(str(exc)) from None
            data = decoder.unconsumed_tail
            if piece and not (self._keep(piece) if last else self._decode(layer + 1, piece)):
                return False
        return True

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


def _decoder(coding: str, first: bytes) -> zlib._Decompress:  # type: ignore[name-defined]
    """A decoder for one coding; `deflate` is zlib-wrapped as RFC 9110 says, or raw deflate as
    some servers send it, told apart by the first two bytes."""
    if coding == "deflate":
        header = len(first) >= 2 and (first[0] << 8 | first[1])
        wrapped = bool(header) and first[0] & 0x0F == 8 and header % 31 == 0
        return zlib.decompressobj(15 if wrapped else -15)
    return zlib.decompressobj(16 + 15)


#: RFC 8305's "Connection Attempt Delay": with several addresses, the next is tried this long
#: after the last attempt began if that one has neither connected nor failed (it fails sooner,
#: the next starts at once). 250 ms is the RFC's recommendation; curl waits 200, Go 300.
ATTEMPT_DELAY = 0.25


async def _attempt(
    loop: asyncio.AbstractEventLoop,
    address: str,
    port: int,
    host: str,
    context: ssl.SSLContext | tls.ClientContext | None,
    exchange: _Exchange,
) -> asyncio.Transport:
    """One connection to one address, with TLS when the URL is https."""
    if isinstance(context, tls.ClientContext):
        return await tls.connect(loop, exchange, address, port, host, context)
    transport, _ = await loop.create_connection(
        lambda: exchange,
        address,
        port,
        ssl=context,
        # an IP literal is checked against the certificate's IP addresses
        server_hostname=host if context is not None else None,
    )
    return transport


def _interleave(addresses: list[str]) -> list[str]:
    """The addresses in the order RFC 8305 section 4 tries them: the resolver's order within
    each family, the families alternating, starting with the family of the first."""
    first_v6 = ":" in addresses[0]
    same = [a for a in addresses if (":" in a) == first_v6]
    other = [a for a in addresses if (":" in a) != first_v6]
    ordered = []
    for pair in itertools.zip_longest(same, other):
        ordered += [address for address in pair if address is not None]
    return ordered


async def _race(
    loop: asyncio.AbstractEventLoop,
    addresses: list[str],
    port: int,
    host: str,
    context: ssl.SSLContext | tls.ClientContext | None,
    exchange: Callable[[], _Exchange],
) -> tuple[asyncio.Transport, _Exchange]:
    """Happy Eyeballs (RFC 8305): connect to one of several addresses of a name. An address
    that never answers (a blackholed one) costs `ATTEMPT_DELAY`, not the probe's whole
    timeout, as curl and Go do it. Attempts start `ATTEMPT_DELAY` apart (at once after a
    failure), each with an exchange of its own; the first to connect wins and the others are
    cancelled or closed. A TLS error ends the race: another address of the same server would
    answer the same. Without a winner, the last attempt's error."""
    waiting = _interleave(addresses)
    attempts: dict[asyncio.Task, _Exchange] = {}
    error: BaseException | None = None
    try:
        while waiting or attempts:
            if waiting:
                address = waiting.pop(0)
                mine = exchange()
                attempt = _attempt(loop, address, port, host, context, mine)
                attempts[loop.create_task(attempt)] = mine
            done, _ = await asyncio.wait(
                attempts,
                timeout=ATTEMPT_DELAY if waiting else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in done:
                won = attempts.pop(task)
                failure = task.exception()
                if failure is None:
                    return task.result(), won
                if isinstance(failure, ssl.SSLError) or not isinstance(failure, OSError):
                    raise failure
                error = failure
        assert error is not None
        raise error
    finally:
        _drop(attempts)


def _drop(attempts: dict[asyncio.Task, _Exchange]) -> None:
    """End the attempts that did not win: cancelled while under way, closed if connected (in
    the same turn as the winner). Their exchanges are cancelled so that a connection closed
    under them leaves no error that nobody retrieves."""
    for task, exchange in attempts.items():
        exchange.done.cancel()
        if not task.done():
            task.cancel()
        elif not task.cancelled() and task.exception() is None:
            task.result().abort()


async def _connect(
    loop: asyncio.AbstractEventLoop,
    url: URL,
    context: ssl.SSLContext | tls.ClientContext | None,
    exchange: Callable[[], _Exchange],
    timings: Timings,
) -> tuple[asyncio.Transport, _Exchange]:
    """A fresh connection to the URL's host, timed, and the exchange that reads on it. A name
    with one address is connected to directly; one with several as RFC 8305 says (`_race`)."""
    host = url.raw_host or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    timings.dns = None
    if _is_ip(host):
        addresses = [host]
    else:
        _check_labels(host)
        started = perf_counter()
        try:
            infos = await resolver.getaddrinfo(host, port)
        except (socket.gaierror, UnicodeError) as exc:
            raise DNSLookupError(type(exc).__name__) from None
        timings.dns = perf_counter() - started
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        if not addresses:
            raise DNSLookupError("no address")
    started = perf_counter()
    timings.expiry = None
    if len(addresses) == 1:
        made = exchange()
        transport = await _attempt(loop, addresses[0], port, host, context, made)
    else:
        transport, made = await _race(loop, addresses, port, host, context, exchange)
    timings.connect = perf_counter() - started
    if isinstance(transport, tls.TlsTransport):
        timings.expiry = transport.expiry
    elif context is not None:
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            timings.expiry = _certificate_expiry(ssl_object.getpeercert())
    return transport, made


#: Peer certificates as `getpeercert()` dicts, by their DER bytes: decoding one into a dict costs
#: more than the rest of reading the answer, and a host shows the same certificate for months.
_CERTIFICATES: dict[bytes, dict] = {}
_CERTIFICATES_KEPT = 4096


class _PeerCertificateOnce(ssl.SSLObject):
    """The probes' TLS object (`SSLContext.sslobject_class`): its `getpeercert()` dict is
    decoded once per certificate. uvloop's SSL protocol asks for that dict after every
    handshake, as the probe does; decoding it was 2.4 % of `run`'s CPU at 200 HTTPS probes a
    second, for a certificate of ten names (bench/RESULTS.md section 4)."""

    def getpeercert(self, binary_form: bool = False) -> dict | bytes | None:  # type: ignore[override]
        der = super().getpeercert(binary_form=True)
        if binary_form or not der:
            return der if binary_form else super().getpeercert()
        certificate = _CERTIFICATES.get(der)
        if certificate is None:
            certificate = super().getpeercert()
            if not certificate:  # not verified (a context that does not check): not kept
                return certificate
            if len(_CERTIFICATES) >= _CERTIFICATES_KEPT:
                _CERTIFICATES.clear()
            _CERTIFICATES[der] = certificate
        return certificate


def _certificate_expiry(cert: dict | None) -> datetime | None:
    """The end date of a `getpeercert()` dict (empty when the certificate was not verified)."""
    not_after = cert.get("notAfter") if cert else None
    if not not_after:
        return None
    return _expiry_of(not_after)


@functools.lru_cache(maxsize=1024)
def _expiry_of(not_after: str) -> datetime:
    """`notAfter` read once per certificate, not once per probe (`strptime` is slow)."""
    return datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), UTC)


def _request_bytes(
    method: str, url: URL, headers: dict[str, str], body: bytes | None, user_agent: str
) -> bytes:
    """The request as sent: our defaults first, the plan's headers replacing them by name."""
    merged: dict[str, tuple[str, str]] = {
        "host": ("Host", url.host_port_subcomponent or ""),
        "user-agent": ("User-Agent", user_agent),
        "accept": ("Accept", "*/*"),
        "accept-encoding": ("Accept-Encoding", "gzip, deflate"),
    }
    if url.user is not None:
        token = base64.b64encode(f"{url.user}:{url.password or ''}".encode()).decode("ascii")
        merged["authorization"] = ("Authorization", f"Basic {token}")
    for name, value in headers.items():
        merged[name.lower()] = (name, value)
    merged["connection"] = ("Connection", "close")
    if body is not None:
        merged["content-length"] = ("Content-Length", str(len(body)))
    head = f"{method} {url.raw_path_qs or '/'} HTTP/1.1\r\n".encode()
    return head + _header_lines(tuple(merged.values())) + b"\r\n" + (body or b"")


async def fetch(
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    body: bytes | None,
    context: Callable[[], ssl.SSLContext | tls.ClientContext],
    cap: int,
    follow_redirects: bool,
    user_agent: str,
    timings: Timings,
) -> Response:
    """One request (and its redirects), each on a fresh connection; the last answer, its body
    capped at `cap` bytes after decoding. `context()` gives the TLS context, asked for only when
    a URL is https (building one loads the trust store). `timings` is filled in as the phases
    pass, so the caller still has them when its timeout cancels the fetch."""
    loop = asyncio.get_running_loop()
    target = URL(url)
    redirects = 0
    while True:
        if target.scheme not in ("http", "https"):
            raise BadRedirect("not an http(s) URL")
        secure = context() if target.scheme == "https" else None
        if isinstance(secure, tls.ClientContext) and not secure.checks(target.raw_host or ""):
            secure = secure.python_context
        if isinstance(secure, ssl.SSLContext) and secure.sslobject_class is ssl.SSLObject:
            secure.sslobject_class = _PeerCertificateOnce  # documented as settable
        answer = functools.partial(_Exchange, cap, method == "HEAD")
        transport, exchange = await _connect(loop, target, secure, answer, timings)
        try:
            transport.write(_request_bytes(method, target, headers, body, user_agent))
            await exchange.done
        finally:
            transport.abort()  # a fresh connection per probe; the unread rest is dropped
        timings.headers_at = exchange.headers_at
        status = exchange.status
        location = exchange.headers.get("location")
        if not (follow_redirects and status in _REDIRECTS and location):
            kept = b"".join(exchange.chunks)
            return Response(status, exchange.headers, kept, timings, exchange.undecoded)
        redirects += 1
        if redirects > MAX_REDIRECTS:
            raise TooManyRedirects()
        following = target.join(URL(location))
        if status in (301, 302, 303) and method != "HEAD" and (status == 303 or method == "POST"):
            method, body = "GET", None
            headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        if following.origin() != target.origin():  # credentials stay with their own origin
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            following = following.with_user(None)
        target = following

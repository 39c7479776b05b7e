"""One HTTP probe of one service: is it serving, and if not, why.

A probe opens a fresh connection by default (so DNS, connect and TLS failures are seen every
time, as blackbox_exporter does), reads at most `body_cap` bytes of the body, and is bounded as a
whole by its timeout, including a server that trickles a byte a second. Failures are returned as
an Observation with a reason, never raised to the caller: one bad endpoint never stalls the rest.

Reasons start with one of these fixed phrases; the page and the robots translate them:

| phrase | serving | meaning |
| --- | --- | --- |
| `HTTP <code>` | by status | the answer's status code, e.g. `HTTP 200`, `HTTP 503` |
| `response slower than <d>` | yes | served, but slower than `max_response_time` (degraded) |
| `body matches maintenance notice` | no | reachable, but `body_not_matches` matched |
| `body does not match` | no | reachable, but `body_matches` did not match |
| `timeout after <d>` | no | the whole probe took longer than its timeout |
| `connection refused` | no | nothing listens on the port |
| `connection reset` | no | the server dropped the connection mid-answer |
| `DNS lookup failed` | no | the host name does not resolve |
| `TLS certificate expired` | no | the server's certificate is past its end date |
| `TLS certificate not trusted` | no | self-signed, unknown issuer or wrong host name |
| `TLS handshake failed` | no | TLS failed for another reason |
| `too many redirects` | no | more than 10 redirects |
| `connection failed` | no | any other network error |
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import aiohttp

from monitor.config import Probe, format_duration

DEFAULT_BODY_CAP = 256 * 1024
MAX_REDIRECTS = 10
USER_AGENT = "channel-monitor/0.1 (+status probe)"

REASON_PHRASES = (
    "HTTP",
    "response slower than",
    "body matches maintenance notice",
    "body does not match",
    "timeout after",
    "connection refused",
    "connection reset",
    "DNS lookup failed",
    "TLS certificate expired",
    "TLS certificate not trusted",
    "TLS handshake failed",
    "too many redirects",
    "connection failed",
)

_X509_EXPIRED = 10

#: The peer certificates (`getpeercert()` dicts) of the connections the current probe opened,
#: newest last. aiohttp drops `response.connection` as soon as a small body has arrived, before
#: the caller sees the response (aio-libs/aiohttp#2205), so the connector records them instead.
#: Set for the span of one probe; concurrent probes run in separate tasks and never mix.
_PEER_CERTIFICATES: ContextVar[list[dict] | None] = ContextVar("peer_certificates", default=None)


@dataclass(frozen=True, slots=True)
class Observation:
    """One probe's outcome. Holds no URL, header or body: it may be stored and published."""

    at: datetime
    serving: bool
    reason: str
    status_code: int | None = None
    duration_seconds: float = 0.0
    dns_seconds: float | None = None
    connect_seconds: float | None = None
    first_byte_seconds: float | None = None
    tls_expiry: datetime | None = None
    degraded: bool = False


def _trace_config() -> aiohttp.TraceConfig:
    """Record the phase instants of a request on its trace context (loop time)."""
    trace = aiohttp.TraceConfig()

    def mark(name: str):
        async def handler(_session, context, _params) -> None:
            setattr(context.trace_request_ctx, name, time.perf_counter())

        return handler

    trace.on_dns_resolvehost_start.append(mark("dns_start"))
    trace.on_dns_resolvehost_end.append(mark("dns_end"))
    trace.on_connection_create_start.append(mark("connect_start"))
    trace.on_connection_create_end.append(mark("connect_end"))
    trace.on_request_end.append(mark("headers"))
    return trace


class _Connector(aiohttp.TCPConnector):
    """A TCPConnector that records the peer certificate of each connection a probe gets."""

    async def connect(self, *args, **kwargs):  # type: ignore[override]
        connection = await super().connect(*args, **kwargs)
        certificates = _PEER_CERTIFICATES.get()
        transport = connection.transport
        if certificates is not None and transport is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None:
                certificates.append(ssl_object.getpeercert())
        return connection


class Prober:
    """Probes services over one shared aiohttp session (fresh connection per probe).

    One session for all probes costs far less CPU than a session per probe (DESIGN.md), while
    `force_close` still opens a new connection every time.
    """

    def __init__(
        self,
        body_cap: int = DEFAULT_BODY_CAP,
        reuse_connections: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`ssl_context` replaces the default trust store (e.g. one that trusts a private CA)."""
        self.body_cap = body_cap
        self._reuse = reuse_connections
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Prober:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = _Connector(
                force_close=not self._reuse, limit=0, use_dns_cache=False, ssl=self._ssl
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                trace_configs=[_trace_config()],
                headers={"User-Agent": USER_AGENT},
                timeout=aiohttp.ClientTimeout(total=None),
                auto_decompress=True,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def probe(
        self, spec: Probe, timeout: timedelta, at: datetime | None = None
    ) -> Observation:
        """Probe `spec` once; never raises for anything the network or the server does."""
        at = at or datetime.now(UTC)
        marks = SimpleNamespace()
        started = time.perf_counter()
        seconds = timeout.total_seconds()
        try:
            async with asyncio.timeout(seconds):
                outcome = await self._request(spec, marks)
        except TimeoutError:
            outcome = {"serving": False, "reason": f"timeout after {format_duration(timeout)}"}
        except aiohttp.ClientConnectorCertificateError as exc:
            code = getattr(exc.certificate_error, "verify_code", None)
            if code == _X509_EXPIRED:
                outcome = {"serving": False, "reason": "TLS certificate expired"}
            else:
                outcome = {"serving": False, "reason": "TLS certificate not trusted"}
        except aiohttp.ClientConnectorSSLError:
            outcome = {"serving": False, "reason": "TLS handshake failed"}
        except aiohttp.ClientConnectorDNSError:
            outcome = {"serving": False, "reason": "DNS lookup failed"}
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, ConnectionRefusedError):
                reason = "connection refused"
            elif isinstance(exc.os_error, ssl.SSLError):
                reason = "TLS handshake failed"
            else:
                reason = "connection failed"
            outcome = {"serving": False, "reason": reason}
        except aiohttp.TooManyRedirects:
            outcome = {"serving": False, "reason": "too many redirects"}
        except (
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientPayloadError,
            aiohttp.ClientOSError,
            ConnectionResetError,
        ):
            outcome = {"serving": False, "reason": "connection reset"}
        except aiohttp.ClientError as exc:
            outcome = {"serving": False, "reason": f"connection failed ({type(exc).__name__})"}
        duration = time.perf_counter() - started
        return Observation(
            at=at,
            duration_seconds=duration,
            dns_seconds=_span(marks, "dns_start", "dns_end"),
            connect_seconds=_span(marks, "connect_start", "connect_end"),
            first_byte_seconds=_span_from(marks, started, "headers"),
            **outcome,
        )

    async def _request(self, spec: Probe, marks: SimpleNamespace) -> dict:
        started = time.perf_counter()
        certificates: list[dict] = []
        token = _PEER_CERTIFICATES.set(certificates)
        try:
            async with self._client().request(
                spec.method,
                spec.url,
                headers=spec.headers or None,
                allow_redirects=spec.follow_redirects,
                # aiohttp raises on reaching max_redirects; the documented limit follows 10.
                max_redirects=MAX_REDIRECTS + 1,
                trace_request_ctx=marks,
            ) as response:
                status = response.status
                # Always read (capped): a server that resets or stalls mid-body is not serving.
                body = await self._read_capped(response)
        finally:
            _PEER_CERTIFICATES.reset(token)
        elapsed = time.perf_counter() - started
        expiry = _certificate_expiry(certificates[-1] if certificates else None)
        result: dict = {"status_code": status, "tls_expiry": expiry}
        expected = spec.expect_status
        ok_status = status in expected if expected else 200 <= status < 300
        if not ok_status:
            return {**result, "serving": False, "reason": f"HTTP {status}"}
        if spec.body_matches is not None or spec.body_not_matches is not None:
            text = body.decode(response.charset or "utf-8", errors="replace")
            if spec.body_not_matches and re.search(spec.body_not_matches, text):
                return {**result, "serving": False, "reason": "body matches maintenance notice"}
            if spec.body_matches and not re.search(spec.body_matches, text):
                return {**result, "serving": False, "reason": "body does not match"}
        limit = spec.max_response_time
        if limit is not None and elapsed > limit.total_seconds():
            reason = f"response slower than {format_duration(limit)}"
            return {**result, "serving": True, "reason": reason, "degraded": True}
        return {**result, "serving": True, "reason": f"HTTP {status}"}

    async def _read_capped(self, response: aiohttp.ClientResponse) -> bytes:
        """At most `body_cap` bytes; the rest is never read (the connection is closed)."""
        chunks: list[bytes] = []
        remaining = self.body_cap
        while remaining > 0:
            chunk = await response.content.read(min(remaining, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)


def _certificate_expiry(cert: dict | None) -> datetime | None:
    """The end date of a `getpeercert()` dict (empty when the certificate was not verified)."""
    not_after = cert.get("notAfter") if cert else None
    if not not_after:
        return None
    return datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), UTC)


def _span(marks: SimpleNamespace, start: str, end: str) -> float | None:
    if hasattr(marks, start) and hasattr(marks, end):
        return getattr(marks, end) - getattr(marks, start)
    return None


def _span_from(marks: SimpleNamespace, started: float, end: str) -> float | None:
    return getattr(marks, end) - started if hasattr(marks, end) else None

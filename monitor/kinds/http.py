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
| `TLS certificate not trusted` | no | self-signed, unknown issuer, host not in its SANs |
| `TLS handshake failed` | no | TLS failed for another reason (and the library's words) |
| `too many redirects` | no | more than 10 redirects |
| `connection failed` | no | any other network error |
| `invalid HTTP answer (<words>)` | no | the parser refused the answer, in its own words |
| `content encoding not supported: <c>` | None | a body check, the body in a coding not read |
| `body is not JSON` | no | `json` conditions are set, but the (capped) body is not JSON |
| `json condition failed: <expr>` | no | a `json` condition, as written, is not truthy |
| `probe failed (<type>)` | no | a fault of the prober itself (logged once per type, at warning) |

Other kinds add their own phrases (monitor/kinds/prometheus.py). `serving` is None when an
observation cannot tell either way (a query without data, a service not configured): the judge
then says `unknown`, and such an observation neither opens nor resolves an incident.

A body condition is an RE2 pattern (`monitor.fields.body_pattern`): matching takes time linear
in the body, never the minutes a backtracking `(a+)+$` takes. A body and pattern small enough to
match in about a millisecond even in RE2's slowest case are matched on the event loop; larger
ones in a worker thread (RE2 releases the GIL) while the probe's timeout keeps running, so the
timeout bounds the whole probe, matching included, and a hostile body never stalls the loop.
A match that outlives its probe ends by itself in its thread: RE2 cannot be interrupted, but its
cost is bounded by the body cap times the pattern's size, which validation caps
(`monitor.fields.MAX_PATTERN_PROGRAM`); at most `MATCH_WORKERS` such matches run at once.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import ssl
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from time import perf_counter
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, Field, StrictBool, StrictInt, model_validator

from monitor.fields import (
    _ENV_REFERENCE as ENV_REFERENCE,
)
from monitor.fields import (
    PositiveDuration,
    ProbeEnv,
    Regex,
    _unset_names,
    body_pattern,
    format_duration,
    pattern_program_size,
)
from monitor.kinds.base import USER_AGENT, Kind, ProberOptions, UrlProbe
from monitor.observation import Observation
from monitor.reason_rows import Reason

if TYPE_CHECKING:
    from monitor.net import http1, tls

log = logging.getLogger(__name__)

DEFAULT_BODY_CAP = 256 * 1024

_X509_EXPIRED = 10

#: Body bytes x pattern instructions matched on the event loop; above it, in a worker thread.
#: RE2's slowest engine costs about 8 ns per byte and instruction here (bench/RESULTS.md), so
#: this keeps a match on the loop under about 2 ms; a maintenance page of a few kilobytes
#: against a notice of a few dozen instructions stays on the loop, where it costs microseconds.
INLINE_MATCH_BUDGET = 1 << 18
#: Worker threads for large matches (RE2 runs outside the GIL, so they use the spare core).
MATCH_WORKERS = 2


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> tuple[object, int]:
    """A body pattern compiled once, with its size in RE2 instructions (for the match budget)."""
    compiled = body_pattern(pattern)
    return compiled, max(pattern_program_size(compiled), 1)


def _found(compiled: object, data: bytes) -> bool:
    return compiled.search(data) is not None  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=1024)
def _expression(text: str):  # -> jmespath.parser.ParsedResult
    import jmespath  # only plans with JSON conditions pay for the import

    return jmespath.compile(text)


def json_failure(body: bytes, conditions: tuple[str, ...]) -> str | None:
    """The reason the answer fails its `json` conditions, None when every one holds.

    The expressions were compiled at validation; each holds when its result is truthy in
    JMESPath's sense (not null, false, or an empty string, list or object; 0 is truthy).
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, or nested deeper than Python
        return "body is not JSON"
    for condition in conditions:
        try:
            result = _expression(condition).search(document)
        except Exception:  # a runtime type error in a function call: the condition fails
            result = None
        if not _truthy(result):
            return f"json condition failed: {condition}"
    return None


def _truthy(value: object) -> bool:
    """JMESPath's truth: null, false and empty strings, lists and objects are false; 0 is true."""
    if value is None or value is False:
        return False
    return bool(value) if isinstance(value, str | list | dict) else True


@functools.lru_cache(maxsize=256)
def _content_type(body: str) -> str:
    """Content-Type of a request body the plan gave none for: JSON if it parses as JSON."""
    try:
        json.loads(body)
    except ValueError:
        return "text/plain; charset=utf-8"
    return "application/json"


def _check_jmespath(value: str) -> str:
    import jmespath  # only validation and JSON probes need it
    from jmespath.exceptions import JMESPathError

    try:
        jmespath.compile(value)
    except JMESPathError as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"expected a JMESPath expression ({detail})") from None
    return value


JmesPath = Annotated[str, AfterValidator(_check_jmespath)]


class HttpProbe(UrlProbe):
    """One HTTP request: status, body conditions and, for APIs, conditions on the JSON answer."""

    kind: Literal["http"] = "http"
    method: Literal["GET", "HEAD", "POST"] = "GET"
    body: Annotated[str, ProbeEnv] | None = None
    json_conditions: tuple[JmesPath, ...] = Field(default=(), alias="json")
    expect_status: tuple[Annotated[StrictInt, Field(ge=100, le=599)], ...] | None = None
    follow_redirects: StrictBool = True
    body_matches: Regex | None = None
    body_not_matches: Regex | None = None
    max_response_time: PositiveDuration | None = None

    @model_validator(mode="after")
    def _one_authorization(self) -> HttpProbe:
        """`user:pass@` in the URL and an Authorization header: aiohttp refuses the request."""
        from yarl import URL

        if ENV_REFERENCE.search(self.url):
            return self  # not configured yet; checked once the variable is set
        if URL(self.url).user is not None and any(
            name.lower() == "authorization" for name in self.headers
        ):
            raise ValueError(
                "expected credentials in one place: the URL holds user:password@ and the "
                "headers an Authorization header; keep one of them"
            )
        return self

    @model_validator(mode="after")
    def _body_needs_post(self) -> HttpProbe:
        if self.body is not None and self.method != "POST":
            raise ValueError('expected `body` only with method = "POST"')
        return self

    @property
    def unset(self) -> tuple[str, ...]:
        return _unset_names(self.url, self.headers, self.body)


#: Old name of the HTTP probe, kept for code written before the other kinds.
Probe = HttpProbe


class Prober:
    """Probes HTTP services with the lean client of `monitor.net.http1`, a fresh connection per
    probe (so DNS, connect and TLS failures are seen, as blackbox_exporter sees them).

    aiohttp's client cost three to four times the CPU per probe for the same GET (DESIGN.md,
    "What a probe costs, and the floor"); a probe needs none of its pooling or streaming.
    """

    kind = "http"

    def __init__(
        self,
        body_cap: int = DEFAULT_BODY_CAP,
        ssl_context: ssl.SSLContext | tls.ClientContext | None = None,
    ) -> None:
        """`ssl_context` replaces the default TLS context (e.g. one that trusts a private CA):
        a `tls.ClientContext`, or Python's own `ssl.SSLContext` to make the handshakes with
        Python's `ssl`. The default is `tls.system_context()` where `cryptography`'s OpenSSL
        can be used, Python's `ssl` with the same policy (`tls.python_context()`) where not."""
        self.body_cap = body_cap
        self._ssl = ssl_context
        self._matcher: ThreadPoolExecutor | None = None
        #: Types of unexpected exceptions already logged (each is logged once).
        self._faults: set[type] = set()

    async def __aenter__(self) -> Prober:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _context(self) -> ssl.SSLContext | tls.ClientContext:
        from monitor.net import tls  # (not at the top: `validate` and `plan` load no TLS code)

        if self._ssl is None:  # the system's trust store, built once (it costs milliseconds)
            try:
                self._ssl = tls.system_context()
            except Exception as exc:  # a build of OpenSSL that refuses our settings
                log.warning("cryptography's OpenSSL cannot make TLS contexts (%s)", exc)
            if self._ssl is None:
                library = ssl.OPENSSL_VERSION
                log.info("HTTPS probes make their handshakes with Python's ssl (%s)", library)
                self._ssl = tls.python_context()
        return self._ssl

    async def close(self) -> None:
        if self._matcher is not None:  # a match still running ends by itself (it is bounded)
            self._matcher.shutdown(wait=False, cancel_futures=True)
            self._matcher = None

    async def probe(
        self, spec: HttpProbe, timeout: timedelta, at: datetime | None = None
    ) -> Observation:
        """Probe `spec` once; never raises for anything the network or the server does."""
        at = at or datetime.now(UTC)
        from monitor.net import http1  # (here, with the prober: not with the plan's schema)

        timings = http1.Timings()
        status: int | None = None
        first_byte: float | None = None
        expiry: datetime | None = None
        degraded = False
        started = perf_counter()
        try:
            async with asyncio.timeout(timeout.total_seconds()):
                answer = await self._request(spec, started, timings)
            status, first_byte, serving, reason, degraded = answer
            expiry = timings.expiry
        except TimeoutError:
            serving, reason = False, f"timeout after {format_duration(timeout)}"
        except Exception as exc:
            serving, reason = False, self._reason(exc)
        return Observation(
            at,
            serving,
            reason,
            status,
            perf_counter() - started,
            timings.dns,
            timings.connect,
            first_byte,
            expiry,
            degraded,
        )

    def _reason(self, exc: Exception) -> str:
        """The reason phrase of a probe that got no usable answer."""
        import httptools

        from monitor.net import http1, tls

        if isinstance(exc, ssl.SSLCertVerificationError):
            expired = exc.verify_code == _X509_EXPIRED
            reason = "TLS certificate expired" if expired else "TLS certificate not trusted"
        elif isinstance(exc, ssl.SSLError):
            words = tls.failure_words(exc)
            reason = f"TLS handshake failed ({words})" if words else "TLS handshake failed"
        elif isinstance(exc, http1.InvalidAnswer):
            reason = f"invalid HTTP answer ({exc})"
        elif isinstance(exc, http1.DNSLookupError):
            reason = "DNS lookup failed"
        elif isinstance(exc, http1.TooManyRedirects):
            reason = "too many redirects"
        elif isinstance(exc, ConnectionRefusedError):
            reason = "connection refused"
        elif isinstance(exc, ConnectionResetError | BrokenPipeError | http1.BadEncoding):
            reason = "connection reset"
        elif isinstance(exc, OSError):
            reason = "connection failed"
        elif isinstance(exc, httptools.HttpParserError | http1.BadRedirect | http1.HeadersTooLarge):
            reason = f"connection failed ({type(exc).__name__})"
        else:  # a fault of ours or of a library: still an observation
            self._fault(exc)
            reason = f"probe failed ({type(exc).__name__})"
        return reason

    async def _fetch(self, spec: HttpProbe, timings: http1.Timings) -> http1.Response:
        """The last answer to the probe's request (redirects followed unless told otherwise)."""
        from monitor.net import http1

        headers = spec.headers
        body = None
        if spec.body is not None:
            body = spec.body.encode()
            if not any(name.lower() == "content-type" for name in headers):
                headers = {**headers, "Content-Type": _content_type(spec.body)}
        return await http1.fetch(
            spec.method,
            spec.url,
            headers=headers,
            body=body,
            context=self._context,
            cap=self.body_cap,
            follow_redirects=spec.follow_redirects,
            user_agent=USER_AGENT,
            timings=timings,
        )

    async def _request(
        self, spec: HttpProbe, started: float, timings: http1.Timings
    ) -> tuple[int, float, bool | None, str, bool]:
        """(status, first byte, serving, reason, degraded) of a request that got an answer;
        the first byte is the time from `started` until the (last) answer's headers."""
        requested = perf_counter()
        # Always read (capped): a server that resets or stalls mid-body is not serving.
        response = await self._fetch(spec, timings)
        elapsed = perf_counter() - requested
        first_byte = (timings.headers_at or perf_counter()) - started
        status, body = response.status, response.body
        expected = spec.expect_status
        if not (status in expected if expected else 200 <= status < 300):
            return status, first_byte, False, f"HTTP {status}", False
        if response.undecoded is not None and (
            spec.body_matches is not None
            or spec.body_not_matches is not None
            or spec.json_conditions
        ):  # the body is needed and cannot be read: neither serving nor not, as far as we know
            reason = f"content encoding not supported: {response.undecoded}"
            return status, first_byte, None, reason, False
        if spec.body_matches is not None or spec.body_not_matches is not None:
            data = _as_utf8(body, response.charset)
            if spec.body_not_matches and await self._matches(spec.body_not_matches, data):
                return status, first_byte, False, "body matches maintenance notice", False
            if spec.body_matches and not await self._matches(spec.body_matches, data):
                return status, first_byte, False, "body does not match", False
        if spec.json_conditions:
            failure = json_failure(body, spec.json_conditions)
            if failure is not None:
                return status, first_byte, False, failure, False
        limit = spec.max_response_time
        if limit is not None and elapsed > limit.total_seconds():
            reason = f"response slower than {format_duration(limit)}"
            return status, first_byte, True, reason, True
        return status, first_byte, True, f"HTTP {status}", False

    async def _matches(self, pattern: str, data: bytes) -> bool:
        """Whether `pattern` occurs in `data`: on the loop when that is cheap in any case, else
        in a worker thread, awaited under the probe's timeout (see the module's docstring)."""
        compiled, size = _compiled(pattern)
        if len(data) * size <= INLINE_MATCH_BUDGET:
            return _found(compiled, data)
        if self._matcher is None:
            self._matcher = ThreadPoolExecutor(MATCH_WORKERS, thread_name_prefix="body-match")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._matcher, _found, compiled, data)

    def _fault(self, exc: Exception) -> None:
        """Log an unexpected exception once per type, without its message (which may hold the
        URL); the traceback only at debug level."""
        if type(exc) not in self._faults:
            self._faults.add(type(exc))
            log.warning(
                "a probe failed unexpectedly (%s); it is recorded as not serving with reason "
                '"probe failed (%s)"; further failures of this type are not logged',
                type(exc).__name__,
                type(exc).__name__,
            )
        log.debug("probe failed", exc_info=exc)


def _as_utf8(body: bytes, charset: str | None) -> bytes:
    """The body as UTF-8, which RE2 matches: decoded from its declared charset, or from UTF-8
    when the charset is unknown to Python or not a text encoding (`x-no-such-codec`, `rot13`),
    bytes it cannot decode replaced. Bodies already in UTF-8 are only checked, not copied."""
    name = (charset or "utf-8").lower()
    if name in ("utf-8", "utf8"):
        try:
            body.decode("utf-8")
            return body
        except UnicodeDecodeError:
            pass
    try:
        text = body.decode(name, errors="replace")
    except (LookupError, ValueError):  # unknown codec, or one that is not bytes -> text
        text = body.decode("utf-8", errors="replace")
    return text.encode("utf-8", errors="replace")


#: The http kind's reasons (the network failures it shares with the browser kind are in
#: `monitor.reasons.SHARED`).
REASONS: tuple[Reason, ...] = (
    Reason(
        "invalid HTTP answer ({what})",
        "服务器的应答不合 HTTP 规范（{what}）",
        "the server's answer is not valid HTTP ({what})",
        "服务器的应答无法识别",
        "the server's answer could not be read",
    ),
    Reason(
        "content encoding not supported: {what}",
        "应答内容的压缩方式无法解读：{what}",
        "the answer's content encoding cannot be read: {what}",
        "应答内容无法读取，无法判断",
        "the answer's content could not be read, so the check cannot tell",
    ),
    Reason("HTTP {code}", "服务器返回 HTTP {code}", "server answered HTTP {code}"),
    Reason(
        "response slower than {duration}", "响应慢于 {duration}", "response slower than {duration}"
    ),
    Reason(
        "body matches maintenance notice",
        "页面显示维护公告",
        "the page shows a maintenance notice",
    ),
    Reason(
        "body does not match", "页面内容不是正常办理页面", "the page is not the usual service page"
    ),
    Reason("body is not JSON", "返回内容不是 JSON", "the answer is not JSON"),
    Reason(
        "json condition failed: {expr}",
        "返回的 JSON 不满足条件：{expr}",
        "the JSON answer fails the condition: {expr}",
        "返回内容不符合预期",
        "the answer is not as expected",
    ),
)


def _prober(options: ProberOptions) -> Prober:
    """The http kind's prober: one for every http service (it holds no connections). Its
    network code is loaded here, when `run` or `check` starts, rather than inside the first
    probe's timeout; importing the kind for its plan table loads none of it."""
    import httptools  # noqa: F401

    from monitor.net import http1, tls  # noqa: F401

    return Prober()


KIND = Kind("http", HttpProbe, reasons=REASONS, prober=_prober, has_status_code=True)

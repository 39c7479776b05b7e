"""A Prometheus query as an observation: `kind = "prometheus"`.

Some services are best seen from the inside, through counters their own systems already export:
a payment counter that still moves during the freeze means business is still being taken. And
several monitors in several locations agree through the same door: Prometheus scrapes them all,
and one query counts how many see the service serving (k of n).

One instant query (`/api/v1/query`) per probe, at the observation's instant, must return a
single value (a vector of one sample, or a scalar); `serving_if` compares it. Like the HTTP
prober, failures come back as an Observation with a reason, never as an exception.

| phrase | serving | meaning |
| --- | --- | --- |
| `query value <v> <op> <n>` | by `serving_if` | the value and how it compares, always true as |
| | | written: `query value 3 > 0` meets `serving_if = "> 0"`, `query value 0 <= 0` does not |
| `query returned no data` | `no_data` | an empty result (or NaN): `unknown` by default |
| `query failed (<why>)` | unknown | Prometheus could not be asked or its answer is not one value |

The probe's headers often carry a token meant for the Prometheus (or the proxy in front of it)
they were written for: a redirect is followed only within the URL's origin (scheme, host,
port); one to another origin is `query failed (redirect to another host)` and nothing is sent
there.

A query that fails says nothing about the service (the observer failed, not the channel), so
it is `unknown`, never `down`.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import typing
from datetime import UTC, datetime, timedelta
from time import perf_counter
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BeforeValidator, Field

from monitor.fields import ProbeEnv, _unset_names, format_duration
from monitor.kinds.base import USER_AGENT, Kind, ProberOptions, UrlProbe
from monitor.observation import Observation
from monitor.reason_rows import Reason

if TYPE_CHECKING:
    import aiohttp
    import yarl

_COMPARISON = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*$")


async def read_capped(response: aiohttp.ClientResponse, cap: int) -> bytes:
    """At most `cap` bytes of the body; the rest is never read (the connection is closed)."""
    content = response.content
    chunks: list[bytes] = []
    remaining = cap
    while remaining > 0 and not content.at_eof():
        chunk = await content.read(min(remaining, 65536))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class Comparison(typing.NamedTuple):
    """`serving_if = "> 0"`: an operator and the number the query's value is compared with."""

    op: str
    number: float

    def holds(self, value: float) -> bool:
        """Whether `value <op> number` (a NaN never holds, as in PromQL)."""
        return _OPERATORS[self.op](value, self.number)

    def negated(self) -> Comparison:
        """The comparison that holds exactly when this one does not (for numbers)."""
        return Comparison(_NEGATION[self.op], self.number)

    def __str__(self) -> str:
        return f"{self.op} {self.number:g}"


_NEGATION = {">": "<=", ">=": "<", "<": ">=", "<=": ">", "==": "!=", "!=": "=="}
_OPERATORS: dict[str, typing.Callable[[float, float], bool]] = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


def _parse_comparison(value: object) -> Comparison:
    if isinstance(value, Comparison):
        return value
    match = _COMPARISON.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(
            'expected a comparison such as "> 0" or ">= 2" '
            "(one of > >= < <= == != followed by a number)"
        )
    return Comparison(match.group(1), float(match.group(2)))


class PrometheusProbe(UrlProbe):
    """An instant PromQL query whose single value says whether the service is serving."""

    kind: Literal["prometheus"]
    query: Annotated[str, ProbeEnv, Field(min_length=1)]
    serving_if: Annotated[Comparison, BeforeValidator(_parse_comparison)]
    no_data: Literal["unknown", "down", "up"] = "unknown"

    @property
    def unset(self) -> tuple[str, ...]:
        return _unset_names(self.url, self.headers, self.query)


#: Redirects followed within the origin before the query is given up (curl's default is 50,
#: a browser's 20; a proxy needs one or two).
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _origin_of(url: yarl.URL) -> tuple[str, str, int | None]:
    """(scheme, host, port) as the web's same-origin rule compares them; an implicit port is
    the scheme's own, so `http://h/` and `http://h:80/` are one origin."""
    if not url.is_absolute() or url.scheme not in ("http", "https") or not url.host:
        raise ValueError("not an http(s) URL")
    return url.scheme, url.host.lower(), url.port


#: An instant query for one value is small; a bigger answer is not one value anyway.
ANSWER_CAP = 1024 * 1024
NO_DATA = "query returned no data"


class QueryFailed(Exception):
    """Prometheus could not be asked, or its answer is not a single value (`str` says why)."""


def format_value(value: float) -> str:
    """A sample value as people read it: `3`, `0.25`, `1.5e+09`, `NaN`, `+Inf`."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def single_value(answer: object) -> float | None:
    """The one value of a `/api/v1/query` answer; None for an empty vector.

    Raises QueryFailed for an error answer, a matrix, a string or more than one sample: a
    comparison on one of many series would depend on which came first."""
    if not isinstance(answer, dict) or answer.get("status") != "success":
        kind = answer.get("errorType") if isinstance(answer, dict) else None
        raise QueryFailed(str(kind) if isinstance(kind, str) and kind.isidentifier() else "error")
    data = answer.get("data")
    kind = data.get("resultType") if isinstance(data, dict) else None
    result = data.get("result") if isinstance(data, dict) else None
    if kind == "scalar" and isinstance(result, list) and len(result) == 2:
        return _number(result[1])
    if kind != "vector" or not isinstance(result, list):
        raise QueryFailed(f"{kind if kind in ('matrix', 'string') else 'unexpected'} result")
    if not result:
        return None
    if len(result) > 1:
        raise QueryFailed(f"{len(result)} series, expected one")
    sample = result[0].get("value") if isinstance(result[0], dict) else None
    if not isinstance(sample, list) or len(sample) != 2:
        raise QueryFailed("unexpected result")
    return _number(sample[1])


def _number(text: object) -> float:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise QueryFailed("unexpected result") from None


def judged(spec: PrometheusProbe, value: float | None) -> tuple[bool | None, str]:
    """(serving, reason) for the query's value; NaN counts as no data."""
    if value is None or math.isnan(value):
        return {"unknown": None, "down": False, "up": True}[spec.no_data], NO_DATA
    condition = spec.serving_if
    serving = condition.holds(value)
    relation = condition if serving else condition.negated()
    return serving, f"query value {format_value(value)} {relation}"


class QueryProber:
    """Asks Prometheus servers instant queries over one shared aiohttp session.

    Unlike the HTTP prober, connections are kept alive: the server asked is the observer's own
    infrastructure, not the channel, so its connection set-up is not what is being observed.
    """

    kind = "prometheus"

    def __init__(self, answer_cap: int = ANSWER_CAP) -> None:
        self.answer_cap = answer_cap
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> QueryProber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _client(self) -> aiohttp.ClientSession:
        import aiohttp  # (with the prober, not with the plan's schema: `validate` needs none)

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": USER_AGENT},
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def probe(
        self, spec: PrometheusProbe, timeout: timedelta, at: datetime | None = None
    ) -> Observation:
        """Ask once; never raises for anything the network or the server does."""
        import aiohttp

        at = at or datetime.now(UTC)
        started = perf_counter()
        try:
            async with asyncio.timeout(timeout.total_seconds()):
                value = await self._ask(spec, timeout, at)
            serving, reason = judged(spec, value)
        except TimeoutError:
            serving, reason = None, f"query failed (timeout after {format_duration(timeout)})"
        except QueryFailed as exc:
            serving, reason = None, f"query failed ({exc})"
        except aiohttp.ClientConnectorError as exc:
            refused = isinstance(exc.os_error, ConnectionRefusedError)
            serving = None
            reason = f"query failed ({'connection refused' if refused else 'connection failed'})"
        except (aiohttp.ClientError, OSError, UnicodeError):
            serving, reason = None, "query failed (connection failed)"
        return Observation(at, serving, reason, None, perf_counter() - started)

    async def _ask(self, spec: PrometheusProbe, timeout: timedelta, at: datetime) -> float | None:
        form = {
            "query": spec.query,
            "time": f"{at.timestamp():.3f}",
            "timeout": f"{max(timeout.total_seconds(), 0.001):.3f}",  # Prometheus stops too
        }
        status, body = await self._post(spec.url.rstrip("/") + "/api/v1/query", form, spec)
        if len(body) > self.answer_cap:
            raise QueryFailed("answer too large")
        try:
            answer = json.loads(body)
        except (ValueError, RecursionError):
            raise QueryFailed(f"HTTP {status}, not a Prometheus answer") from None
        if status != 200 and isinstance(answer, dict) and answer.get("status") == "success":
            raise QueryFailed(f"HTTP {status}")
        return single_value(answer)

    async def _post(
        self, url: str, form: dict[str, str], spec: PrometheusProbe
    ) -> tuple[int, bytes]:
        """(status, capped body) of the query, following redirects within `url`'s origin only.

        Prometheus' own API never redirects; a redirect comes from a proxy in front of it, and
        the probe's headers (`X-Api-Key`, `Authorization`) are meant for that origin alone, so
        one to another scheme, host or port is refused before anything is sent there (aiohttp
        would drop `Authorization` but send every other header on). A 307 or 308 asks again
        with the same form; a 301, 302 or 303 with GET, the form in the URL (which Prometheus'
        API takes as well), rather than losing the query as a browser would."""
        from yarl import URL

        here = URL(url)
        origin = _origin_of(here)
        method = "POST"
        for _ in range(MAX_REDIRECTS + 1):
            send = {"data": form} if method == "POST" else {"params": form}
            async with self._client().request(
                method, here, headers=spec.headers or None, allow_redirects=False, **send
            ) as response:
                location = response.headers.get("Location")
                if response.status not in _REDIRECTS or not location:
                    return response.status, await read_capped(response, self.answer_cap + 1)
                status = response.status
            try:
                here = here.join(URL(location))
                moved = _origin_of(here)
            except ValueError:
                raise QueryFailed("redirect to an invalid address") from None
            if moved != origin:
                raise QueryFailed("redirect to another host")
            method = "POST" if status in (307, 308) else "GET"
        raise QueryFailed("too many redirects")


#: The prometheus kind's reasons.
REASONS: tuple[Reason, ...] = (
    Reason(
        "query value {value} {op} {limit}",
        "监测指标 {value} {op} {limit}",
        "monitored value {value} {op} {limit}",
    ),
    Reason("query returned no data", "监测指标查询无数据", "the metric query returned no data"),
    Reason("query failed", "监测指标查询失败", "the metric query failed"),
    Reason(
        "query failed ({what})",
        "监测指标查询失败（{what}）",
        "the metric query failed ({what})",
        "监测指标查询失败",
        "the metric query failed",
    ),
)


def _prober(options: ProberOptions) -> QueryProber:
    """The prometheus kind's prober: one client session for every query service. aiohttp is
    loaded here, when `run` or `check` starts, not by importing the kind."""
    import aiohttp  # noqa: F401

    return QueryProber()


KIND = Kind("prometheus", PrometheusProbe, reasons=REASONS, prober=_prober)

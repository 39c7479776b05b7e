"""The scalar field types every part of the plan's schema shares: durations, ids, time zones,
body patterns, probe URLs and headers, and `${NAME}` references to the environment.

They live apart from `monitor.plan.schema` so that each kind of observation (`monitor.kinds`) can
declare its own table with them, while `config` gathers the kinds' tables from the registry:
neither has to import the other's half.
"""

from __future__ import annotations

import functools
import os
import re
import typing
from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import re2
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo

#: `\Z`, not `$`: `$` also matches before a final line break ("pension\n").
ID_PATTERN = re.compile(r"^[a-z0-9-]+\Z")
_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d)")
#: `${NAME}`: a value read from the environment of channel-monitor.
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
#: More digits than any duration a plan can hold (timedelta ends at 999,999,999 days).
_DURATION_DIGITS = 15
_TOO_LONG = "expected a shorter duration: this one is longer than any calendar holds"
# --- durations -------------------------------------------------------------------------------


def parse_duration(value: object) -> timedelta:
    """Read `"30s"`, `"10m"`, `"2h"`, `"1h30m"`, `"500ms"` (Prometheus style) as a timedelta."""
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str) or not value:
        raise ValueError('expected a duration string such as "30s", "10m" or "2h"')
    pos, total, last = 0, 0.0, float("inf")
    for match in _DURATION_PART.finditer(value):
        size = _DURATION_UNITS[match.group(2)]
        if match.start() != pos or size >= last:
            break  # a gap, or units repeated or out of order ("1m1m", "5s1m")
        digits = match.group(1)
        if len(digits) > _DURATION_DIGITS:
            raise ValueError(_TOO_LONG)  # before int(): Python refuses 4,300 digits itself
        total += int(digits) * size
        pos, last = match.end(), size
    if pos != len(value):
        raise ValueError('expected a duration such as "30s", "10m" or "2h" (units ms, s, m, h, d)')
    try:
        return timedelta(seconds=total)
    except OverflowError:  # more than 999,999,999 days
        raise ValueError(_TOO_LONG) from None


def format_duration(value: timedelta) -> str:
    """Write a timedelta back in the plan's own notation (`"1h30m"`, `"10s"`)."""
    ms = round(value.total_seconds() * 1000)
    if ms == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size:
            out.append(f"{ms // size}{unit}")
            ms %= size
    if ms:
        out.append(f"{ms}ms")
    return "".join(out)


def _within(
    minimum: timedelta, maximum: timedelta, why: str
) -> typing.Callable[[timedelta], timedelta]:
    """A check that a duration lies in `[minimum, maximum]`; `why` says what the top is for."""

    def check(value: timedelta) -> timedelta:
        if value < minimum:
            raise ValueError(f"expected a duration of at least {format_duration(minimum)}")
        if value > maximum:
            raise ValueError(f"expected a duration of at most {format_duration(maximum)} ({why})")
        return value

    return check


#: The longest probe interval, probe timeout and response-time limit. A day is far beyond any
#: sensible probe; a longer one would push due times and deadlines past what datetimes hold.
MAX_PROBE_DURATION = timedelta(days=1)
#: The longest grace after a planned change: a year (a leap year's 366 days). Grace is
#: subtracted from instants, so an unbounded one overflows the calendar.
MAX_GRACE = timedelta(days=366)

Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
#: How often, how long: at least a second, at most `MAX_PROBE_DURATION`.
PositiveDuration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    AfterValidator(
        _within(timedelta(seconds=1), MAX_PROBE_DURATION, "a probe runs at least once a day")
    ),
]
#: The grace after a planned change: from none to `MAX_GRACE`.
GraceDuration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    AfterValidator(_within(timedelta(0), MAX_GRACE, "grace covers at most a year after a change")),
]


def _check_id(value: str) -> str:
    if not ID_PATTERN.match(value):
        raise ValueError("expected an id of lower-case letters, digits and hyphens ([a-z0-9-]+)")
    return value


Id = Annotated[str, AfterValidator(_check_id)]


#: What `ZoneInfo` raises for a name it cannot load: unknown, not a normalized relative path,
#: a folder of tzdata ("Asia"), a file that is not a zone ("zone.tab"), a name too long.
_ZONE_ERRORS = (ZoneInfoNotFoundError, ValueError, OSError)


def _check_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except _ZONE_ERRORS:
        raise ValueError('expected an IANA time zone name such as "Asia/Shanghai"') from None
    return value


Zone = Annotated[str, AfterValidator(_check_zone)]


#: The largest compiled body pattern, in RE2 program instructions. Matching costs at most about
#: body size x program size, so this bounds the worst case of a hostile body; realistic notices
#: ("系统(正在)?(升级|维护)中") compile to a few dozen, `\p{Han}{2,20}` to about 1,600.
MAX_PATTERN_PROGRAM = 10_000
#: RE2's own limit of a counted repetition; it reads a larger count as literal text instead.
MAX_REPEAT = 1000
#: The counts of a pattern's counted repetitions, added up. RE2 expands `x{1,1000}` into a
#: thousand nested copies before it can tell the program is too large: fifty such counts in a
#: row took 12 s to refuse, two take 0.03 s.
MAX_REPEAT_TOTAL = 2000
#: The longest body pattern, in characters: compiling takes time in proportion (0.3 s here for
#: the worst 2,000 characters found), and realistic notices are a few dozen.
MAX_PATTERN_LENGTH = 2000
_REPEAT_COUNT = re.compile(r"\{(\d+)(?:,(\d*))?\}")
_RE2_UNSUPPORTED = (
    ("invalid perl operator: (?=", "lookahead (?=...)"),
    ("invalid perl operator: (?!", "negative lookahead (?!...)"),
    ("invalid perl operator: (?<=", "lookbehind (?<=...)"),
    ("invalid perl operator: (?<!", "negative lookbehind (?<!...)"),
    ("invalid escape sequence: \\1", "backreferences such as \\1"),
)


@functools.lru_cache(maxsize=1024)
def body_pattern(value: str) -> re2._Regexp:
    """The compiled form of a body pattern, built once per pattern for validation and probes.

    RE2 matches in time linear in the body (Python's `re` backtracks: `(a+)+$` against 30 `a`
    and a `b` runs for minutes). The patterns are compiled without capture groups (a probe asks
    only whether the pattern occurs), so a match never needs RE2's slower submatch engines, and
    with `log_errors` off, so a bad pattern never writes to stderr. Raises `re2.error`.
    """
    options = re2.Options()
    options.log_errors = False
    options.never_capture = True
    return re2.compile(value, options)


def pattern_program_size(pattern: re2._Regexp) -> int:
    """The instructions of a compiled pattern (0 where the binding does not say)."""
    inner = getattr(pattern, "_regexp", None)
    size = getattr(inner, "ProgramSize", None)
    return size() if callable(size) else 0


def _repeat_counts(value: str) -> typing.Iterator[int]:
    """The larger count of each `{n}`, `{n,}` and `{n,m}` outside character classes and
    escapes."""
    plain, index, in_class = [], 0, False
    while index < len(value):
        char = value[index]
        if char == "\\":
            plain.append("  ")  # an escaped character never starts or ends a count
            index += 2
            continue
        if in_class:
            in_class = char != "]" or (index > 0 and value[index - 1] == "[")
        elif char == "[":
            in_class = True
        plain.append(" " if in_class else char)
        index += 1
    for match in _REPEAT_COUNT.finditer("".join(plain)):
        yield max(int(group) for group in match.groups() if group)


@functools.lru_cache(maxsize=1024)
def _check_regex(value: str) -> str:
    """A body pattern RE2 can match in linear time, within the size limits. Cached: a plan of
    thousands of services repeats a handful of patterns, and compiling each again cost about
    10 us a service (1.1 s of 100,000)."""
    if len(value) > MAX_PATTERN_LENGTH:
        raise ValueError(
            f"expected a pattern of at most {MAX_PATTERN_LENGTH:,} characters, got {len(value):,}"
        )
    counts = list(_repeat_counts(value))
    if any(count > MAX_REPEAT for count in counts):
        raise ValueError(
            f"expected repetition counts {{n}} of at most {MAX_REPEAT} "
            "(a body pattern is matched by RE2, which reads a larger count as text)"
        )
    if sum(counts) > MAX_REPEAT_TOTAL:
        raise ValueError(
            f"expected repetition counts {{n,m}} adding up to at most {MAX_REPEAT_TOTAL:,}, "
            f"got {sum(counts):,} (RE2 copies the repeated part that many times)"
        )
    try:
        compiled = body_pattern(value)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        detail = detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)
        for marker, name in _RE2_UNSUPPORTED:
            if detail.startswith(marker):
                raise ValueError(
                    f"{name} cannot be used: body patterns are matched in linear time by RE2, "
                    "which has no lookaround and no backreferences; expected a pattern without it"
                ) from None
        if "too large" in detail:
            raise ValueError(_PATTERN_TOO_LARGE) from None
        raise ValueError(f"expected a valid regular expression in RE2 syntax ({detail})") from None
    size = pattern_program_size(compiled)
    if size > MAX_PATTERN_PROGRAM:
        raise ValueError(_PATTERN_TOO_LARGE)
    return value


_PATTERN_TOO_LARGE = (
    f"expected a smaller pattern: this one compiles to more than {MAX_PATTERN_PROGRAM:,} "
    "RE2 instructions (use smaller repetition counts or fewer alternatives)"
)

Regex = Annotated[str, AfterValidator(_check_regex)]


def _non_empty(value: tuple) -> tuple:
    # Not `min_length`: pydantic would also report it when some entries are merely invalid.
    if not value:
        raise ValueError("expected at least one entry")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


#: An RFC 9110 token: what a header name may be made of.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
#: Control characters; a header value may hold a tab, nothing else of these (RFC 9110 5.5).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: One DNS label of an (IDNA-encoded) host name: letters, digits, hyphens, underscores.
_HOST_LABEL = re.compile(r"^[A-Za-z0-9_-]{1,63}\Z")
#: Upper bounds of a probe's headers; servers answer 400 or 431 long before these.
MAX_HEADERS = 100
MAX_HEADER_BYTES = 8192
MAX_URL_LENGTH = 8192


def check_header_name(value: str) -> str:
    """A header name must be a non-empty RFC 9110 token, or no request can carry it."""
    if not _TOKEN.match(value):
        raise ValueError(
            "expected a header name of letters, digits and !#$%&'*+-.^_`|~ only "
            "(no spaces, no other characters, not empty)"
        )
    return value


def check_header_value(value: str) -> str:
    """A header value must not hold control characters: CR or LF would end the header (aiohttp
    refuses to send it), NUL and the others are invalid in HTTP. Never quotes the value."""
    if _CONTROL.search(value):
        raise ValueError(
            "expected a header value without control characters (line breaks, NUL and "
            "the like; a tab is allowed); the value is not repeated here"
        )
    if len(value.encode("utf-8")) > MAX_HEADER_BYTES:
        raise ValueError(
            f"expected a header value of at most {MAX_HEADER_BYTES} bytes (servers refuse "
            "longer ones); the value is not repeated here"
        )
    return value


def _check_headers(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_HEADERS:
        raise ValueError(f"expected at most {MAX_HEADERS} headers, got {len(value)}")
    return value


#: yarl's messages that quote nothing of the URL, passed on to the user as they are.
_YARL_REASONS = (
    "Port out of range 0-65535",
    "Invalid IPv6 URL",
    "Invalid URL: host is required",
    "Invalid URL: port can't be converted to integer",
)


def check_probe_url(value: str) -> str:
    """An http(s) URL a probe can connect to: it parses (yarl, aiohttp's URL type), names a host
    that can be looked up or an IP address, and a port from 1 to 65535. Never quotes the URL,
    which may carry a token."""
    from yarl import URL  # aiohttp's URL type; parsed here as the probe will parse it

    if _ENV_REFERENCE.search(value):
        return value  # an unset `${NAME}`: the service is not configured, nothing is sent
    if len(value) > MAX_URL_LENGTH:
        raise ValueError(
            f"expected a URL of at most {MAX_URL_LENGTH:,} characters (servers refuse longer "
            "ones); the URL is not repeated here"
        )
    if _CONTROL.search(value) or "\t" in value:
        raise ValueError("expected a URL without control characters (the URL is not repeated here)")
    try:
        url = URL(value)
        host, port = url.raw_host, url.port
        _ = url.host  # decodes an IDNA host: "xn--" and the like cannot be
    except (ValueError, UnicodeError) as exc:  # UnicodeError: a host IDNA cannot encode
        reason = "its host name cannot be encoded" if isinstance(exc, UnicodeError) else ""
        # yarl's own words where they cannot hold a part of the URL, else a plain phrase
        reason = reason or next(
            (said for said in _YARL_REASONS if str(exc).startswith(said)), "it cannot be parsed"
        )
        raise ValueError(
            f"expected a well-formed http:// or https:// URL ({reason}; "
            "the URL is not repeated here)"
        ) from None
    if not host:
        raise ValueError("expected a URL with a host name (the URL is not repeated here)")
    if ":" not in host:  # not an IPv6 literal, which yarl has checked
        labels = host.removesuffix(".").split(".")
        if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
            raise ValueError(
                "expected a URL whose host is a DNS name (labels of letters, digits and hyphens, "
                "at most 63 characters each) or an IP address (the URL is not repeated here)"
            )
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(
            "expected a URL with a port from 1 to 65535 (the URL is not repeated here)"
        )
    return value


_URL_PATTERN = r"^(https?://\S+|.*\$\{[A-Za-z_][A-Za-z0-9_]*\}.*)$"


def _probe_environment(value: object, info: ValidationInfo) -> object:
    """Replace each `${NAME}` whose variable is set; leave the others as written.

    Unlike a sink's, a probe's or a push's unset variable is not an error: the service stays in
    the plan, not configured (`Service.unset`), so a plan can ship before every address is known.
    """
    if not isinstance(value, str) or "${" not in value:
        return value  # nothing to fill in (and `info.context` costs 17 us a read)
    env = (info.context or {}).get("env")
    return fill_in(value, os.environ if env is None else env)


def fill_in(text: str, env: Mapping[str, str]) -> str:
    """`text` with each `${NAME}` whose variable is set (non-empty) in `env` replaced by its
    value; the others stay as written."""
    return _ENV_REFERENCE.sub(lambda m: env.get(m.group(1)) or m.group(0), text)


ProbeEnv = BeforeValidator(_probe_environment)
#: An http(s) URL, or one still holding an unset `${NAME}` (checked once the variable is set).
ProbeUrl = Annotated[str, ProbeEnv, Field(pattern=_URL_PATTERN), AfterValidator(check_probe_url)]
#: Header names HTTP can carry, to values without control characters (see the checks above).
Headers = Annotated[
    dict[
        Annotated[str, AfterValidator(check_header_name)],
        Annotated[str, ProbeEnv, AfterValidator(check_header_value)],
    ],
    AfterValidator(_check_headers),
]


def _unset_names(*values: object) -> tuple[str, ...]:
    """The `${NAME}` references left in values after `_probe_environment` (unset variables)."""
    names: list[str] = []
    for value in values:
        texts = value.values() if isinstance(value, dict) else (value,)
        for text in texts:
            if isinstance(text, str):
                names.extend(_ENV_REFERENCE.findall(text))
    return tuple(dict.fromkeys(names))

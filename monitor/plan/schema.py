"""Load `channels.toml` into typed, validated, immutable plan objects.

Every mistake in a plan file is reported at once, each with the file, the key path (with the
channel and service ids where they help), the offending value and what was expected: the people
who edit the plan are civil servants, not Python programmers, so no traceback reaches them.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import gc
import itertools
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo

import rtoml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Discriminator,
    Field,
    StrictInt,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from monitor.clock import SUPPORTED_YEARS, supported
from monitor.fields import (
    _ENV_REFERENCE,
    _ZONE_ERRORS,
    ID_PATTERN,
    GraceDuration,
    Id,
    PositiveDuration,
    Zone,
    _Model,
    _non_empty,
    check_probe_url,
)
from monitor.fields import (  # re-exported: other modules import these from here
    fill_in as fill_in,
)
from monitor.fields import (
    format_duration as format_duration,
)
from monitor.fields import (
    parse_duration as parse_duration,
)
from monitor.kinds import KINDS, probe_kinds
from monitor.kinds.base import UrlProbe

DEFAULT_TIMEZONE = "Asia/Shanghai"
#: A TOML bare key; any other key is written quoted in a key path.
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+\Z")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)

State = Literal["up", "down", "any"]
Kind = Literal["web", "app", "wechat", "alipay", "tax", "platform", "offline"]
Group = Literal["online", "offline"]


class ConfigError(Exception):
    """A plan file that cannot be used; `problems` lists every message, each self-contained."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# --- settings --------------------------------------------------------------------------------


class MonitorSettings(_Model):
    """The `[monitor]` table: titles, time zone and the defaults every probe inherits."""

    title: str = "渠道状态监测"
    title_en: str = "Channel status monitor"
    timezone: Zone = DEFAULT_TIMEZONE
    interval: PositiveDuration = timedelta(seconds=60)
    timeout: PositiveDuration = timedelta(seconds=10)
    grace: GraceDuration = timedelta(minutes=5)
    failure_threshold: StrictInt = Field(default=2, ge=1)
    success_threshold: StrictInt = Field(default=2, ge=1)
    #: The Chromium binary for browser probes; default `chromium` (or `chromium-browser`) on PATH.
    chromium: str | None = None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class SiteSettings(_Model):
    """The `[site]` table: where the published page lives. With `base_url`, the page's language
    links, the feeds' links and the calendar's URLs are absolute (search engines and feed
    readers want them so); without it they stay relative, and the folder can be served
    anywhere."""

    base_url: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _absolute_folder(cls, data: object) -> object:
        # Checked on the table, not the field, so the error does not quote the value: a URL
        # given by mistake with a user and password in it stays out of the message.
        value = data.get("base_url") if isinstance(data, dict) else None
        host = r"(?:[^\s/?#@:\[\]]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?"
        if isinstance(value, str) and not re.fullmatch(rf"https?://{host}/(?:[^\s?#]*/)?", value):
            raise ValueError(
                "base_url: expected an absolute http:// or https:// URL of the page's folder, "
                'ending in "/", without user, query or fragment, e.g. '
                '"https://status.example.gov.cn/" (the value is not repeated here)'
            )
        return data


# --- periods ---------------------------------------------------------------------------------


def _parse_clock(value: object) -> int:
    """Minutes since midnight for `"HH:MM"`; `"24:00"` is allowed as an end."""
    if not isinstance(value, str) or not re.fullmatch(r"\d{2}:\d{2}", value):
        raise ValueError('expected a time of day "HH:MM" such as "09:00" or "24:00"')
    hours, minutes = int(value[:2]), int(value[3:])
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise ValueError('expected a time of day between "00:00" and "24:00"')
    return hours * 60 + minutes


class TimeRange(_Model):
    """A range of clock time inside a day, start inclusive, end exclusive (minutes)."""

    start_time: Annotated[int, BeforeValidator(_parse_clock)]
    end_time: Annotated[int, BeforeValidator(_parse_clock)]

    @model_validator(mode="after")
    def _ordered(self) -> TimeRange:
        if self.end_time <= self.start_time:
            raise ValueError("expected end_time after start_time")
        return self


def _parse_span(value: object, names: tuple[str, ...] | None, low: int, high: int) -> tuple:
    """One Alertmanager span (`"monday:friday"`, `"1:5"`, `"-1"`) as an inclusive pair."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise ValueError("expected a string")
    parts = value.lower().split(":")
    if len(parts) > 2:
        raise ValueError('expected a value or a range "a:b"')

    def one(text: str) -> int:
        if names and text in names:
            return names.index(text) + 1
        try:
            number = int(text)
        except ValueError:
            hint = f" ({', '.join(names)})" if names else ""
            raise ValueError(f"expected a name or number{hint}") from None
        if names == WEEKDAYS or not (low <= number <= high) or number == 0:
            raise ValueError(f"expected a value between {low} and {high}")
        return number

    first = one(parts[0])
    last = one(parts[-1])
    if (first > 0) == (last > 0) and first > last:
        raise ValueError(f'expected a range "a:b" with a not after b, got "{value}"')
    return first, last


def _spans(names: tuple[str, ...] | None, low: int, high: int) -> typing.Callable:
    def check(values: object) -> tuple:
        if not isinstance(values, list):
            raise ValueError("expected a list")
        return tuple(_parse_span(v, names, low, high) for v in values)

    return check


class Period(_Model):
    """A named window: absolute (`start`/`end`), recurring (Alertmanager vocabulary), or both."""

    id: str = ""
    title: str = ""
    title_en: str = ""
    start: datetime | None = None
    end: datetime | None = None
    weekdays: Annotated[tuple, BeforeValidator(_spans(WEEKDAYS, 1, 7))] | None = None
    times: tuple[TimeRange, ...] | None = None
    days_of_month: Annotated[tuple, BeforeValidator(_spans(None, -31, 31))] | None = None
    months: Annotated[tuple, BeforeValidator(_spans(MONTHS, 1, 12))] | None = None
    years: Annotated[tuple, BeforeValidator(_spans(None, 1, 9999))] | None = None
    location: Zone | None = None

    @field_validator("start", "end", mode="before")
    @classmethod
    def _instant(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, date) and not isinstance(value, datetime):
            value = datetime.combine(value, time())
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=(info.context or {}).get("tz") or ZoneInfo("UTC"))
        return value

    @field_validator("start", "end")
    @classmethod
    def _supported(cls, value: datetime | None) -> datetime | None:
        return _in_years(value)

    @model_validator(mode="after")
    def _ordered(self) -> Period:
        if self.start and self.end and self.end <= self.start:
            raise ValueError(
                f"end {self.end.isoformat()} is not after start {self.start.isoformat()}"
            )
        return self

    @property
    def recurring(self) -> bool:
        fields = (self.weekdays, self.times, self.days_of_month, self.months, self.years)
        return any(f is not None for f in fields)


# --- milestones, channels, services -----------------------------------------------------------


def _in_years(value: date | None) -> date | None:
    """Dates and instants of a plan lie in the years the monitor works with (`monitor.clock`):
    the page and the calendar compute days around them, which near year 1 or 9999 overflow."""
    if value is not None and not supported(value):
        raise ValueError(f"expected a date in {SUPPORTED_YEARS}")
    return value


class Milestone(_Model):
    """A dated event of the plan that citizens should know about."""

    at: date | datetime
    until: date | datetime | None = None
    title: str
    title_en: str = ""
    detail: str = ""
    detail_en: str = ""

    @field_validator("at", "until", mode="before")
    @classmethod
    def _local(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=(info.context or {}).get("tz") or ZoneInfo("UTC"))
        return value

    @field_validator("at", "until")
    @classmethod
    def _supported(cls, value: date | None) -> date | None:
        return _in_years(value)


class Rule(_Model):
    """During period `during`, the service is expected to be in `state`."""

    during: str
    state: State


#: How a service can be observed (DESIGN.md's "kind"): a kind of the registry, or `schedule`
#: (not at all).
ObservedBy = Literal[(*KINDS, "schedule")]  # type: ignore[valid-type]
#: The kinds a `[channels.services.probe]` table may name; `http` when `kind` is absent.
PROBE_KINDS = probe_kinds()
#: The kind a probe table without `kind` is (every plan written before the other kinds).
DEFAULT_PROBE_KIND = "http"


def _probe_kind(value: object) -> str | None:
    """The discriminator of a probe table: its `kind`, `http` when absent."""
    if isinstance(value, dict):
        kind = value.get("kind", DEFAULT_PROBE_KIND)
        return kind if isinstance(kind, str) else None
    return getattr(value, "kind", DEFAULT_PROBE_KIND)


#: Every probe kind's table, told apart by `kind`: built from the registry, so a new kind is
#: one module and one registry line, never an edit here.
AnyProbe = Annotated[
    typing.Union[tuple(Annotated[KINDS[name].config, Tag(name)] for name in PROBE_KINDS)],  # noqa: UP007
    Discriminator(_probe_kind),
]
#: The table of the kind whose observations arrive rather than being fetched.
Push = next(kind.config for kind in KINDS.values() if kind.table == "push")


@functools.lru_cache(maxsize=4096)
def _shared_rules(rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
    """One tuple (and its Rule objects) for every service with equal rules: frozen, so it can
    be shared, and at 100,000 services the copies held about 90 MB in `run` and as much again
    in the page's render worker."""
    return rules


class Service(_Model):
    """One business function on one channel: the unit that is observed and judged."""

    id: Id
    name: str
    name_en: str = ""
    note: str = ""
    note_en: str = ""
    default: State = "up"
    expect: Annotated[tuple[Rule, ...], AfterValidator(_shared_rules)] = ()
    probe: AnyProbe | None = None
    push: Push | None = None  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _one_way(self) -> Service:
        if self.probe is not None and self.push is not None:
            raise ValueError(
                "expected either [channels.services.probe] or [channels.services.push], not both"
            )
        return self

    @property
    def observed_by(self) -> ObservedBy:
        """How the service is observed: its probe's kind, `push`, or `schedule` (not at all)."""
        if self.probe is not None:
            return self.probe.kind
        return "push" if self.push is not None else "schedule"

    @functools.cached_property
    def unset(self) -> tuple[str, ...]:
        """Unset environment variables its probe or push needs: while any are, the service is
        not configured and is judged `unknown` (`not configured: set NAME`). Asked on every
        probe, so worked out once."""
        way = self.probe or self.push
        return way.unset if way is not None else ()

    @property
    def configured(self) -> bool:
        """Observed by a probe or push that has everything it needs."""
        return self.observed_by != "schedule" and not self.unset

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy works out `unset` again: its probe or push may have been replaced."""
        copy = super().model_copy(update=update, deep=deep)
        copy.__dict__.pop("unset", None)
        return copy


class Channel(_Model):
    """A way citizens reach the service: a portal, an app, a hall."""

    id: Id
    name: str
    name_en: str = ""
    kind: Kind
    group: Group
    note: str = ""
    note_en: str = ""
    services: Annotated[tuple[Service, ...], AfterValidator(_non_empty)]


# --- alert sinks -----------------------------------------------------------------------------

SinkType = Literal["alertmanager", "webhook", "wecom", "dingtalk", "feishu"]
AlertDirection = Literal["unexpected_up", "unexpected_down"]
#: Sink types that sign their requests with `secret`.
SIGNING_SINKS = ("webhook", "dingtalk", "feishu")


def _from_environment(value: object, info: ValidationInfo) -> object:
    """Replace every `${NAME}` in a string with the environment variable NAME.

    A missing or empty variable is an error that names the variable, never the value."""
    if not isinstance(value, str) or "${" not in value:
        return value  # nothing to fill in (and `info.context` costs 17 us a read)
    env = (info.context or {}).get("env")
    env = os.environ if env is None else env
    missing = [name for name in _ENV_REFERENCE.findall(value) if not env.get(name)]
    if missing:
        names = ", ".join(f'"{name}"' for name in dict.fromkeys(missing))
        plural = "s" if len(set(missing)) > 1 else ""
        raise ValueError(
            f"environment variable{plural} {names} referenced here "
            f"{'are' if plural else 'is'} not set or empty; expected "
            f"{'them' if plural else 'it'} in the environment of channel-monitor"
        )
    return _ENV_REFERENCE.sub(lambda m: env[m.group(1)], value)


FromEnv = BeforeValidator(_from_environment)


class AlertSink(_Model):
    """One `[[alerts]]` table: where incidents are sent, for which directions.

    `url` and `secret` may hold `${ENV_NAME}` references; neither ever appears in a message."""

    type: SinkType
    #: Checked after `${NAME}` is replaced, as a probe's URL is: one that cannot be sent fails
    #: here, not at the first incident.
    url: Annotated[str, Field(pattern=r"^https?://\S+$"), FromEnv, AfterValidator(check_probe_url)]
    name: Annotated[str, Field(pattern=r"^[a-z0-9-]+$")] = ""
    secret: Annotated[str, FromEnv] | None = None
    directions: Annotated[tuple[AlertDirection, ...], AfterValidator(_non_empty)] = (
        "unexpected_up",
        "unexpected_down",
    )
    send_resolved: bool = True

    @model_validator(mode="after")
    def _default_name(self) -> AlertSink:
        if not self.name:
            object.__setattr__(self, "name", self.type)
        return self

    def __repr__(self) -> str:  # the URL and the secret may hold tokens
        return f"AlertSink(type={self.type!r}, name={self.name!r})"

    __str__ = __repr__


class Rehearsal(_Model):
    """Set by `channel-monitor rehearse`, never read from a plan file: the plan's time runs
    `speed` times faster than real time. Durations that describe channels (probe intervals,
    timeouts, grace, thresholds, `within`) stay real seconds, so where the plan and the judge
    measure them between instants of the plan they count `speed` times as much (`Plan.pace`).
    It travels with the plan (to the page's render worker too), so the page, the alerts and
    the metrics can all say that this is a rehearsal."""

    speed: float = Field(gt=0)


class PlanConfig(_Model):
    """Everything in `channels.toml`."""

    monitor: MonitorSettings = MonitorSettings()
    site: SiteSettings = SiteSettings()
    periods: dict[str, Period] = {}  # noqa: RUF012 (pydantic copies a default per model)
    milestones: tuple[Milestone, ...] = ()
    channels: Annotated[tuple[Channel, ...], AfterValidator(_non_empty)]
    alerts: tuple[AlertSink, ...] = ()
    #: Only `rehearse` sets it (see Rehearsal); a plan file that names it is refused.
    rehearsal: Rehearsal | None = None

    @model_validator(mode="before")
    @classmethod
    def _period_ids(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("periods"), dict):
            periods = {}
            for key, value in data["periods"].items():
                periods[key] = {**value, "id": key} if isinstance(value, dict) else value
            data = {**data, "periods": periods}
        return data

    @model_validator(mode="before")
    @classmethod
    def _no_rehearsal(cls, data: object) -> object:
        if isinstance(data, dict) and "rehearsal" in data:
            raise ValueError(
                "rehearsal: set by `channel-monitor rehearse --speed`, never in a plan file"
            )
        return data


# --- loading ---------------------------------------------------------------------------------


def parse_toml(raw: bytes, path: str | Path, what: str) -> dict[str, Any]:
    """Parse a TOML file the people running a cutover wrote (the plan, the notices): every way
    it can be unreadable is a ConfigError naming the file, never a traceback.

    `rtoml` (a compiled parser) reads it first: a plan of 100,000 services is 23 MB of TOML,
    which the standard library's pure-Python `tomllib` takes about 5 s to read and `rtoml`
    about 1.5 s (bench/RESULTS.md, section 2). `tomllib` stays the reference: whatever `rtoml`
    refuses is read again by `tomllib`, so its result, or its error message, is the answer
    (what `rtoml` refuses that `tomllib` reads, such as nesting past its depth of 80 or a float
    too large for a double, reads as before). `rtoml` gives offset datetimes its own tzinfo
    class; they are given `datetime.timezone` of the same offset, as `tomllib` does."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: the file is not UTF-8 text ({exc.reason})"]) from None
    try:
        data = rtoml.loads(text)
        # A plan's channels hold no date or time field (periods and milestones do, at the
        # top): a datetime there fails validation either way, and its message quotes it by
        # `isoformat`, the same with either tzinfo. Not walking 100,000 services saves 0.3 s.
        channels = data.get("channels")
        if channels is not None:
            data["channels"] = []  # in its place, so the keys keep their order
        _plain_zones(data)
        if channels is not None:
            data["channels"] = channels
        return data
    except (rtoml.TomlParsingError, ValueError, TypeError, OverflowError):
        pass  # the reference parser decides: its result or its words
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax error: {exc}"]) from None
    except RecursionError:  # arrays or inline tables nested thousands deep
        raise ConfigError(
            [f"{path}: arrays or tables nest too deeply to read; expected a {what}"]
        ) from None
    except ValueError:  # an integer of more digits than Python converts (4,300)
        raise ConfigError(
            [f"{path}: a number in the {what} is too long to read (thousands of digits)"]
        ) from None


def _plain_zones(value: Any) -> Any:
    """`value` with every offset datetime's tzinfo a `datetime.timezone` (in place)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list):
                _plain_zones(item)
            elif isinstance(item, datetime) and item.tzinfo is not None:
                value[key] = _plain_zone(item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, dict | list):
                _plain_zones(item)
            elif isinstance(item, datetime) and item.tzinfo is not None:
                value[index] = _plain_zone(item)
    return value


def _plain_zone(value: datetime) -> datetime:
    offset = value.utcoffset()
    assert offset is not None
    return value.replace(tzinfo=UTC if not offset else timezone(offset))


def load_config(path: str | Path, alerts: bool = True) -> PlanConfig:
    """Read and validate a plan file; raise ConfigError listing every problem.

    `alerts=False` leaves out `[[alerts]]` (`run --no-alerts`): a monitor that sends none need
    not have its sinks' secrets in its environment.

    The plan is read a `[[channels]]` table at a time where that provably gives the same
    result (`_plan_in_parts`), each channel validated and its raw tables dropped before the
    next is read: at 100,000 services the whole document's parse tree, its Python tables and
    the plan objects were alive at once (a peak of 765 MiB in a process that only loads the
    plan, bench/plan_load.py); now only the objects and one channel's tables are (161 MiB).
    Any other file is read whole, as it always was."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the plan file ({exc.strerror or exc})"]) from None
    with gc_paused():
        try:
            return _load_in_parts(raw, str(path), alerts)
        except _NotInParts:
            pass
        data = parse_toml(raw, path, "plan file")
        if not alerts:
            data.pop("alerts", None)
        return validate_config(data, str(path))


class _NotInParts(Exception):
    """The plan cannot be proven to read the same in parts: it is read whole instead."""


#: A line that may start a table header (`[name]`, `[[name]]`), with the header's opening.
_HEADER_LINE = re.compile(rb"^[ \t]*\[", re.MULTILINE)
#: `[[channels]]`: a new channel.
_CHANNEL_HEADER = re.compile(rb"[ \t]*\[\[[ \t]*channels[ \t]*\]\]")
#: Any other header whose first key is `channels`: a table of the current channel.
_CHANNEL_TABLE = re.compile(rb"[ \t]*\[\[?[ \t]*channels[ \t]*[.\]]")


def _plan_parts(raw: bytes) -> tuple[list[bytes], list[tuple[int, int]]]:
    """The plan's text cut at the lines that look like headers: the top-level pieces (the head
    before the first channel, and the tables between or after channels, each starting with its
    header) and the `(start, end)` of each channel's piece, from its `[[channels]]` to the next
    header not under `channels`. Raises `_NotInParts` when there is no `[[channels]]`.

    Why the pieces read as the whole does (checked by `_plan_in_parts`): every cut is at the
    start of a line. A cut inside a multi-line string or array would leave the piece before it
    unterminated, so every piece is read alone, and a file with a piece that does not read is
    read whole; when every piece reads alone, each cut was at a statement boundary, where TOML
    reads on as from a fresh start. A channel's piece must read as one channel (its tables all
    name the last channel, its own), and the top-level pieces read together must not hold
    `channels` (no `channels = [...]`, no `["channels"]` or `[channels.x]` outside a channel's
    piece): then nothing one piece defines can meet what another does."""
    top: list[bytes] = []
    channels: list[tuple[int, int]] = []
    start, in_channel = 0, False
    for match in _HEADER_LINE.finditer(raw):
        at = match.start()
        if _CHANNEL_HEADER.match(raw, at):
            (channels.append((start, at)) if in_channel else top.append(raw[start:at]))
            start, in_channel = at, True
        elif in_channel and not _CHANNEL_TABLE.match(raw, at):
            channels.append((start, at))
            start, in_channel = at, False
    (channels.append((start, len(raw))) if in_channel else top.append(raw[start:]))
    if not channels:
        raise _NotInParts
    return top, channels


def _read_part(raw: bytes) -> dict[str, Any]:
    """One piece of the plan read alone with `rtoml`; `_NotInParts` for anything it refuses
    (the whole file's reading then decides, with its own message)."""
    try:
        return rtoml.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, rtoml.TomlParsingError, ValueError, TypeError, OverflowError):
        raise _NotInParts from None


def _plan_in_parts(raw: bytes) -> tuple[dict[str, Any], typing.Iterator[Any]]:
    """The plan's top-level tables, read now (`channels` in its place, None), and its
    channels' raw tables, read one by one as they are asked for: equal to `parse_toml` of the
    whole file. Raises `_NotInParts` (also while the channels are read) where that cannot be
    shown, see `_plan_parts`."""
    top_parts, channel_parts = _plan_parts(raw)
    head = _read_part(top_parts[0])
    for part in top_parts[1:]:
        _read_part(part)  # each alone: its cut was at a statement boundary
    joined = _read_part(b"".join(top_parts)) if len(top_parts) > 1 else head
    if "channels" in joined:
        raise _NotInParts
    _plain_zones(joined)
    # The whole file's order: the head's keys, then `channels`, then keys first met later.
    data = {key: joined[key] for key in head}
    data["channels"] = None
    data.update(joined)

    def channels() -> typing.Iterator[Any]:
        for start, end in channel_parts:
            part = _read_part(raw[start:end])
            found = part.get("channels")
            if len(part) != 1 or not isinstance(found, list) or len(found) != 1:
                raise _NotInParts
            yield found[0]

    return data, channels()


def _load_in_parts(raw: bytes, filename: str, alerts: bool) -> PlanConfig:
    """`validate_config` of the plan read in parts, each channel validated as it is read."""
    data, channels = _plan_in_parts(raw)
    if not alerts:
        data.pop("alerts", None)
    check = _PlanCheck(data, filename)
    validated = []
    for index, channel in enumerate(channels):
        check.references(index, channel)
        validated.append(check.channel(index, channel))
    data["channels"] = validated
    return check.finish(data)


@contextlib.contextmanager
def gc_paused() -> typing.Iterator[None]:
    """No cyclic garbage collection inside: reading a plan allocates millions of objects that
    all stay alive, and each collection the allocations set off walks all of them again. At
    100,000 services that was 6.8 s of a 9.8 s load (3.0 s without). What was collectable is
    collected at the next collection after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def validate_config(
    data: dict[str, Any], filename: str = "channels.toml", env: Mapping[str, str] | None = None
) -> PlanConfig:
    """Validate parsed TOML; field errors and cross-reference errors are reported together.

    `${NAME}` references in `[[alerts]]` are read from `env` (default: the process environment).
    """
    check = _PlanCheck(data, filename, env)
    channels = data.get("channels")
    for index, channel in enumerate(channels if isinstance(channels, list) else ()):
        check.references(index, channel)
    return check.finish(data)


class _Sharing:
    """Equal parts of a plan's services made one object, as they are validated.

    Pydantic gives every model its own set of the fields the file named, and every probe its
    own headers table, though thousands of services name the same fields and most have no
    headers: at 100,000 services the sets alone held about 90 MB. The plan's models are
    frozen, and pydantic copies a model's set before it changes a copy's, so services can
    share them; probes share their URL string where it repeats (one API for many services)."""

    def __init__(self) -> None:
        self.fields: dict[frozenset[str], set[str]] = {}
        self.headers: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
        self.urls: dict[str, str] = {}

    def channel(self, channel: Channel) -> None:
        self.model(channel)
        for service in channel.services:
            self.model(service)
            way = service.probe or service.push
            if way is not None:
                self.model(way)
            if isinstance(way, UrlProbe):
                values = way.__dict__
                values["url"] = self.urls.setdefault(way.url, way.url)
                headers = self.headers.setdefault(tuple(way.headers.items()), way.headers)
                values["headers"] = headers

    def model(self, model: BaseModel) -> None:
        named = model.__pydantic_fields_set__
        shared = self.fields.setdefault(frozenset(named), named)
        if shared is not named:
            object.__setattr__(model, "__pydantic_fields_set__", shared)


#: Where a channel validated alone had errors: the whole plan then has problems anyway.
_STAND_IN = Channel.model_construct()
#: The locations of the plan's fields before `channels`, whose errors come before a channel's.
_BEFORE_CHANNELS = {
    (name,) for name in itertools.takewhile(lambda n: n != "channels", PlanConfig.model_fields)
}


class _OneAt(list):
    """The channels as a key path sees them when one is read alone: `item` at `index`, as
    long as the list up to it, without building that list (100,000 channels with problems
    would make it quadratic)."""

    def __init__(self, index: int, item: object) -> None:
        super().__init__()
        self.index, self.item = index, item

    def __len__(self) -> int:
        return self.index + 1

    def __getitem__(self, index: typing.SupportsIndex | slice) -> Any:
        return self.item if index == self.index else None


class _PlanCheck:
    """The checks of one plan: its channels' references one by one, then the whole.

    A channel can be validated alone first (`channel`) so that its raw tables can be dropped
    while the rest is read: a valid one is put back into the document as a `Channel`, which
    the whole plan's validation takes as it is; an invalid one's errors are described at once,
    with the key paths the whole plan's validation gives, and `finish` puts them where that
    validation would have (after the fields before `channels`, before the rest)."""

    def __init__(
        self, top: dict[str, Any], filename: str, env: Mapping[str, str] | None = None
    ) -> None:
        self.filename = filename
        self.context = {"tz": _plan_zone(top), "env": env}
        periods = top.get("periods")
        self.periods: dict[str, Any] = periods if isinstance(periods, dict) else {}
        self.problems: list[str] = []
        self.channel_ids: dict[str, int] = {}
        self.sharing = _Sharing()
        self.channel_errors: list[str] = []

    def channel(self, index: int, raw: object) -> Channel:
        """The channel at `index` validated alone; one with errors has them described now
        (they come where the whole plan's validation puts a channel's) and a stand-in in its
        place, so that neither its raw tables nor a second validation are needed later."""
        try:
            channel = Channel.model_validate(raw, context=self.context)
        except ValidationError as exc:
            where = {"channels": _OneAt(index, raw)}
            for error in exc.errors():
                error["loc"] = ("channels", index, *error["loc"])
                self.channel_errors.append(_describe(error, where, self.filename))
            return _STAND_IN
        self.sharing.channel(channel)
        return channel

    def references(self, index: int, channel: object) -> None:
        """Duplicate ids and rules that name unknown periods in one raw channel."""
        if not isinstance(channel, dict):
            return
        filename, periods = self.filename, self.periods

        def path(*loc: object) -> str:  # built only for a problem: the channel at its index
            return key_path(("channels", index, *loc), {"channels": _OneAt(index, channel)})

        cid = channel.get("id")
        if isinstance(cid, str):
            if cid in self.channel_ids:
                self.problems.append(
                    f"{filename}: {path('id')}: duplicate channel id "
                    f'"{cid}"; it is already used by channels[{self.channel_ids[cid]}]'
                )
            else:
                self.channel_ids[cid] = index
        services = channel.get("services") if isinstance(channel.get("services"), list) else []
        seen_services: dict[str, int] = {}
        for si, service in enumerate(services):
            if not isinstance(service, dict):
                continue
            sid = service.get("id")
            if isinstance(sid, str):
                if sid in seen_services:
                    self.problems.append(
                        f'{filename}: {path("services", si, "id")}: duplicate service id "{sid}" '
                        f"in this channel; it is already used by services[{seen_services[sid]}]"
                    )
                else:
                    seen_services[sid] = si
            rules = service.get("expect") if isinstance(service.get("expect"), list) else []
            for ri, rule in enumerate(rules):
                during = rule.get("during") if isinstance(rule, dict) else None
                if isinstance(during, str) and during not in periods:
                    close = difflib.get_close_matches(during, list(periods), n=1)
                    hint = f' (did you mean "{close[0]}"?)' if close else ""
                    known = ", ".join(sorted(periods)) or "none"
                    where = path("services", si, "expect", ri, "during")
                    self.problems.append(
                        f"{filename}: {where}: unknown period {_quote(during)}{hint}; "
                        f"expected one of the periods defined under [periods]: {known}"
                    )

    def finish(self, data: dict[str, Any]) -> PlanConfig:
        """The whole plan validated; ConfigError with every problem found on the way."""
        problems: list[str] = []
        config: PlanConfig | None = None
        try:
            config = PlanConfig.model_validate(data, context=self.context)
        except ValidationError as exc:
            for error in exc.errors():
                if self.channel_errors and error["loc"][:1] not in _BEFORE_CHANNELS:
                    problems.extend(self.channel_errors)  # pydantic's order: fields, then extras
                    self.channel_errors = []
                problems.append(_describe(error, data, self.filename))
        problems.extend(self.channel_errors)
        for key in self.periods:
            if not ID_PATTERN.match(str(key)):
                problems.append(
                    f"{self.filename}: {key_path(('periods', key), data)}: period id "
                    f"{_quote(key)} must use only "
                    "lower-case letters, digits and hyphens ([a-z0-9-]+)"
                )
        problems.extend(self.problems)
        problems.extend(_alert_problems(data, self.filename))
        if problems:
            raise ConfigError(problems)
        assert config is not None
        return config


def _plan_zone(data: dict[str, Any]) -> ZoneInfo:
    monitor = data.get("monitor")
    name = monitor.get("timezone", DEFAULT_TIMEZONE) if isinstance(monitor, dict) else None
    try:
        return ZoneInfo(name if isinstance(name, str) else DEFAULT_TIMEZONE)
    except _ZONE_ERRORS:
        return ZoneInfo(DEFAULT_TIMEZONE)


def _quote(value: object) -> str:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


#: Lists whose entries are named by their `id` in key paths (notices.toml uses `notices`).
_ID_LABELS = {"channels": "channel", "services": "service", "notices": "notice"}


def key_path(loc: tuple, data: object) -> str:
    """`channels[3].services[1].expect[0].during (channel "x", service "y")` for a location."""
    text = ""
    ids: list[str] = []
    node = data
    for index, part in enumerate(loc):
        if isinstance(part, int):
            text += f"[{part}]"
        else:  # a key TOML must quote (a header name with a space) is quoted as TOML does
            name = str(part) if _BARE_KEY.match(str(part)) else json.dumps(part, ensure_ascii=False)
            text += ("." if text else "") + name
        node = node[part] if _indexable(node, part) else None
        parent = loc[index - 1] if index else None
        if isinstance(part, int) and parent in _ID_LABELS and isinstance(node, dict):
            ident = node.get("id")
            if isinstance(ident, str):
                ids.append(f"{_ID_LABELS[parent]} {_quote(ident)}")
    return f"{text} ({', '.join(ids)})" if ids else text


def _indexable(node: object, part: object) -> bool:
    if isinstance(node, dict):
        return part in node
    if isinstance(node, list) and isinstance(part, int):
        return 0 <= part < len(node)
    return False


def _describe(error: dict, data: dict, filename: str, root: type[BaseModel] | None = None) -> str:
    """One pydantic error as a sentence: file, key path, what was found and expected.
    `root` is the model of the whole file (default: the plan's)."""
    raw = tuple(p for p in error["loc"] if not _is_internal(p))
    loc = _without_tags(raw)
    kind = error["type"]
    value = error.get("input")
    secret = _may_hold_secret(loc)
    if kind == "extra_forbidden":
        allowed = _allowed_keys(raw[:-1], root)
        name = str(loc[-1])
        close = difflib.get_close_matches(name, allowed, n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        message = f'unknown key "{name}"{hint}; allowed keys: {", ".join(allowed)}'

    elif kind in ("union_tag_invalid", "union_tag_not_found") and isinstance(value, dict):
        loc = (*loc, "kind")
        kinds = ", ".join(f'"{k}"' for k in PROBE_KINDS)
        message = f"got {_quote(value.get('kind'))}; expected one of {kinds}"
    elif kind == "missing":
        message = "missing required key"
    elif kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        message = f"got {_quote(value)}; expected one of {expected}"
    elif kind == "string_pattern_mismatch" and loc and loc[-1] == "url":
        message = "expected an http:// or https:// URL"  # the URL itself may hold a token
    elif secret and kind == "value_error":  # our own messages, which never quote the value
        message = error["msg"].removeprefix("Value error, ")
    elif secret:
        # a probe's URL, headers and body and a push token may carry tokens: never quote them
        message = f"expected {_expected_shape(loc)} (the value is not repeated here)"
    elif loc and loc[0] == "alerts" and loc[-1] in ("url", "secret"):
        msg = error["msg"].removeprefix("Value error, ")  # never quote a URL or a secret
        message = msg if kind == "value_error" else f"expected a string ({msg[0].lower()}{msg[1:]})"
    elif kind == "string_pattern_mismatch" and loc and loc[0] == "alerts" and loc[-1] == "name":
        message = f"got {_quote(value)}: expected lower-case letters, digits and hyphens"
    else:
        msg = error["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            msg = msg.removeprefix(prefix)
        found = _quote(value)
        if isinstance(value, dict | list | tuple) and _carries_secret(value):
            # a table above a probe, push or alert sink, of the wrong shape: its tokens stay out
            found = "a table" if isinstance(value, dict) else "a list"
            found += " (its values are not repeated here)"
        message = f"got {found}: {msg[0].lower()}{msg[1:]}"
        if kind == "value_error" and isinstance(value, dict | list | tuple) and not value:
            message = msg  # an empty table or list: "got []" says nothing
        elif kind == "value_error" and isinstance(value, dict):
            message = msg  # a whole table (a period, a probe): its message names the fields
    return f"{filename}: {key_path(loc, data) or '(top level)'}: {message}"


def _without_tags(loc: tuple) -> tuple:
    """Pydantic names the chosen probe kind after `probe` in a location; users never wrote it."""
    return tuple(
        part
        for index, part in enumerate(loc)
        if not (index and loc[index - 1] == "probe" and part in PROBE_KINDS)
    )


def _may_hold_secret(loc: tuple) -> bool:
    """Whether the value at `loc` may carry a token: a probe's URL, headers or body, a push."""
    if "probe" in loc:
        return loc[-1] in ("probe", "url", "headers", "body") or "headers" in loc
    return "push" in loc and loc[-1] in ("push", "token")


#: Keys under which a plan holds what may carry a token: probes (URL, headers, body), pushes,
#: alert sinks (URL, secret).
_SECRET_KEYS = frozenset({"probe", "push", "url", "headers", "body", "token", "secret"})


def _carries_secret(value: object, limit: int = 100_000) -> bool:
    """Whether a table or list about to be quoted holds, at any depth, a key that may carry a
    token. Walked without recursion (a hostile plan nests deep); past `limit` nodes, assumed."""
    stack, seen = [value], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(node, dict):
            if any(key in _SECRET_KEYS for key in node):
                return True
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return False


def _expected_shape(loc: tuple) -> str:
    if loc[-1] == "probe":
        return 'a table such as [channels.services.probe] with url = "https://..."'
    if loc[-1] == "push":
        return 'a table such as [channels.services.push] with token = "${PUSH_TOKEN}"'
    if loc[-1] == "headers":
        return 'a table of header names to string values, e.g. headers = { Accept = "text/html" }'
    if "headers" in loc or loc[-1] in ("body", "token"):
        return "a string"
    return "an http:// or https:// URL string"


def _is_internal(part: object) -> bool:
    """Pydantic adds union-branch and validator names to locations; users never wrote them."""
    return isinstance(part, str) and (
        part.startswith("function-") or part in ("date", "datetime", "tuple[...]", "[key]")
    )


def _allowed_keys(loc: tuple, root: type[BaseModel] | None = None) -> list[str]:
    model: Any = root or PlanConfig
    for part in loc:
        model = _step(model, part)
        if model is None:
            return []
    model = _unwrap(model)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return [
            field.alias or name
            for name, field in model.model_fields.items()
            if not (model is Period and name == "id")
        ]
    return []


def _step(annotation: Any, part: object) -> Any:
    kinds = _tagged_models(annotation)
    if kinds:  # a union of probe kinds: pydantic's location names the one it chose
        return kinds.get(str(part))
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = next(
            (f for n, f in annotation.model_fields.items() if (f.alias or n) == str(part)), None
        )
        return field.annotation if field else None
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (tuple, list) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None


def _tagged_models(annotation: Any) -> dict[str, type[BaseModel]]:
    """`{"http": HttpProbe, ...}` for a discriminated union of models, else empty."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return {}
    found = {}
    for option in typing.get_args(annotation):
        found.update(_tagged_models(option))
        if typing.get_origin(option) is Annotated:
            inner, *extras = typing.get_args(option)
            for extra in extras:
                if isinstance(extra, Tag):
                    found[extra.tag] = inner
    return found


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            options = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = options[0]
        else:
            return annotation


def _alert_problems(data: dict[str, Any], filename: str) -> list[str]:
    """Sink names must be unique (they key the outbox); only signing sinks take a secret."""
    problems: list[str] = []
    sinks = data.get("alerts") if isinstance(data.get("alerts"), list) else []
    seen: dict[str, int] = {}
    for index, sink in enumerate(sinks):
        if not isinstance(sink, dict):
            continue
        kind = sink.get("type")
        name = sink.get("name") or kind
        if isinstance(name, str):
            if name in seen:
                problems.append(
                    f"{filename}: alerts[{index}].name: duplicate sink name {_quote(name)}; "
                    f"it is already used by alerts[{seen[name]}]; expected a distinct `name` "
                    "for each [[alerts]] table (the default name is its type)"
                )
            else:
                seen[name] = index
        known = kind in typing.get_args(SinkType)
        if "secret" in sink and known and kind not in SIGNING_SINKS:
            problems.append(
                f"{filename}: alerts[{index}].secret: a {kind} sink does not sign its requests; "
                f"expected `secret` only with type {', '.join(SIGNING_SINKS)}"
            )
    return problems


def zone_of(config: PlanConfig) -> tzinfo:
    """The plan's time zone, in which naive instants are read."""
    return config.monitor.tz

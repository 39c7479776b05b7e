"""The plan's schema: settings, periods, milestones, rules, channels and services as typed,
validated, immutable objects. Each kind of observation's table is its kind's own model
(`monitor/kinds/`); the alert sinks' are in `sinks.py`; reading a file is `load.py` and what
its problems look like `errors.py`.
"""

from __future__ import annotations

import functools
import re
import typing
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Discriminator,
    Field,
    StrictInt,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from monitor.clock import SUPPORTED_YEARS, supported
from monitor.fields import (
    GraceDuration,
    Id,
    PositiveDuration,
    Zone,
    _Model,
    _non_empty,
)
from monitor.kinds import KINDS, probe_kinds
from monitor.plan.sinks import AlertSink
from monitor.plan.subscriptions import SubscriptionSettings

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
    #: The day the plan was published (its notice's own date), when the notice gives one: the
    #: feeds date planned pauses by it. Unset, they carry no invented publication date.
    published: date | None = None

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
    def _supported(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        return _in_years(_in_plan_zone(value, info))

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


def _in_plan_zone(value: date | None, info: ValidationInfo) -> date | None:
    """A datetime without an offset read in the plan's zone, however it was written.

    TOML's local datetimes are zoned before parsing, but a quoted one (`start =
    "2026-12-18T17:00:00"`) is a string that pydantic turns into a naive datetime only while it
    validates the field; it is read the same way here, after that parsing, so the plan never
    holds a naive instant that every later comparison with an aware one would fail on."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=(info.context or {}).get("tz") or ZoneInfo("UTC"))
    return value


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
    def _supported(cls, value: date | None, info: ValidationInfo) -> date | None:
        return _in_years(_in_plan_zone(value, info))


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
    #: Citizens' subscriptions by mail (monitor/subscriptions/); None: none are taken.
    subscriptions: SubscriptionSettings | None = None
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


def zone_of(config: PlanConfig) -> tzinfo:
    """The plan's time zone, in which naive instants are read."""
    return config.monitor.tz

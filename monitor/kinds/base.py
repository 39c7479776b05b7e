"""The small interface every kind of observation implements (DESIGN.md's "kind").

A kind is one module under `monitor/kinds/` that owns what the rest of the monitor needs to know
about it: the table a plan writes for it (a pydantic model that validates itself, so a new kind
never touches a central checker), how to build its prober, and the reasons it writes in both
languages. `monitor.kinds` names them in one registry; the plan's schema, the probers of `run`
and `check`, and the table of reasons are all built from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import Field

from monitor.fields import Headers, PositiveDuration, ProbeUrl, _Model, _unset_names
from monitor.reason_rows import Reason

if TYPE_CHECKING:
    from pydantic import BaseModel

    from monitor.observation import Observation


class KindProber(Protocol):
    """What observes one kind of probe: one signature for all, and failures come back as an
    Observation with a reason, never raised, so one bad endpoint never stalls the rest."""

    #: The kind it observes, so a pipeline can file a prober under its kind without knowing it.
    kind: str

    async def probe(self, spec: Any, timeout: timedelta, at: datetime) -> Observation: ...

    async def close(self) -> None: ...


#: How every probe of every kind names itself to the channel.
USER_AGENT = "channel-monitor/0.1 (+status probe)"


@dataclass(frozen=True, slots=True)
class ProberOptions:
    """The narrow settings a kind's prober may need, taken from the plan's `[monitor]` table.
    One object rather than keyword arguments, so a new kind's setting is one new field here
    and no factory's signature changes."""

    #: `[monitor] chromium`: the browser the browser kind starts (None: found on the PATH).
    chromium: str | None = None


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of observation as the rest of the monitor sees it."""

    #: The word a plan writes (`kind = "http"`) and every output shows (`observed_by`).
    name: str
    #: Its plan table's model: validation lives on the type, each error with its key path.
    config: type[BaseModel]
    #: The service table the plan writes it in: `[channels.services.probe]` for the kinds the
    #: monitor probes, `[channels.services.push]` for the one whose observations arrive.
    table: Literal["probe", "push"] = "probe"
    #: Its reasons, both languages; `monitor.reasons` gathers every kind's into one table.
    reasons: tuple[Reason, ...] = ()
    #: Builds its prober; None for a kind that is not probed (push). Network libraries are
    #: imported inside the prober's module or the factory, never by importing the kind, so
    #: `validate` and `plan` load none of them.
    prober: Callable[[ProberOptions], KindProber] | None = None
    #: Whether its observations carry an HTTP status (an http or browser probe's answer):
    #: `/metrics` exports `probe_http_status_code` only for such services, since a 0 for a
    #: push or a query would read as "no answer" where no answer was ever asked for.
    has_status_code: bool = False
    #: Whether its observations measure how long the observing took: a push arrives with no
    #: duration of ours, and its zeros in `probe_duration_seconds` would drag every quantile
    #: down, so the histogram is kept only for kinds that time something.
    has_duration: bool = True

    def default(self, name: str) -> timedelta | None:
        """The kind's own default for a duration setting (`interval`, `timeout`), taken from its
        model so the two can never differ; None when the plan's `[monitor]` one applies."""
        field = self.config.model_fields.get(name)
        return field.default if field is not None else None

    @property
    def interval(self) -> timedelta | None:
        """How often a service of this kind is observed unless its plan says otherwise."""
        return self.default("interval")

    @property
    def timeout(self) -> timedelta | None:
        """How long one observation of this kind may take unless its plan says otherwise."""
        return self.default("timeout")


class UrlProbe(_Model):
    """What the kinds that ask a URL share (http, browser, prometheus). Never shown anywhere
    outside the process: the URL and headers may hold tokens."""

    kind: str  # each kind narrows it to its own name
    url: ProbeUrl
    headers: Headers = Field(default_factory=dict)  # a `{}` default is deep-copied per probe
    interval: PositiveDuration | None = None
    timeout: PositiveDuration | None = None

    def __repr__(self) -> str:  # keep URLs and headers out of any log line that prints a model
        return f"{type(self).__name__}(kind={self.kind!r})"

    __str__ = __repr__  # pydantic's own `str` (`%s`, f-strings) would list every field

    @property
    def unset(self) -> tuple[str, ...]:
        """Names of the unset environment variables this probe refers to."""
        return _unset_names(self.url, self.headers)


def registry(*kinds: Kind) -> dict[str, Kind]:
    """The registry's dict, refusing two kinds of one name (the second would hide the first)."""
    named: dict[str, Kind] = {}
    for kind in kinds:
        if kind.name in named:
            raise ValueError(f"two kinds are named {kind.name!r}")
        named[kind.name] = kind
    return named


def make_probers(kinds: dict[str, Kind], options: ProberOptions) -> dict[str, KindProber]:
    """One prober per probed kind, built by each kind's own factory."""
    return {name: kind.prober(options) for name, kind in kinds.items() if kind.prober is not None}

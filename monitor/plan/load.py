"""Reading a plan file: TOML (in parts, so 100,000 services load in seconds), validation
of the whole plan at once, and every problem reported with its key path (`errors.py`)."""

from __future__ import annotations

import contextlib
import difflib
import gc
import itertools
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from datetime import UTC, datetime, timezone
from pathlib import Path
from typing import Any

import rtoml
from pydantic import (
    BaseModel,
    ValidationError,
)

from monitor.fields import (
    ID_PATTERN,
)
from monitor.kinds.base import UrlProbe
from monitor.plan.errors import ConfigError, _describe, _plan_zone, _quote, key_path
from monitor.plan.hints import EnvHints
from monitor.plan.schema import Channel, PlanConfig
from monitor.plan.sinks import SIGNING_SINKS, SinkType


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


def load_config(
    path: str | Path,
    alerts: bool = True,
    *,
    unset_secrets: bool = False,
    warnings: list[str] | None = None,
) -> PlanConfig:
    """Read and validate a plan file; raise ConfigError listing every problem.

    `alerts=False` leaves out `[[alerts]]` (`run --no-alerts`): a monitor that sends none need
    not have its sinks' secrets in its environment. `unset_secrets=True` keeps a sink whose
    `${NAME}` is unset, as written (`AlertSink.unset`): the commands that read the plan but
    send nothing warn about it instead of refusing the whole plan; `run` keeps refusing.
    `warnings`, when given, receives what is valid but probably a slip (`hints.py`).

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
            return _load_in_parts(raw, str(path), alerts, unset_secrets, warnings)
        except _NotInParts:
            pass
        data = parse_toml(raw, path, "plan file")
        if not alerts:
            data.pop("alerts", None)
        return validate_config(data, str(path), unset_secrets=unset_secrets, warnings=warnings)


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


def _load_in_parts(
    raw: bytes,
    filename: str,
    alerts: bool,
    unset_secrets: bool = False,
    warnings: list[str] | None = None,
) -> PlanConfig:
    """`validate_config` of the plan read in parts, each channel validated as it is read."""
    data, channels = _plan_in_parts(raw)
    if not alerts:
        data.pop("alerts", None)
    check = _PlanCheck(data, filename, unset_secrets=unset_secrets)
    validated = []
    for index, channel in enumerate(channels):
        check.references(index, channel)
        validated.append(check.channel(index, channel))
    data["channels"] = validated
    return check.finish(data, warnings)


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
    data: dict[str, Any],
    filename: str = "channels.toml",
    env: Mapping[str, str] | None = None,
    *,
    unset_secrets: bool = False,
    warnings: list[str] | None = None,
) -> PlanConfig:
    """Validate parsed TOML; field errors and cross-reference errors are reported together.

    `${NAME}` references in `[[alerts]]` are read from `env` (default: the process environment);
    an unset one is a problem unless `unset_secrets` (see `load_config`).
    """
    check = _PlanCheck(data, filename, env, unset_secrets=unset_secrets)
    channels = data.get("channels")
    for index, channel in enumerate(channels if isinstance(channels, list) else ()):
        check.references(index, channel)
    return check.finish(data, warnings)


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
        self,
        top: dict[str, Any],
        filename: str,
        env: Mapping[str, str] | None = None,
        *,
        unset_secrets: bool = False,
    ) -> None:
        self.filename = filename
        self.context = {"tz": _plan_zone(top), "env": env, "unset_secrets": unset_secrets}
        self.unset_secrets = unset_secrets
        self.hints = EnvHints(filename, os.environ if env is None else env)
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
            for table in ("probe", "push"):
                self.hints.way(
                    service.get(table),
                    lambda *loc, si=si, table=table: path("services", si, table, *loc),
                )
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

    def finish(self, data: dict[str, Any], warnings: list[str] | None = None) -> PlanConfig:
        """The whole plan validated; ConfigError with every problem found on the way. What is
        valid but probably a slip goes to `warnings` (when the plan has no problem)."""
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
        if warnings is not None:
            self.hints.top(data, lambda *loc: key_path(loc, data), self.unset_secrets)
            warnings.extend(self.hints.finish())
        return config


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

"""What a plan file's problems look like to the people who edit it: a key path with the
channel and service ids, the value, and what was expected; never a traceback, never a secret."""

from __future__ import annotations

import difflib
import json
import types
import typing
from datetime import date, datetime, time
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from pydantic import (
    BaseModel,
    Tag,
)

from monitor.fields import (
    _ZONE_ERRORS,
)
from monitor.plan.schema import _BARE_KEY, DEFAULT_TIMEZONE, PROBE_KINDS, Period, PlanConfig


class ConfigError(Exception):
    """A plan file that cannot be used; `problems` lists every message, each self-contained."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


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
    elif loc and loc[0] in ("alerts", "subscriptions") and loc[-1] in _SECRET_FIELDS:
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


#: Fields of `[[alerts]]` and `[subscriptions]` whose values are never quoted in a message.
_SECRET_FIELDS = ("url", "secret", "smtp", "username", "password")


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

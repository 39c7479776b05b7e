"""Warnings about a plan's `${NAME}` references: what is valid but probably not what was meant.

A plan may name environment variables in a probe's URL, headers, body or query, a push's
token, an alert sink's URL and secret and the subscriptions' mail settings. Three slips pass
validation silently and then cost an operator an hour:

- `$NAME` without braces is not a reference: it is taken as literal text (a push token that
  no channel will ever send);
- a misspelled variable is simply unset, so its services stay `unknown` with no hint why;
- an alert sink whose secret is unset cannot send; `run` refuses it, the other commands
  only need to say so.

Nothing here changes the plan or refuses it: `validate --strict` turns the warnings into
exit 2. A warning names the variable and the key path, never a value.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from typing import Any

from monitor.fields import _ENV_REFERENCE

#: `$NAME` not followed by `{`: upper-case letters, digits and underscores, as environment
#: variables are conventionally named. Lower-case words after a `$` are left alone: they are
#: more likely part of a literal value (a password) than a forgotten pair of braces.
_BARE_REFERENCE = re.compile(r"(?<![$\w])\$([A-Z_][A-Z0-9_]+)\b(?!\})")
#: How alike two names must be for a "did you mean" (difflib's ratio), and how many typing
#: slips apart at most.
_CLOSE = 0.8
_EDITS = 2
_DIGITS = re.compile(r"\d+")
#: The fields of a probe or push table that take `${NAME}`; `headers` is a table of them.
_WAY_FIELDS = ("url", "body", "query", "token")
#: The fields of an `[[alerts]]` table and of `[subscriptions]` that take `${NAME}`.
_SINK_FIELDS = ("url", "secret")
_SUBSCRIPTION_FIELDS = ("smtp", "username", "password")

Path = Callable[..., str]


def _misspelt(name: str, candidates: list[str]) -> list[str]:
    """The candidate `name` is most likely a slip of: alike by difflib's ratio and at most
    `_EDITS` typing slips apart, and not merely another number (`HALL1_TOKEN` and
    `HALL2_TOKEN` name two halls, not a typo). Plans name many variables that share most of
    their letters (`SI_HALL_PUSH_TOKEN`, `TAX_HALL_PUSH_TOKEN`); ratio alone called them
    misspellings of each other."""
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=_CLOSE)
    return [
        other
        for other in close
        if _slips(name, other) <= _EDITS and _DIGITS.sub("", name) != _DIGITS.sub("", other)
    ][:1]


def _slips(a: str, b: str) -> int:
    """Typing slips from `a` to `b`: a letter added, left out, changed, or two swapped
    (optimal string alignment distance)."""
    rows = [list(range(len(b) + 1))]
    for i, x in enumerate(a, 1):
        row = [i]
        for j, y in enumerate(b, 1):
            cost = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (x != y))
            if i > 1 and j > 1 and x == b[j - 2] and a[i - 2] == y:
                cost = min(cost, rows[-2][j - 2] + 1)
            row.append(cost)
        rows.append(row)
    return rows[-1][-1]


class EnvHints:
    """The references of one plan, collected from its raw tables as they are read, and the
    warnings they give once the whole plan has been seen."""

    def __init__(self, filename: str, env: Mapping[str, str]) -> None:
        self.filename = filename
        self.env = env
        #: every `${NAME}` of the plan, with the key path where it was first met
        self.references: dict[str, str] = {}
        self.warnings: list[str] = []

    def way(self, table: object, path: Path) -> None:
        """A raw probe or push table; `path(*loc)` is the key path of a field in it."""
        if not isinstance(table, dict):
            return
        for name in _WAY_FIELDS:
            self._value(table.get(name), path, (name,))
        headers = table.get("headers")
        if isinstance(headers, dict):
            for key, value in headers.items():
                self._value(value, path, ("headers", key))

    def top(self, data: Mapping[str, Any], path: Path, unset_secrets: bool) -> None:
        """The raw `[[alerts]]` and `[subscriptions]` tables; with `unset_secrets`, a sink
        whose variables are unset is warned about (else it is a problem of the plan)."""
        sinks = data.get("alerts")
        for index, sink in enumerate(sinks if isinstance(sinks, list) else ()):
            if not isinstance(sink, dict):
                continue
            for name in _SINK_FIELDS:
                value = sink.get(name)
                self._value(value, path, ("alerts", index, name))
                missing = self._unset(value) if unset_secrets else []
                if missing:
                    names = ", ".join(f'"{n}"' for n in missing)
                    sink_name = sink.get("name") or sink.get("type") or "?"
                    self.warnings.append(
                        f"{self.filename}: {path('alerts', index, name)}: warning: environment "
                        f"variable {names} is not set: the alert sink {sink_name!s} cannot send "
                        "until it is, and `run` refuses to start without it / 警告：环境变量"
                        f"{names}未设置，该告警通道无法发送，run 在设置之前不会启动"
                    )
        subscriptions = data.get("subscriptions")
        if isinstance(subscriptions, dict):
            for name in _SUBSCRIPTION_FIELDS:
                self._value(subscriptions.get(name), path, ("subscriptions", name))

    def finish(self) -> list[str]:
        """Every warning: bare `$NAME`s and sinks as met, then each unset variable that looks
        like a misspelling of a set one or of another of the plan's."""
        known = [name for name, value in self.env.items() if value]
        for name, where in self.references.items():
            if self.env.get(name):
                continue
            others = [n for n in self.references if n != name and n not in known]
            close = _misspelt(name, known) or _misspelt(name, others)
            if close:
                self.warnings.append(
                    f'{self.filename}: {where}: warning: environment variable "{name}" is not '
                    f'set (did you mean "{close[0]}"?) / 警告：环境变量 {name} 未设置'
                    f"（是否应为 {close[0]}？）"
                )
        return self.warnings

    def _value(self, value: object, path: Path, loc: tuple) -> None:
        if not isinstance(value, str) or "$" not in value:
            return  # the common case, at the cost of one `in`
        for name in _ENV_REFERENCE.findall(value):
            self.references.setdefault(name, path(*loc))
        for name in dict.fromkeys(_BARE_REFERENCE.findall(value)):
            self.warnings.append(
                f'{self.filename}: {path(*loc)}: warning: "${name}" is not read from the '
                f'environment (it is taken as literal text); write "${{{name}}}" to read the '
                f"variable {name} / 警告：${name} 没有花括号，按原文使用；要读取环境变量请写 "
                f"${{{name}}}"
            )

    def _unset(self, value: object) -> list[str]:
        if not isinstance(value, str):
            return []
        found = _ENV_REFERENCE.findall(value)
        return list(dict.fromkeys(n for n in found if not self.env.get(n)))

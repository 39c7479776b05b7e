"""What a simulated channel answers so that the plan's own probe reads it as serving or not.

The demo keeps every probe as the plan wrote it (its patterns, JSON conditions, comparisons);
only the addresses point at the simulator. So the simulator has to answer each probe in the
terms that probe checks: a body holding a text its `body_matches` pattern finds, JSON that its
`json` conditions accept, a query value its `serving_if` accepts, and the opposite while the
channel is paused. These helpers work those answers out from the probe's own settings. What
they cannot satisfy (a pattern or condition too rich to build an answer for) they report as
None, and the simulator then falls back to its plain answers.
"""

from __future__ import annotations

import re
from typing import Any

try:  # Python 3.11+: the regular-expression parser behind `re`
    from re import _parser as _sre  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - older Pythons
    import sre_parse as _sre  # type: ignore[no-redef]

#: How many alternatives of a pattern are tried before giving up on building a match.
_TRIES = 8


def _build(items: Any, choice: int) -> str:
    """A string made from parsed pattern `items`, taking alternative `choice` where it can."""
    out: list[str] = []
    for op, arg in items:
        name = str(op)
        if name == "LITERAL":
            out.append(chr(arg))
        elif name == "NOT_LITERAL":
            out.append("x" if chr(arg) != "x" else "y")
        elif name == "ANY":
            out.append("x")
        elif name == "IN":
            out.append(_from_set(arg))
        elif name == "BRANCH":
            branches = arg[1]
            out.append(_build(branches[choice % len(branches)], choice))
        elif name == "SUBPATTERN":
            out.append(_build(arg[-1], choice))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, _high, inner = arg
            out.append(_build(inner, choice) * max(low, 1))
        elif name == "ATOMIC_GROUP":
            out.append(_build(arg, choice))
        elif name in ("AT", "GROUPREF", "ASSERT", "ASSERT_NOT"):
            continue  # anchors take no text; RE2 has no lookaround or backreferences
        else:
            raise ValueError(name)
    return "".join(out)


def _from_set(members: Any) -> str:
    """One character from a parsed `[...]` set (a negated set gets a letter it is unlikely
    to exclude; the caller checks the result against the pattern anyway)."""
    for op, arg in members:
        name = str(op)
        if name == "NEGATE":
            return "q"
        if name == "LITERAL":
            return chr(arg)
        if name == "RANGE":
            return chr(arg[0])
        if name == "CATEGORY":
            word = str(arg)
            return {"CATEGORY_DIGIT": "0", "CATEGORY_SPACE": " "}.get(word, "a")
    return "a"


def text_matching(pattern: str) -> str | None:
    """A short text that `pattern` finds (as `re.search` does), or None when none was built.

    Used for the page a paused channel shows (its maintenance notice, found by the probe's
    `body_not_matches`) and for the page a serving one shows (found by `body_matches`)."""
    try:
        parsed = _sre.parse(pattern)
    except re.error:
        return None
    for choice in range(_TRIES):
        try:
            text = _build(parsed, choice)
        except ValueError:
            return None
        if re.search(pattern, text):
            return text
    return None


# --- JSON back ends -----------------------------------------------------------------------------


def _path(node: dict) -> list[str] | None:
    """The field names of a plain dotted path (`data.open`), else None."""
    kind = node.get("type")
    if kind == "field":
        return [node["value"]]
    if kind == "subexpression":
        parts: list[str] = []
        for child in node["children"]:
            found = _path(child)
            if found is None:
                return None
            parts.extend(found)
        return parts
    return None


def _wants(node: dict) -> list[tuple[list[str], Any]] | None:
    """The (path, value) pairs that make a JMESPath condition true, for the forms a plan's
    back-end checks use: `a.b` (truthy), `a.b == literal`, and `&&` of those. None: another
    form, for which the simulator builds no answer."""
    kind = node.get("type")
    if kind == "and_expression":
        found: list[tuple[list[str], Any]] = []
        for child in node["children"]:
            part = _wants(child)
            if part is None:
                return None
            found.extend(part)
        return found
    if kind == "comparator" and node.get("value") == "eq":
        left, right = node["children"]
        if right.get("type") == "field" and left.get("type") == "literal":
            left, right = right, left
        path = _path(left)
        if path is None or right.get("type") != "literal":
            return None
        return [(path, right["value"])]
    path = _path(node)
    return None if path is None else [(path, True)]


def _paused_value(value: Any) -> Any:
    """A value that fails an equality with `value` (or a truthiness check)."""
    if value is True:
        return False
    if isinstance(value, bool) or value is None:
        return True if value is None else not value
    if isinstance(value, int | float):
        return 50301 if value != 50301 else 50302
    return "maintenance" if value != "maintenance" else "paused"


def json_answer(conditions: tuple[str, ...], serving: bool) -> dict | None:
    """A JSON document that passes every condition while `serving` and fails at least one
    while not (every wanted value replaced by one that fails it), or None when a condition
    has a form the simulator does not build answers for."""
    import jmespath

    wanted: list[tuple[list[str], Any]] = []
    for condition in conditions:
        found = _wants(jmespath.compile(condition).parsed)
        if found is None:
            return None
        wanted.extend(found)
    document: dict = {}
    for path, value in wanted:
        here = document
        for name in path[:-1]:
            nested = here.get(name)
            if not isinstance(nested, dict):
                nested = here[name] = {}
            here = nested
        here[path[-1]] = value if serving else _paused_value(value)
    return document


# --- Prometheus ---------------------------------------------------------------------------------


def query_value(comparison: Any, serving: bool, preferred: float) -> float:
    """A value for which `comparison` (a prometheus probe's `serving_if`) holds exactly when
    `serving`: `preferred` (or 0 while paused) when it fits, else one next to its number."""
    holds = comparison.holds
    number = float(comparison.number)
    for value in (preferred, 0.0) if serving else (0.0, preferred):
        if holds(value) == serving:
            return value
    for value in (number + 1, number, number - 1, number + 0.5, number - 0.5):
        if holds(value) == serving:
            return value
    return number  # unreachable for the six comparisons; kept total

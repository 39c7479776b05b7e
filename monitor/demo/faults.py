"""Faults the demo plays on its simulated channels, read from a small TOML file.

A fault makes one service depart from the plan for a while, so the replay shows an incident
on demand; without a file the simulated channels follow the plan exactly. The 2022 plan
shipped with the package has its four faults in `faults-2022.toml` beside this module (the
demo uses it when the plan is the shipped one). The format:

    [replay]                          # optional: the window replayed
    from = 2022-06-22T12:00:00
    until = 2022-07-26T12:00:00

    [[faults]]
    service = "channel/service"       # ids of the plan
    from = 2022-06-22T18:00:00        # naive: read in the plan's time zone
    until = 2022-06-22T20:00:00       # exclusive
    behaviour = "up"                  # up, down, slow or silent
    story = "..."                     # optional, both languages
    story_en = "..."

Every mistake is reported at once, each with the file, the key path and what was expected,
the way `validate` reports the plan's.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from datetime import date, datetime, time
from importlib import resources
from pathlib import Path
from typing import Any

from monitor.plan import Plan

from .simulator import BEHAVIOURS, Fault

#: The faults of the shipped 2022 plan, package data beside this module.
SHIPPED_FAULTS = "faults-2022.toml"

_FAULT_KEYS = ("service", "from", "until", "behaviour", "story", "story_en")


class FaultsError(ValueError):
    """A faults file that cannot be used: every problem, one line each."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


@dataclass(frozen=True)
class FaultScript:
    """What a faults file says: the faults, and the window to replay when it names one."""

    faults: tuple[Fault, ...]
    start: datetime | None = None
    end: datetime | None = None


def _instant(value: Any, plan: Plan) -> datetime | None:
    """A TOML date-time (naive ones in the plan's zone, as the plan reads them); None when
    the value is not one."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=plan.zone)
    if isinstance(value, date):
        return datetime.combine(value, time(), plan.zone)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=plan.zone)
    return None


def parse_faults(data: dict[str, Any], plan: Plan, source: str) -> FaultScript:
    """The faults in `data` (a parsed TOML document), checked against `plan`."""
    problems: list[str] = []
    for key in data:
        if key not in ("faults", "replay"):
            problems.append(f'{key}: unknown key; expected "faults" or "replay"')
    start = end = None
    replay = data.get("replay", {})
    if not isinstance(replay, dict):
        problems.append("replay: expected a table with from and until")
        replay = {}
    for key in replay:
        if key not in ("from", "until"):
            problems.append(f'replay.{key}: unknown key; expected "from" or "until"')
    if "from" in replay:
        start = _instant(replay["from"], plan)
        if start is None:
            problems.append("replay.from: expected a date-time such as 2026-12-18T16:00:00")
    if "until" in replay:
        end = _instant(replay["until"], plan)
        if end is None:
            problems.append("replay.until: expected a date-time such as 2026-12-21T12:00:00")
    if start is not None and end is not None and end <= start:
        problems.append("replay.until: expected an instant after replay.from")
    items = data.get("faults", [])
    if not isinstance(items, list):
        problems.append("faults: expected an array of tables ([[faults]])")
        items = []
    ids = [f"{c}/{s}" for c, s in (ref.key for ref in plan.services)]
    faults = []
    for index, item in enumerate(items):
        where = f"faults[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected a table")
            continue
        found = len(problems)
        for key in item:
            if key not in _FAULT_KEYS:
                hint = difflib.get_close_matches(key, _FAULT_KEYS, 1)
                problems.append(
                    f"{where}.{key}: unknown key; expected one of {', '.join(_FAULT_KEYS)}"
                    + (f' (did you mean "{hint[0]}"?)' if hint else "")
                )
        for key in ("service", "from", "until", "behaviour"):
            if key not in item:
                problems.append(f"{where}.{key}: missing; expected it in every fault")
        service = item.get("service")
        channel = name = ""
        if "service" in item:
            if not isinstance(service, str) or service.count("/") != 1:
                problems.append(f'{where}.service: expected "channel/service", e.g. "{ids[0]}"')
            elif service not in ids:
                hint = difflib.get_close_matches(service, ids, 1)
                problems.append(
                    f'{where}.service: "{service}" is not a service of the plan'
                    + (f' (did you mean "{hint[0]}"?)' if hint else "")
                )
            else:
                channel, name = service.split("/")
        begins = ends = None
        for key in ("from", "until"):
            if key in item:
                value = _instant(item[key], plan)
                if value is None:
                    problems.append(
                        f"{where}.{key}: expected a date-time such as 2026-12-18T17:00:00"
                    )
                elif key == "from":
                    begins = value
                else:
                    ends = value
        if begins is not None and ends is not None and ends <= begins:
            problems.append(f"{where}.until: expected an instant after {where}.from")
        behaviour = item.get("behaviour")
        if "behaviour" in item and behaviour not in BEHAVIOURS:
            problems.append(
                f"{where}.behaviour: expected one of {', '.join(BEHAVIOURS)} (got {behaviour!r})"
            )
        for key in ("story", "story_en"):
            if key in item and not isinstance(item[key], str):
                problems.append(f"{where}.{key}: expected a string")
        if len(problems) > found or begins is None or ends is None:
            continue
        default = f"{service} {behaviour} from {begins:%m-%d %H:%M} until {ends:%m-%d %H:%M}"
        faults.append(
            Fault(
                channel,
                name,
                begins,
                ends,
                str(behaviour),
                str(item.get("story", default)),
                str(item.get("story_en", default)),
            )
        )
    if problems:
        raise FaultsError(source, problems)
    return FaultScript(tuple(faults), start, end)


def load_faults(path: Path | str, plan: Plan) -> FaultScript:
    """Read and check a faults file; FaultsError says every problem (with the file)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise FaultsError(source, [f"cannot be read ({exc.strerror or exc})"]) from None
    return _parse_text(text, plan, source)


def _parse_text(text: str, plan: Plan, source: str) -> FaultScript:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FaultsError(source, [f"not valid TOML ({exc})"]) from None
    return parse_faults(data, plan, source)


def shipped_faults(plan: Plan) -> FaultScript:
    """The faults of the shipped 2022 plan (package data), checked against `plan`."""
    text = resources.files("monitor.demo").joinpath(SHIPPED_FAULTS).read_text(encoding="utf-8")
    return _parse_text(text, plan, f"monitor/demo/{SHIPPED_FAULTS}")


def scripted_faults(plan: Plan) -> list[Fault]:
    """The 2022 faults as a list (a renamed service fails loudly, naming the fault)."""
    return list(shipped_faults(plan).faults)

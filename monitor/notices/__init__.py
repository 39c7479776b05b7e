"""Operators' notices: `notices.toml` beside the plan, in the operators' own words.

The page otherwise speaks only in verdicts the monitor worked out; a notice is what the
operations team says itself (知悉、处理中、预计恢复时间): a title and dated updates, in Chinese and
English, optionally naming the services it is about and an incident of the store. The file is
validated like the plan (every mistake at once, with file, key path and what was expected),
re-read whenever the page is rendered, and written by `channel-monitor notice add|update` for
people who do not edit TOML: those append text to the file, so the operator's comments stay,
and replace it in one rename, so a reader never sees half a file.

Pure apart from reading and writing that one file; the running monitor's side (watching the
file, notifying the sinks) is `monitor/notices/watch.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import tomllib
from collections.abc import Collection, Sequence
from datetime import date, datetime, time
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from monitor.fields import Id
from monitor.plan import Plan
from monitor.plan.errors import ConfigError, _describe, _quote, key_path
from monitor.plan.load import parse_toml

#: The file's name beside the plan, read when `--notices` is not given.
DEFAULT_NAME = "notices.toml"
#: Statuses of an incident-like notice, then of planned work (Statuspage's words).
INCIDENT_STATUSES = ("investigating", "identified", "monitoring", "resolved")
PLANNED_STATUSES = ("scheduled", "in_progress", "completed")
#: A notice whose latest update has one of these is over: it moves to the history.
CLOSED_STATUSES = ("resolved", "completed")

#: Each status in the words of the page and the messages (Chinese, English).
STATUS_ZH = {
    "investigating": "正在排查",
    "identified": "已查明原因",
    "monitoring": "已处理，观察中",
    "resolved": "已解决",
    "scheduled": "已安排",
    "in_progress": "进行中",
    "completed": "已完成",
}
STATUS_EN = {
    "investigating": "Investigating",
    "identified": "Cause identified",
    "monitoring": "Fixed, monitoring",
    "resolved": "Resolved",
    "scheduled": "Scheduled",
    "in_progress": "In progress",
    "completed": "Completed",
}

Status = Literal[
    "investigating",
    "identified",
    "monitoring",
    "resolved",
    "scheduled",
    "in_progress",
    "completed",
]
_SERVICE_REF = re.compile(r"^[a-z0-9-]+/[a-z0-9-]+$")


#: A notice's title or one update's text at most: citizens read it on a phone, and the page,
#: the feed and the robots' messages carry it whole.
MAX_TEXT = 2000


#: Notices one file may hold, and updates one notice may hold. Like `MAX_TEXT`, what the page,
#: the feeds and the robots' messages carry must stay readable and small: 5,000 notices made
#: `index.html` 1.18 MB and the Statuspage `incidents.json` 5.6 MB. A cutover month needs a
#: few dozen; notices that are over can move to another file when the limit is near.
MAX_NOTICES = 200
MAX_UPDATES = 100
#: Notices the page and the feeds show at most: every active one first, then the latest closed
#: ones (Statuspage's own `incidents.json` lists the latest 50 as well).
SHOWN = 50


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("expected some text, not an empty string")
    if len(value) > MAX_TEXT:
        raise ValueError(f"expected at most {MAX_TEXT:,} characters, got {len(value):,}")
    return value


Text = Annotated[str, AfterValidator(_text)]


def _service_ref(value: str) -> str:
    if not _SERVICE_REF.match(value):
        raise ValueError('expected "channel/service", the two ids from the plan')
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class NoticeUpdate(_Model):
    """One dated step of a notice: what the operators know and do at `at`."""

    at: datetime
    status: Status
    text: Text
    text_en: Text

    @field_validator("at", mode="before")
    @classmethod
    def _local(cls, value: object, info: ValidationInfo) -> object:
        """A naive instant is read in the plan's time zone, as everywhere in the plan."""
        if isinstance(value, date | time) and not isinstance(value, datetime):
            raise ValueError("expected a date and time such as 2022-07-06T13:20:00")
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=(info.context or {}).get("tz") or ZoneInfo("UTC"))
        return value

    @field_validator("at")
    @classmethod
    def _quoted_local(cls, value: datetime, info: ValidationInfo) -> datetime:
        """A quoted instant (`at = "2022-07-06T13:20:00"`) is parsed only after `_local` has
        seen a string: it is read in the plan's zone too, never left naive."""
        if value.tzinfo is None:
            value = value.replace(tzinfo=(info.context or {}).get("tz") or ZoneInfo("UTC"))
        return value

    @property
    def closed(self) -> bool:
        return self.status in CLOSED_STATUSES


class Notice(_Model):
    """A title and its updates, about some services (or the whole cutover)."""

    id: Id
    title: Text
    title_en: Text
    services: tuple[Annotated[str, AfterValidator(_service_ref)], ...] = ()
    incident: Annotated[StrictInt, Field(ge=1)] | None = None
    notify: StrictBool = False
    updates: tuple[NoticeUpdate, ...] = ()

    def shown(self, at: datetime) -> tuple[NoticeUpdate, ...]:
        """The updates posted by `at` (one dated later is not out yet), oldest first."""
        return tuple(u for u in self.updates if u.at <= at)

    def latest(self, at: datetime) -> NoticeUpdate | None:
        shown = self.shown(at)
        return shown[-1] if shown else None

    def active(self, at: datetime) -> bool:
        """Out and not yet resolved or completed: it stands at the top of the page."""
        latest = self.latest(at)
        return latest is not None and not latest.closed

    @property
    def planned(self) -> bool:
        """Planned work (its first update is `scheduled` or `in_progress`), not an incident."""
        return bool(self.updates) and self.updates[0].status in PLANNED_STATUSES

    def service_keys(self) -> list[tuple[str, str]]:
        """(channel id, service id) of each service named."""
        return [(ref.partition("/")[0], ref.partition("/")[2]) for ref in self.services]


def dedup_key(notice: Notice, index: int, update: NoticeUpdate) -> str:
    """The outbox key of one update of a notice sent to the sinks (`notify = true`): stable
    while updates are only ever appended, so a restart never sends an update again."""
    return f"notice-{notice.id}-{index}-{int(update.at.timestamp())}"


class NoticesFile(_Model):
    """Everything in `notices.toml`."""

    notices: tuple[Notice, ...] = ()

    def shown(self, at: datetime) -> tuple[Notice, ...]:
        """Notices with at least one update out by `at`, the latest update first: at most
        `SHOWN`, the active ones before the closed ones, so an old closed notice is what drops
        out and the page and feeds stay small whatever the file holds."""
        out = self.out(at)
        if len(out) > SHOWN:
            by_priority = [n for n in out if n.active(at)] + [n for n in out if not n.active(at)]
            kept = {id(n) for n in by_priority[:SHOWN]}
            out = [n for n in out if id(n) in kept]
        return tuple(out)

    def out(self, at: datetime) -> list[Notice]:
        """Every notice with an update out by `at`, the latest update first (none left out)."""
        out = [n for n in self.notices if n.shown(at)]
        out.sort(key=lambda n: n.latest(at).at, reverse=True)  # type: ignore[union-attr]
        return out

    def not_shown(self, at: datetime) -> int:
        """How many notices that are out by `at` `shown` leaves out (older, closed ones)."""
        return len(self.out(at)) - len(self.shown(at))


EMPTY = NoticesFile()


# --- loading ---------------------------------------------------------------------------------


def default_path(config: str | Path) -> Path:
    """`notices.toml` in the plan's folder."""
    return Path(config).resolve().parent / DEFAULT_NAME


def read(path: Path) -> tuple[str, dict[str, Any]]:
    """The file's text and its parsed TOML (both empty when there is no file yet)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return "", {}
    except OSError as exc:
        raise ConfigError(
            [f"{path}: cannot read the notices file ({exc.strerror or exc})"]
        ) from None
    data = parse_toml(raw, path, "notices file")  # a file that parses is UTF-8 text
    return raw.decode("utf-8"), data


def load_notices(
    path: str | Path, plan: Plan, incidents: Collection[int] | None = None
) -> NoticesFile:
    """Read and validate a notices file; no file means no notices. Raises ConfigError."""
    path = Path(path)
    _, data = read(path)
    return validate_notices(data, str(path), plan, incidents)


def validate_notices(
    data: dict[str, Any],
    filename: str,
    plan: Plan,
    incidents: Collection[int] | None = None,
) -> NoticesFile:
    """Validate parsed TOML against the plan (service ids) and, when `incidents` is given,
    the store (incident ids); every problem at once, as `validate` reports the plan's."""
    problems: list[str] = []
    result: NoticesFile | None = None
    try:
        result = NoticesFile.model_validate(data, context={"tz": plan.zone})
    except ValidationError as exc:
        problems += [_describe(e, data, filename, NoticesFile) for e in exc.errors()]
    problems += _counts(data, filename)
    problems += _cross_references(data, filename, plan, incidents)
    if problems:
        raise ConfigError(problems)
    assert result is not None
    return result


def _counts(data: dict[str, Any], filename: str) -> list[str]:
    """Too many notices in the file, or too many updates in a notice (`MAX_NOTICES`,
    `MAX_UPDATES`): checked here rather than as the model's length limit, whose message would
    quote the start of the list instead of saying how many there are."""
    problems: list[str] = []
    notices = data.get("notices")
    if not isinstance(notices, list):
        return problems
    if len(notices) > MAX_NOTICES:
        problems.append(
            f"{filename}: {key_path(('notices',), data)}: got {len(notices):,} notices: expected "
            f"at most {MAX_NOTICES:,} in one file (move notices that are over to another file)"
        )
    for index, notice in enumerate(notices):
        updates = notice.get("updates") if isinstance(notice, dict) else None
        if isinstance(updates, list) and len(updates) > MAX_UPDATES:
            problems.append(
                f"{filename}: {key_path(('notices', index, 'updates'), data)}: got "
                f"{len(updates):,} updates: expected at most {MAX_UPDATES:,} in one notice "
                "(start a new notice for what follows)"
            )
    return problems


def _cross_references(
    data: dict[str, Any], filename: str, plan: Plan, incidents: Collection[int] | None
) -> list[str]:
    """Unique ids, services that exist in the plan, incidents that exist in the store,
    updates in the order they were posted."""
    problems: list[str] = []
    notices = data.get("notices") if isinstance(data.get("notices"), list) else []
    known = {f"{c}/{s}" for c, s in (ref.key for ref in plan.services)}
    ids = [n.get("id") if isinstance(n, dict) else None for n in notices]
    for index, notice in enumerate(notices):
        if not isinstance(notice, dict):
            continue
        where = ("notices", index)
        ident = ids[index]
        first = ids.index(ident)
        if isinstance(ident, str) and first < index:
            problems.append(
                f"{filename}: {key_path((*where, 'id'), data)}: duplicate notice id "
                f"{_quote(ident)}; it is already used by notices[{first}]"
            )
        services = notice.get("services") if isinstance(notice.get("services"), list) else []
        for si, ref in enumerate(services):
            if isinstance(ref, str) and _SERVICE_REF.match(ref) and ref not in known:
                problems.append(
                    f"{filename}: {key_path((*where, 'services', si), data)}: got {_quote(ref)}: "
                    'expected a service of the plan, as "channel/service" '
                    "(`channel-monitor plan` lists them)"
                )
        incident = notice.get("incident")
        unknown = incidents is not None and isinstance(incident, int) and incident not in incidents
        if unknown and incident >= 1:
            problems.append(
                f"{filename}: {key_path((*where, 'incident'), data)}: got {incident}: "
                "expected the number of an incident in the store"
            )
        updates = notice.get("updates") if isinstance(notice.get("updates"), list) else []
        previous = None
        for ui, update in enumerate(updates):
            at = update.get("at") if isinstance(update, dict) else None
            if not isinstance(at, datetime):
                continue
            stamp = at if at.tzinfo else at.replace(tzinfo=plan.zone)
            if previous is not None and stamp < previous:
                problems.append(
                    f"{filename}: {key_path((*where, 'updates', ui, 'at'), data)}: got "
                    f"{_quote(at)}: expected updates in the order they were posted, "
                    "each at or after the one before"
                )
            previous = stamp
    return problems


# --- writing (notice add / notice update) ----------------------------------------------------


def _toml(value: object) -> str:
    """A TOML value: strings (JSON escapes are TOML basic-string escapes), bools, numbers,
    lists, and local date-times (naive: read in the plan's zone)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} in notices.toml")


def _table(header: str, fields: dict[str, object]) -> str:
    lines = [header] + [f"{k} = {_toml(v)}" for k, v in fields.items() if v is not None]
    return "\n".join(lines) + "\n"


_NOTICE_HEADER = re.compile(r"^\s*\[\[\s*notices\s*\]\]\s*(#.*)?$")


def _with_blank_line(text: str) -> str:
    if not text:
        return ""
    text = text if text.endswith("\n") else text + "\n"
    return text if text.endswith("\n\n") else text + "\n"


def _insert_in_notice(text: str, index: int, block: str) -> str | None:
    """`block` placed at the end of the `index`-th `[[notices]]` table (before the comments
    and blank lines that lead into the next one); None when the text is not laid out as one
    `[[notices]]` header per notice."""
    lines = text.splitlines(keepends=True)
    headers = [i for i, line in enumerate(lines) if _NOTICE_HEADER.match(line)]
    if index >= len(headers):
        return None
    start = headers[index]
    end = headers[index + 1] if index + 1 < len(headers) else len(lines)
    while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].lstrip()[:1] == "#"):
        end -= 1
    head = "".join(lines[:end])
    head = head if head.endswith("\n") else head + "\n"
    tail = "".join(lines[end:])
    return head + "\n" + block + ("\n" + tail.lstrip("\n") if tail.strip() else "")


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename: a reader (the monitor) sees the old file or
    the new one, never half of it; a crash leaves the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if path.exists():
            os.chmod(temporary, path.stat().st_mode & 0o7777)
        else:
            os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _dump(data: dict[str, Any]) -> str:
    """The whole file written anew (only when it is not laid out as `[[notices]]` tables)."""
    out = []
    for notice in data.get("notices", []):
        fields = {k: v for k, v in notice.items() if k != "updates"}
        out.append(_table("[[notices]]", fields))
        for update in notice.get("updates", []):
            out.append(_table("[[notices.updates]]", update))
    return "\n".join(out)


def add_notice(
    path: Path,
    plan: Plan,
    *,
    ident: str,
    title: str,
    title_en: str,
    services: Sequence[str] = (),
    incident: int | None = None,
    notify: bool = False,
    incidents: Collection[int] | None = None,
) -> Notice:
    """Append a new notice (no updates yet: it shows once `add_update` posts one)."""
    text, data = read(path)
    current = validate_notices(data, str(path), plan, incidents)
    if any(n.id == ident for n in current.notices):
        raise ConfigError([f"{path}: a notice with id {_quote(ident)} already exists"])
    fields: dict[str, object] = {"id": ident, "title": title, "title_en": title_en}
    if services:
        fields["services"] = list(services)
    if incident is not None:
        fields["incident"] = incident
    if notify:
        fields["notify"] = True
    new_text = _with_blank_line(text) + _table("[[notices]]", fields)
    checked = _check(new_text, path, plan, incidents)
    write_atomically(path, new_text)
    return next(n for n in checked.notices if n.id == ident)


def add_update(
    path: Path,
    plan: Plan,
    *,
    ident: str,
    status: str,
    text: str,
    text_en: str,
    at: datetime,
    incidents: Collection[int] | None = None,
) -> tuple[Notice, bool]:
    """Append an update to notice `ident`; returns the notice and whether the file's own
    layout (and comments) could be kept."""
    old_text, data = read(path)
    current = validate_notices(data, str(path), plan, incidents)
    index = next((i for i, n in enumerate(current.notices) if n.id == ident), None)
    if index is None:
        known = ", ".join(n.id for n in current.notices) or "none"
        raise ConfigError([f"{path}: no notice with id {_quote(ident)}; expected one of: {known}"])
    local = at.astimezone(plan.zone).replace(tzinfo=None)
    fields = {"at": local, "status": status, "text": text, "text_en": text_en}
    block = _table("[[notices.updates]]", fields)
    new_text = _insert_in_notice(old_text, index, block)
    kept = new_text is not None and _adds_one_update(new_text, data, index)
    if not kept:  # not laid out as we expect: write the data anew (comments are lost)
        notices = [dict(n) for n in data["notices"]]
        notices[index] = {**notices[index], "updates": [*notices[index].get("updates", []), fields]}
        new_text = _dump({"notices": notices})
    assert new_text is not None
    checked = _check(new_text, path, plan, incidents)
    write_atomically(path, new_text)
    return checked.notices[index], kept


def _adds_one_update(text: str, before: dict[str, Any], index: int) -> bool:
    """Whether `text` parses to `before` with one more update on notice `index`."""
    try:
        after = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return False
    old, new = before.get("notices", []), after.get("notices", [])
    if len(old) != len(new):
        return False
    for i, (a, b) in enumerate(zip(old, new, strict=True)):
        if i != index and a != b:
            return False
    a_updates, b_updates = old[index].get("updates", []), new[index].get("updates", [])
    rest_a = {k: v for k, v in old[index].items() if k != "updates"}
    rest_b = {k: v for k, v in new[index].items() if k != "updates"}
    return rest_a == rest_b and b_updates[:-1] == a_updates and len(b_updates) == len(a_updates) + 1


def _check(text: str, path: Path, plan: Plan, incidents: Collection[int] | None) -> NoticesFile:
    """Validate the text about to be written; nothing is written when it has a problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            [f"{path}: the edit would break the file ({exc}); nothing written"]
        ) from None
    return validate_notices(data, str(path), plan, incidents)

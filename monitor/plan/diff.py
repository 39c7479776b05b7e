"""What a changed plan will do before it is applied: `channel-monitor plan diff OLD NEW`.

Pure: two validated plans and a range in, a `PlanDiff` out, no clock and no I/O. The spans in
which a service's expectation differs are exact: both plans are asked for their expectation at
every instant at which one of the service's periods may begin or end (the same candidate
instants `Plan.transitions` works from), so a span starts and ends at the very instant the
plans part and meet again, DST changes and recurring periods included, with no sampling.

Probe settings hold addresses, headers and tokens, so probes, pushes and alert sinks are
compared by field name only; their values never leave this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from pydantic import BaseModel

from monitor.fields import format_duration
from monitor.plan import Expectation, Plan, ServiceRef, period_boundaries
from monitor.plan.schema import Milestone, Period, PlanConfig

UTC = ZoneInfo("UTC")
#: Added on both sides of the instants the plans mention, for the default range.
PADDING = timedelta(days=1)
#: The default range when neither plan names a date (only recurring periods): a year from now.
UNDATED_RANGE = timedelta(days=366)


@dataclass(frozen=True, slots=True)
class Span:
    """`[start, end)` in which one service is expected `before.state` by the old plan and
    `after.state` by the new one (with the rule and period of each that decided it)."""

    start: datetime
    end: datetime
    before: Expectation
    after: Expectation


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One changed field; `before`/`after` are None where the value must not be shown."""

    name: str
    before: object = None
    after: object = None
    #: The value may hold a token (a push): reported by name only, in JSON and tables alike.
    hidden: bool = False


@dataclass(frozen=True, slots=True)
class ItemChange:
    """Something with an identity (a period, a milestone, a probe, a sink) added, removed or
    changed, and which of its fields changed."""

    key: str
    change: str  # added | removed | changed
    fields: tuple[FieldChange, ...] = ()


@dataclass
class PlanDiff:
    """Everything that differs between two plans, expectations within `[start, end)`."""

    start: datetime
    end: datetime
    zone: ZoneInfo
    added: list[ServiceRef] = field(default_factory=list)
    removed: list[ServiceRef] = field(default_factory=list)
    spans: list[tuple[ServiceRef, Span]] = field(default_factory=list)
    periods: list[ItemChange] = field(default_factory=list)
    milestones: list[ItemChange] = field(default_factory=list)
    channels: list[ItemChange] = field(default_factory=list)
    services: list[ItemChange] = field(default_factory=list)
    probes: list[ItemChange] = field(default_factory=list)
    settings: list[FieldChange] = field(default_factory=list)
    alerts: list[ItemChange] = field(default_factory=list)

    @property
    def same_expectations(self) -> bool:
        """Whether both plans expect the same of every service at every instant of the range
        (a service only one plan has is a difference: the other expects nothing of it)."""
        return not (self.added or self.removed or self.spans)


# --- the range -------------------------------------------------------------------------------


def _instant(value: date | datetime, zone: ZoneInfo) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=zone)
    return datetime.combine(value, time(), tzinfo=zone)


def mentioned(config: PlanConfig) -> Iterator[datetime]:
    """Every dated instant a plan names: period bounds, milestone dates."""
    zone = config.monitor.tz
    for period in config.periods.values():
        yield from (b for b in (period.start, period.end) if b is not None)
    for milestone in config.milestones:
        yield from (_instant(v, zone) for v in (milestone.at, milestone.until) if v is not None)


def default_range(old: PlanConfig, new: PlanConfig, now: datetime) -> tuple[datetime, datetime]:
    """From a day before the earliest to a day after the latest instant either plan names;
    a year from `now` when neither names any (recurring periods only)."""
    instants = [*mentioned(old), *mentioned(new)]
    if not instants:
        return now, now + UNDATED_RANGE
    return min(instants) - PADDING, max(instants) + PADDING


# --- expectations ----------------------------------------------------------------------------


def _periods(plan: Plan, ref: ServiceRef) -> list[Period]:
    ids = dict.fromkeys(rule.during for rule in ref.service.expect)
    return [plan.config.periods[i] for i in ids]


def _candidates(plan: Plan, ref: ServiceRef, start: datetime, end: datetime) -> set[datetime]:
    found: set[datetime] = set()
    for period in _periods(plan, ref):
        found.update(period_boundaries(period, start, end, plan.zone))
    return found


def service_spans(
    old: Plan, old_ref: ServiceRef, new: Plan, new_ref: ServiceRef, start: datetime, end: datetime
) -> list[Span]:
    """The spans of `[start, end)` in which the two plans expect different states.

    Between two consecutive candidate instants neither plan's expectation can change, so the
    pair of expectations is constant there; neighbouring pieces with the same pair are merged.
    """
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    cuts = sorted(
        {start} | _candidates(old, old_ref, start, end) | _candidates(new, new_ref, start, end)
    )
    spans: list[Span] = []
    current: Span | None = None
    for index, at in enumerate(cuts):
        until = cuts[index + 1] if index + 1 < len(cuts) else end
        before, after = old.expected(old_ref, at), new.expected(new_ref, at)
        if before.state == after.state:
            current = None
            continue
        if current is not None and (current.before, current.after) == (before, after):
            current = spans[-1] = Span(current.start, until, before, after)
        else:
            current = Span(at, until, before, after)
            spans.append(current)
    return spans


# --- fields ----------------------------------------------------------------------------------


def _field_changes(
    old: BaseModel,
    new: BaseModel,
    skip: Iterable[str] = (),
    show: bool = True,
    hide: Iterable[str] = (),
) -> tuple[FieldChange, ...]:
    """Fields whose values differ; with `show` False only their names are kept, and fields
    named in `hide` (which may hold tokens) are kept by name only whatever `show` says."""
    out = []
    for name in type(old).model_fields:
        if name in skip:
            continue
        a, b = getattr(old, name), getattr(new, name)
        if a == b:
            continue
        if show and name not in hide:
            out.append(FieldChange(name, _plain(a), _plain(b)))
        else:
            out.append(FieldChange(name, hidden=True))
    return tuple(out)


def _plain(value: object) -> object:
    """A field value as JSON can hold it (instants, durations, nested models)."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, BaseModel):
        return {k: _plain(v) for k, v in value.model_dump().items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _keyed_changes(
    old: dict[str, BaseModel], new: dict[str, BaseModel], show: bool = True
) -> list[ItemChange]:
    out = [ItemChange(k, "removed") for k in old if k not in new]
    out += [ItemChange(k, "added") for k in new if k not in old]
    for key in old:
        if key in new:
            fields = _field_changes(old[key], new[key], ("id",), show)
            if fields:
                out.append(ItemChange(key, "changed", fields))
    return out


def _milestones(items: Iterable[Milestone]) -> dict[str, BaseModel]:
    """Milestones have no id: they are matched by title (a repeated title gets `#2`, ...)."""
    out: dict[str, BaseModel] = {}
    for milestone in items:
        key, n = milestone.title, 1
        while key in out:
            n += 1
            key = f"{milestone.title} #{n}"
        out[key] = milestone
    return out


# --- the whole diff --------------------------------------------------------------------------


def diff_plans(old: Plan, new: Plan, start: datetime, end: datetime) -> PlanDiff:
    """Compare two plans: services, expectations in `[start, end)`, and everything else."""
    result = PlanDiff(start, end, new.zone)
    old_refs = {ref.key: ref for ref in old.services}
    new_refs = {ref.key: ref for ref in new.services}
    result.removed = [ref for key, ref in old_refs.items() if key not in new_refs]
    result.added = [ref for key, ref in new_refs.items() if key not in old_refs]
    #: Services planned alike in both plans have the same spans: computed once per pair.
    known: dict[tuple, list[Span]] = {}
    for key, new_ref in new_refs.items():
        old_ref = old_refs.get(key)
        if old_ref is None:
            continue
        alike = (
            old_ref.service.default,
            old_ref.service.expect,
            tuple(_periods(old, old_ref)),
            new_ref.service.default,
            new_ref.service.expect,
            tuple(_periods(new, new_ref)),
        )
        spans = known.get(alike)
        if spans is None:
            spans = known[alike] = service_spans(old, old_ref, new, new_ref, start, end)
        result.spans.extend((new_ref, span) for span in spans)
        fields = _field_changes(old_ref.service, new_ref.service, ("id", "probe"), hide=("push",))
        if fields:
            result.services.append(ItemChange(_key(key), "changed", fields))
        result.probes.extend(_probe_change(_key(key), old_ref, new_ref))
    result.spans.sort(key=lambda item: (item[1].start, item[0].key))
    result.periods = _keyed_changes(old.config.periods, new.config.periods)  # type: ignore[arg-type]
    result.milestones = _keyed_changes(
        _milestones(old.config.milestones), _milestones(new.config.milestones)
    )
    old_channels = {c.id: c for c in old.config.channels}
    new_channels = {c.id: c for c in new.config.channels}
    for cid in old_channels.keys() & new_channels.keys():
        fields = _field_changes(old_channels[cid], new_channels[cid], ("id", "services"))
        if fields:
            result.channels.append(ItemChange(cid, "changed", fields))
    result.channels.sort(key=lambda c: c.key)
    result.settings = list(_field_changes(old.config.monitor, new.config.monitor))
    result.alerts = _keyed_changes(
        {s.name: s for s in old.config.alerts},
        {s.name: s for s in new.config.alerts},
        show=False,  # a sink's URL and secret may hold tokens
    )
    return result


def _key(key: tuple[str, str]) -> str:
    return f"{key[0]}/{key[1]}"


def _probe_change(key: str, old: ServiceRef, new: ServiceRef) -> list[ItemChange]:
    a, b = old.service.probe, new.service.probe
    if a is None and b is None:
        return []
    if a is None:
        return [ItemChange(key, "added")]
    if b is None:
        return [ItemChange(key, "removed")]
    fields = _field_changes(a, b, show=False)
    return [ItemChange(key, "changed", fields)] if fields else []


# --- output ----------------------------------------------------------------------------------


def _iso(value: datetime, zone: ZoneInfo) -> str:
    return value.astimezone(zone).isoformat()


def _expectation(value: Expectation) -> dict:
    return {"state": value.state, "rule": value.rule, "period": value.period}


def _service(ref: ServiceRef) -> dict:
    return {
        "channel": ref.channel.id,
        "channel_name": ref.channel.name,
        "service": ref.service.id,
        "service_name": ref.service.name,
    }


def _item(item: ItemChange, show: bool = True) -> dict:
    out: dict = {"key": item.key, "change": item.change, "fields": [f.name for f in item.fields]}
    if show:
        out["values"] = {
            f.name: {"before": f.before, "after": f.after} for f in item.fields if not f.hidden
        }
    return out


def as_json(result: PlanDiff) -> dict:
    """The `plan diff --format json` document; instants in the new plan's zone."""
    zone = result.zone
    return {
        "from": _iso(result.start, zone),
        "until": _iso(result.end, zone),
        "timezone": zone.key,
        "same_expectations": result.same_expectations,
        "services_added": [_service(ref) for ref in result.added],
        "services_removed": [_service(ref) for ref in result.removed],
        "spans": [
            {
                **_service(ref),
                "start": _iso(span.start, zone),
                "end": _iso(span.end, zone),
                "duration_seconds": (span.end - span.start).total_seconds(),
                "before": _expectation(span.before),
                "after": _expectation(span.after),
            }
            for ref, span in result.spans
        ],
        "periods": [_item(i) for i in result.periods],
        "milestones": [_item(i) for i in result.milestones],
        "channels": [_item(i) for i in result.channels],
        "services": [_item(i) for i in result.services],
        "probes": [_item(i, show=False) for i in result.probes],
        "settings": [
            {"key": f.name, "before": f.before, "after": f.after} for f in result.settings
        ],
        "alerts": [_item(i, show=False) for i in result.alerts],
    }


def _when(value: datetime, zone: ZoneInfo) -> str:
    local = value.astimezone(zone)
    return local.strftime("%Y-%m-%d %H:%M" + (":%S" if local.second else ""))


def _said(value: Expectation) -> str:
    if value.period is None:
        return f"{value.state} (default)"
    return f"{value.state} ({value.period}, rule {value.rule})"


def _short(value: object, width: int = 40) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _values(item: ItemChange) -> str:
    """Changed fields with old and new values, long texts shortened (JSON has them whole)."""
    changes = (
        f.name if f.hidden else f"{f.name}: {_short(f.before)} -> {_short(f.after)}"
        for f in item.fields
    )
    return "; ".join(changes) or "-"


def as_text(result: PlanDiff) -> str:
    """The `plan diff` table for the terminal: one section per kind of change."""
    from monitor.table import render_table

    zone = result.zone
    out = [
        f"plan diff {_when(result.start, zone)} to {_when(result.end, zone)} ({zone.key})",
    ]

    def section(title: str, headers: list[str], rows: list[list[str]]) -> None:
        if rows:
            out.extend(["", title, render_table(headers, rows)])

    names = ["channel", "service"]
    section(
        "服务新增 services added",
        names,
        [[r.channel.name, r.service.name] for r in result.added],
    )
    section(
        "服务删除 services removed",
        names,
        [[r.channel.name, r.service.name] for r in result.removed],
    )
    section(
        "预期不同的时段 spans where the expectation differs",
        [*names, "from", "until", "before (old plan)", "after (new plan)"],
        [
            [
                ref.channel.name,
                ref.service.name,
                _when(span.start, zone),
                _when(span.end, zone),
                _said(span.before),
                _said(span.after),
            ]
            for ref, span in result.spans
        ],
    )
    section(
        "时段 periods",
        ["period", "change", "fields"],
        [[i.key, i.change, _values(i)] for i in result.periods],
    )
    section(
        "关键日期 milestones",
        ["milestone", "change", "fields"],
        [[i.key, i.change, _values(i)] for i in result.milestones],
    )
    section(
        "渠道与服务 channels and services (names, notes, rules)",
        ["channel/service", "fields"],
        [[i.key, ", ".join(f.name for f in i.fields)] for i in result.channels + result.services],
    )
    section(
        "探测配置（只列字段名） probes (field names only)",
        ["service", "change", "fields"],
        [[i.key, i.change, ", ".join(f.name for f in i.fields) or "-"] for i in result.probes],
    )
    section(
        "设置 settings",
        ["key", "before", "after"],
        [[f"monitor.{f.name}", str(f.before), str(f.after)] for f in result.settings],
    )
    section(
        "告警接收端（只列字段名） alert sinks (field names only)",
        ["sink", "change", "fields"],
        [[i.key, i.change, ", ".join(f.name for f in i.fields) or "-"] for i in result.alerts],
    )
    out.append("")
    if result.same_expectations:
        out.append("两份计划在此范围内的预期完全相同。 Both plans expect the same throughout.")
    else:
        services = len({ref.key for ref, _ in result.spans})
        out.append(
            f"预期不同 expectations differ: {len(result.spans)} span(s) in {services} service(s), "
            f"{len(result.added)} service(s) added, {len(result.removed)} removed."
        )
    return "\n".join(out)

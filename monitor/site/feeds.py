"""The machine-readable files beside the page: `status.json` (our schema), the
Statuspage-compatible `api/v2/*.json`, `calendar.ics` and the per-service SVG badges.
(`history.atom` is a template.)

Statuspage's public API (v2) is what status aggregators and many client libraries read, so its
field names are kept exactly: a channel is a group component, each of its services a component;
planned pauses are scheduled maintenances and the paused components `under_maintenance`; open
incidents are incidents. Fields Statuspage has and we do not (tweets, postmortems) are present
with their empty values, so strict clients find every key.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo

from monitor import reasons
from monitor.plan import Plan, ServiceRef, period_active, period_boundaries
from monitor.site.model import Maintenance, Model, ServiceView, milestone_start
from monitor.site.words import WORDS, incident_state
from monitor.store import IncidentRecord

PAGE_ID = "channel-monitor"
SCHEMA_VERSION = 1
#: Component statuses from best to worst (Statuspage's vocabulary).
COMPONENT_STATUSES = (
    "operational",
    "under_maintenance",
    "degraded_performance",
    "partial_outage",
    "major_outage",
)
_INDICATOR_TEXT = {
    "none": "All Systems Operational",
    "maintenance": "Service Under Maintenance",
    "minor": "Minor Service Outage",
    "major": "Partial System Outage",
    "critical": "Major System Outage",
}


#: What XML 1.0 forbids (C0 controls but tab, LF and CR; surrogates; U+FFFE, U+FFFF), and the
#: C1 controls, which HTML forbids in text: none belongs in a name, and one makes a feed or badge
#: unreadable to every strict parser.
_NOT_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


#: Whether a text holds a character `xml_text` drops (a search is cheaper than a rebuild).
has_not_xml = _NOT_XML.search


def xml_text(value: str) -> str:
    """Text with the characters XML 1.0 forbids dropped: every page, feed and badge writes
    its text through this (the templates through their environment's `finalize`)."""
    return _NOT_XML.sub("", value)


def link(model: Model, path: str, relative: str | None = None) -> str:
    """The address of `path` (relative to the site's folder) as the files write it: absolute
    under the plan's `[site] base_url` when it has one, else `relative` (default: `path`)."""
    base = model.plan.config.site.base_url
    if base:
        return base + path
    return path if relative is None else relative


def iso(at: datetime | None, zone: tzinfo) -> str | None:
    """An instant in the plan's zone with its offset, to the millisecond (Statuspage style)."""
    if at is None:
        return None
    return at.astimezone(zone).isoformat(timespec="milliseconds")


def safe_reason(reason: str | None) -> str | None:
    """The probe's reason phrase if it is one of the fixed phrases (its private tail left out),
    else `other`."""
    if not reason:
        return None
    return reasons.public_phrase(reason) or "other"


# --- Statuspage --------------------------------------------------------------------------------


def component_status(view: ServiceView) -> str:
    """The Statuspage status of one service: planned pauses are `under_maintenance` (also when
    a paused service still answers: that is an incident, not a component state); down while it
    should be up is `major_outage`; slow answers are `degraded_performance`. A planned-open
    service nobody observed is `operational` too: Statuspage has no "unknown", and any other
    status would report a fault nobody saw. What was not observed is told by `status.json`
    (`state` = `unobserved`) and by the page status' `description`."""
    if view.expectation.state == "down":
        return "under_maintenance"
    if view.state == "broken":
        return "major_outage"
    seen = view.seen
    if seen is not None and seen.serving and seen.reason.startswith("response slower than"):
        return "degraded_performance"
    return "operational"


def group_status(statuses: list[str]) -> str:
    """A channel's status from its services': all paused is `under_maintenance`; some broken
    is `partial_outage`, all broken (of those not paused) `major_outage`."""
    live = [s for s in statuses if s != "under_maintenance"]
    if not live:
        return "under_maintenance"
    if "major_outage" in live:
        return "major_outage" if all(s == "major_outage" for s in live) else "partial_outage"
    return max(live, key=COMPONENT_STATUSES.index)


def component_id(ref: ServiceRef) -> str:
    return f"{ref.channel.id}.{ref.service.id}"


def published(model: Model) -> datetime | None:
    """When the plan was published (`[monitor] published`, the start of that day in the plan's
    zone); None when the plan does not say. Planned pauses are dated by it, never by a date
    worked out from their start, which nobody published anything on."""
    day = model.plan.config.monitor.published
    if day is None:
        return None
    return datetime.combine(day, datetime.min.time(), model.plan.zone)


def _created(model: Model) -> str | None:
    known = published(model)
    if known is not None:
        return iso(known, model.plan.zone)
    starts = [p.start for p in model.plan.config.periods.values() if p.start is not None]
    return iso(min(starts, default=model.at), model.plan.zone)


def page(model: Model) -> dict:
    config = model.plan.config.monitor
    return {
        "id": PAGE_ID,
        "name": config.title,
        "url": link(model, "", "/"),
        "time_zone": model.plan.zone.key,
        "updated_at": iso(model.at, model.plan.zone),
    }


class Encoded(bytes):
    """JSON already encoded, compact as the files are written (`dumps`), and kept compressed
    (zlib, fastest level) until it is written: the large parts of the Statuspage files (the
    component list, the components a pause names), made once, their dicts dropped as they
    are encoded, and spliced into every file and pause that holds them
    (`render._json_files`). In a list, one `Encoded` may hold several of the array's items,
    comma-separated. At 100,000 services the component list and the pauses as dicts were
    250 MB of the render worker's peak, and as plain bytes still 65 MB; so, about 4 MB."""

    @classmethod
    def of(cls, text: bytes) -> Encoded:
        return cls(zlib.compress(text, 1))

    def text(self) -> bytes:
        """The JSON itself."""
        return zlib.decompress(self)


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def dumps(value: object) -> bytes:
    """`value` as compact JSON in UTF-8, as every JSON file of the site writes it."""
    return _ENCODER.encode(value).encode("utf-8")


@dataclass
class Components:
    """The Statuspage components of a render: the list, encoded, and what the rest of the
    files ask of it."""

    encoded: list[Encoded]  # the list in runs (`_runs`)
    by_id: dict[str, dict]  # the components asked for (of incidents and notices)
    positions: dict[tuple[str, str], int]  # each service's position in the list
    statuses: set[str]  # the statuses of the services
    base: dict  # the fields every component has alike


def components(model: Model, wanted: set[str] = frozenset()) -> Components:  # type: ignore[assignment]
    """Channels as group components, each followed by its services; the components whose
    ids are in `wanted` are also kept as dicts."""
    base = {
        "created_at": _created(model),
        "updated_at": iso(model.at, model.plan.zone),
        "showcase": False,
        "start_date": None,
        "page_id": PAGE_ID,
        "only_show_if_degraded": False,
    }
    made = Components([], {}, {}, set(), base)

    def encoded() -> Iterator[bytes]:
        position = 0
        for channel in model.plan.config.channels:
            views = model.of_channel.get(channel.id, [])
            statuses = [component_status(v) for v in views]
            made.statuses.update(statuses)
            position += 1
            yield dumps(
                {
                    "id": channel.id,
                    "name": channel.name,
                    "status": group_status(statuses),
                    "position": position,
                    "description": channel.note or None,
                    "group_id": None,
                    "group": True,
                    "components": [component_id(v.ref) for v in views],
                    **base,
                }
            )
            for view, status in zip(views, statuses, strict=True):
                position += 1
                made.positions[view.key] = position
                comp = _component(view.ref, status, position, base)
                if comp["id"] in wanted:
                    made.by_id[comp["id"]] = comp
                yield dumps(comp)

    made.encoded = _runs(encoded())  # encoded as they are made: never a dict of each
    return made


def _component(ref: ServiceRef, status: str, position: int, base: dict) -> dict:
    """One service's component."""
    return {
        "id": component_id(ref),
        "name": ref.service.name,
        "status": status,
        "position": position,
        "description": ref.service.note or None,
        "group_id": ref.channel.id,
        "group": False,
        **base,
    }


def status(model: Model, statuses: set[str]) -> dict:
    """The page's indicator from the statuses of its services."""
    if "major_outage" in statuses:
        live = [s for s in statuses if s != "under_maintenance"]
        indicator = "critical" if all(s == "major_outage" for s in live) else "major"
    elif "partial_outage" in statuses or "degraded_performance" in statuses:
        indicator = "minor"
    elif "under_maintenance" in statuses:
        indicator = "maintenance"
    else:
        indicator = "none"
    description = _INDICATOR_TEXT[indicator]
    unobserved = model.tally()["unobserved"]
    if unobserved:  # "operational" of a service nobody saw is the plan's word, not a finding
        description += f" ({unobserved} of {len(model.services)} services not observed)"
    return {"indicator": indicator, "description": description}


def _short(comp: dict) -> dict:
    return {k: comp[k] for k in comp if k != "components"}


def incidents(model: Model, by_id: dict[str, dict], unresolved_only: bool) -> list[dict]:
    zone = model.plan.zone
    out = []
    for record in model.history.incidents:
        if unresolved_only and record.resolved_at is not None:
            continue
        out.append(_incident(model, record, by_id, zone))
    return out


def _incident(model: Model, record: IncidentRecord, by_id: dict[str, dict], zone) -> dict:
    key = f"{record.channel}.{record.business}"
    comp = by_id.get(key)
    down = record.direction == "unexpected_down"
    name = _service_name(model, record)
    # citizens' words, both languages; the probe's reason stays in the operators' section
    word = "incident_down" if down else "incident_up"
    title = f"{name}: {WORDS['zh'][word]} / {WORDS['en'][word]}"
    updates = [
        _update(
            f"{record.id}-opened",
            "investigating",
            title,
            record.id,
            record.opened_at,
            zone,
            comp,
            "major_outage" if down else "under_maintenance",
        )
    ]
    if record.resolved_at is not None:
        updates.insert(
            0,
            _update(
                f"{record.id}-resolved",
                "resolved",
                f"{name}: {incident_state(record, 'zh')} / {incident_state(record, 'en')}",
                record.id,
                record.resolved_at,
                zone,
                comp,
                _status_after(model, record),
            ),
        )
    updated = record.resolved_at or record.opened_at
    return {
        "id": str(record.id),
        "name": title,
        "status": "resolved" if record.resolved_at else "investigating",
        "created_at": iso(record.opened_at, zone),
        "updated_at": iso(updated, zone),
        "monitoring_at": None,
        "resolved_at": iso(record.resolved_at, zone),
        "impact": "major" if down else "minor",
        "shortlink": link(
            model, f"index.html#incident-{record.id}", f"/index.html#incident-{record.id}"
        ),
        "started_at": iso(record.opened_at, zone),
        "page_id": PAGE_ID,
        "incident_updates": updates,
        "components": [_short(comp)] if comp else [],
    }


def _update(uid, state, body, parent, at, zone, comp, new_status) -> dict:
    return {
        "id": uid,
        "status": state,
        "body": body,
        "incident_id": str(parent),
        "created_at": iso(at, zone),
        "updated_at": iso(at, zone),
        "display_at": iso(at, zone),
        "affected_components": (
            [
                {
                    "code": comp["id"],
                    "name": comp["name"],
                    "old_status": "operational",
                    "new_status": new_status,
                }
            ]
            if comp
            else []
        ),
        "deliver_notifications": False,
        "custom_tweet": None,
        "tweet_id": None,
    }


def _status_after(model: Model, record: IncidentRecord) -> str:
    """The component's status once the incident ended: what the plan expects then. An incident
    the plan ended leaves the service in the other state than the one it opened under (the
    freeze over, a portal that kept taking business is `operational`, not paused)."""
    view = model.view((record.channel, record.business))
    if view is None or record.resolved_at is None:
        expected = record.expected
    else:
        expected = model.plan.expected(view.ref, record.resolved_at).state
    return "under_maintenance" if expected == "down" else "operational"


def _service_name(model: Model, record: IncidentRecord) -> str:
    view = model.view((record.channel, record.business))
    if view is None:
        return f"{record.channel} · {record.business}"
    return f"{view.ref.channel.name} · {view.ref.service.name}"


#: How far before and after the render the files list the pauses that recur. Office hours
#: close every night: over the span the page looks at (90 days back, 180 ahead) that is
#: hundreds of pauses, each naming every such service (489 MB of JSON at 10,000 services).
#: One-off pauses (the freeze) are listed over the whole span, announced months ahead.
RECURRING_HORIZON = timedelta(days=7)
#: Pauses listed at most (Statuspage's own `scheduled-maintenances.json` holds its 50 most
#: recent): running ones first, then the next to start, then the last to end.
MAX_PAUSES = 50


def recurs(plan: Plan, item: Maintenance) -> bool:
    """Whether a pause is one of a series: its period recurs, or it is the services' default
    between the openings of a recurring period (a hall's nights and weekends)."""
    if item.period is not None:
        return item.period.recurring
    periods = plan.config.periods
    return any(periods[rule.during].recurring for rule in item.services[0].service.expect)


def listed(model: Model) -> list[Maintenance]:
    """The pauses the Statuspage files and the feed list, in the model's order (see
    `RECURRING_HORIZON` and `MAX_PAUSES`); the page's headline still looks at them all."""
    at = model.at
    keep = []
    for item in model.maintenances:
        if recurs(model.plan, item):
            if item.start > at + RECURRING_HORIZON:
                continue
            if item.end is not None and item.end < at - RECURRING_HORIZON:
                continue
        keep.append(item)
    if len(keep) <= MAX_PAUSES:
        return keep

    def rank(item: Maintenance) -> tuple[int, float]:
        state = item.status(at)
        if state == "in_progress":
            return (0, -item.start.timestamp())
        if state == "scheduled":
            return (1, item.start.timestamp())
        return (2, -item.end.timestamp() if item.end else 0.0)

    chosen = {id(item) for item in sorted(keep, key=rank)[:MAX_PAUSES]}
    return [item for item in keep if id(item) in chosen]


def scheduled(
    model: Model,
    comps: Components,
    states: tuple[str, ...],
    made: dict | None = None,
) -> list[dict]:
    """The listed pauses in `states`; `made` keeps each one's dict for the other files that
    list it (four files list the same pauses: at 10,000 services each names thousands of
    components), and what the pauses of the same services share (`_paused`)."""
    made = {} if made is None else made
    shared = made.setdefault("", {})
    if "listed" not in made:
        made["listed"] = listed(model)
    out = []
    for item in made["listed"]:
        state = item.status(model.at)
        if state not in states:
            continue
        if item.id not in made:
            found = shared.get(id(item.services))
            if found is None:  # the tuple is held in `found`, so its id is not reused
                found = shared[id(item.services)] = (item.services, *_paused(model, item, comps))
            made[item.id] = _maintenance(model, item, state, *found[1:])
        out.append(made[item.id])
    return out


def _paused(
    model: Model, item: Maintenance, comps: Components
) -> tuple[str, list[Encoded], list[Encoded]]:
    """What every pause of the same services says alike, made once for all of them: the
    services' names, their components and the components' change, encoded (a hall's nightly
    closures name the same services night after night, a quarter of them at 100,000)."""
    names = "、".join(dict.fromkeys(ref.service.name for ref in item.services))
    views, positions, base = model.by_key, comps.positions, comps.base
    listed = _runs(
        dumps(_component(ref, component_status(views[ref.key]), positions[ref.key], base))
        for ref in item.services
    )
    affected = _runs(
        dumps(
            {
                "code": component_id(ref),
                "name": ref.service.name,
                "old_status": "operational",
                "new_status": "under_maintenance",
            }
        )
        for ref in item.services
    )
    return names, listed, affected


#: The size of a run of encoded items (`_runs`): small enough not to be copied whole, large
#: enough that a file of them is written in few pieces.
RUN_BYTES = 1 << 16


def _runs(items: Iterable[bytes]) -> list[Encoded]:
    """Encoded items of an array joined into runs of about `RUN_BYTES`, comma-separated (see
    `Encoded`): the array is made without ever being held twice."""
    out: list[Encoded] = []
    pending: list[bytes] = []
    size = 0
    for item in items:
        pending.append(item)
        size += len(item) + 1
        if size >= RUN_BYTES:
            out.append(Encoded.of(b",".join(pending)))
            pending, size = [], 0
    if pending:
        out.append(Encoded.of(b",".join(pending)))
    return out


def _maintenance(
    model: Model,
    item: Maintenance,
    state: str,
    names: str,
    listed: list[Encoded],
    affected: list[Encoded],
) -> dict:
    zone, at = model.plan.zone, model.at
    period = item.period
    title = (period.title or period.id) if period else "按计划暂停"
    title_en = (period.title_en or period.id) if period else "Planned pause"
    body = f"{title}：{names}。 / {title_en}: {len(item.services)} service(s) paused as planned."
    update = _update(
        f"{item.id}-{state}",
        state,
        body,
        item.id,
        item.start,
        zone,
        None,
        "under_maintenance",
    )
    update["affected_components"] = affected
    return {
        "id": item.id,
        "name": title,
        "status": state,
        # Statuspage always gives `created_at` (clients read it as a string, never null): the
        # plan's published day when it has one, else the pause's own start, a date of the plan
        "created_at": iso(published(model) or item.start, zone),
        "updated_at": iso(item.changed(at), zone),
        "monitoring_at": None,
        "resolved_at": iso(item.end, zone) if state == "completed" else None,
        "impact": "maintenance",
        "shortlink": link(model, "index.html", "/index.html"),
        "started_at": iso(item.start, zone),
        "page_id": PAGE_ID,
        "incident_updates": [update],
        "components": listed,
        "scheduled_for": iso(item.start, zone),
        "scheduled_until": iso(item.end, zone),
    }


def asked(model: Model) -> set[str]:
    """The ids of the components the incidents and the notices name (the Statuspage files
    repeat them there)."""
    keys = {(r.channel, r.business) for r in model.history.incidents}
    keys.update(key for notice in model.notices for key in notice.service_keys())
    return {f"{channel}.{service}" for channel, service in keys}


def statuspage(model: Model, comps: Components) -> dict[str, dict]:
    """The Statuspage v2 files, by path under `api/v2/`, of the components `comps` (made by
    `components(model, asked(model))`)."""
    head = {"page": page(model)}
    state = status(model, comps.statuses)
    by_id = comps.by_id
    unresolved = incidents(model, by_id, unresolved_only=True)
    made: dict = {}
    return {
        "summary.json": {
            **head,
            "components": comps.encoded,
            "incidents": unresolved,
            "scheduled_maintenances": scheduled(model, comps, ("scheduled", "in_progress"), made),
            "status": state,
        },
        "status.json": {**head, "status": state},
        "components.json": {**head, "components": comps.encoded},
        "incidents.json": {**head, "incidents": incidents(model, by_id, unresolved_only=False)},
        "incidents/unresolved.json": {**head, "incidents": unresolved},
        "scheduled-maintenances.json": {
            **head,
            "scheduled_maintenances": scheduled(
                model, comps, ("scheduled", "in_progress", "completed"), made
            ),
        },
        "scheduled-maintenances/upcoming.json": {
            **head,
            "scheduled_maintenances": scheduled(model, comps, ("scheduled",), made),
        },
        "scheduled-maintenances/active.json": {
            **head,
            "scheduled_maintenances": scheduled(model, comps, ("in_progress",), made),
        },
    }


# --- status.json (our own schema) -------------------------------------------------------------


def own_status(model: Model, headline: dict[str, str]) -> dict:
    """Plan, expectations, verdicts and incidents; names from the plan, never a probe. Its
    `services` are an iterator, made one at a time while the file is written (100,000 of them
    as dicts were 150 MB): encode it with `render._json_stream`."""
    zone = model.plan.zone
    config = model.plan.config
    return {
        "schema": SCHEMA_VERSION,
        "generator": "channel-monitor",
        "at": iso(model.at, zone),
        "timezone": zone.key,
        "title": config.monitor.title,
        "title_en": config.monitor.title_en,
        "headline": headline,
        "counts": model.tally(),
        "next_change": iso(model.change.at, zone) if model.change else None,
        "periods": [
            {
                "id": p.id,
                "title": p.title,
                "title_en": p.title_en,
                "start": iso(p.start, zone),
                "end": iso(p.end, zone),
                "recurring": p.recurring,
            }
            for p in config.periods.values()
        ],
        "milestones": [
            {
                "at": _day_or_instant(m.at, zone),
                "until": _day_or_instant(m.until, zone),
                "title": m.title,
                "title_en": m.title_en,
                "detail": m.detail,
                "detail_en": m.detail_en,
            }
            for m in config.milestones
        ],
        "services": (
            {
                "channel": v.ref.channel.id,
                "channel_name": v.ref.channel.name,
                "channel_name_en": v.ref.channel.name_en,
                "group": v.ref.channel.group,
                "service": v.ref.service.id,
                "service_name": v.ref.service.name,
                "service_name_en": v.ref.service.name_en,
                "expected": v.expectation.state,
                "period": v.expectation.period,
                "next_change": iso(v.next_change, zone),
                "probed": v.probed,
                "verdict": v.verdict.value,
                "state": v.state,
                "status": component_status(v),
                "observed": (
                    None
                    if v.seen is None
                    else {
                        "at": iso(v.seen.at, zone),
                        "serving": v.seen.serving,
                        "reason": safe_reason(v.seen.reason),
                    }
                ),
            }
            for v in model.services
        ),
        "incidents": [
            {
                "id": r.id,
                "channel": r.channel,
                "service": r.business,
                "direction": r.direction,
                "opened_at": iso(r.opened_at, zone),
                "resolved_at": iso(r.resolved_at, zone),
                "reason": safe_reason(r.reason),
                "expected": r.expected,
                "period": r.period,
            }
            for r in model.history.incidents
        ],
    }


def _day_or_instant(value: date | datetime | None, zone) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return iso(value, zone)
    return value.isoformat()


# --- calendar.ics ------------------------------------------------------------------------------

#: Occurrences of a recurring period written at most (the calendar stays small).
MAX_OCCURRENCES = 200


def _ics_text(value: str) -> str:
    # RFC 5545 TEXT allows no control characters either.
    return (
        xml_text(value)
        .replace("\\", "\\\\")
        .replace(";", "\\;")
        .replace(",", "\\,")
        .replace("\r\n", "\\n")
        .replace("\n", "\\n")
        .replace("\r", "\\n")
    )


def _fold(line: str) -> str:
    """Fold a content line at 75 octets without splitting a UTF-8 character (RFC 5545 3.1)."""
    out, current, size = [], "", 0
    for char in line:
        width = len(char.encode("utf-8"))
        if size + width > 75:
            out.append(current)
            current, size = " ", 1
        current += char
        size += width
    out.append(current)
    return "\r\n".join(out)


def _offset_text(offset: timedelta) -> str:
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    hours, rest = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}{rest:02d}"


def vtimezone(zone, start: datetime, end: datetime) -> list[str]:
    """A VTIMEZONE for `zone` covering `[start, end)`: its offset changes in that span as
    explicit STANDARD / DAYLIGHT observances (no RRULE, so it is exact for any zone)."""
    utc_start = start.astimezone(UTC)
    first = utc_start.astimezone(zone)
    lines = ["BEGIN:VTIMEZONE", f"TZID:{zone.key}"]
    observances = [(utc_start, first.utcoffset(), first.utcoffset(), first)]
    at = utc_start
    stop = end.astimezone(UTC)
    previous = first.utcoffset()
    while at < stop:
        following = at + timedelta(days=1)
        offset = following.astimezone(zone).utcoffset()
        if offset != previous:
            lo, hi = at, following
            while hi - lo > timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                lo, hi = (mid, hi) if mid.astimezone(zone).utcoffset() == previous else (lo, mid)
            hi = hi.replace(microsecond=0)
            observances.append((hi, previous, offset, hi.astimezone(zone)))
            previous = offset
        at = following
    for _, before, after, local in observances:
        kind = "DAYLIGHT" if local.dst() else "STANDARD"
        # DTSTART of an observance is the local time *before* the change (RFC 5545 3.6.5).
        start_local = (local.replace(tzinfo=None) - (after - before)).strftime("%Y%m%dT%H%M%S")
        lines += [
            f"BEGIN:{kind}",
            f"DTSTART:{start_local}",
            f"TZOFFSETFROM:{_offset_text(before)}",
            f"TZOFFSETTO:{_offset_text(after)}",
            f"TZNAME:{local.tzname()}",
            f"END:{kind}",
        ]
    lines.append("END:VTIMEZONE")
    return lines


def _local(at: datetime, zone) -> str:
    return at.astimezone(zone).strftime("%Y%m%dT%H%M%S")


def _uid(*parts: object) -> str:
    digest = hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:16]
    return f"{digest}@channel-monitor"


def period_occurrences(plan: Plan, period, lo: datetime, hi: datetime) -> list[tuple]:
    """The active spans of a period inside `[lo, hi)` (an absolute one gives its own span)."""
    if not period.recurring:
        return [(period.start, period.end)] if period.start or period.end else []
    spans: list[tuple] = []
    bounds = [lo, *period_boundaries(period, lo, hi, plan.zone), hi]
    start = None
    for at in sorted(set(bounds)):
        active = at < hi and period_active(period, at, plan.zone)
        if active and start is None:
            start = at
        elif not active and start is not None:
            spans.append((start, at))
            start = None
            if len(spans) >= MAX_OCCURRENCES:
                break
    return spans


def calendar(model: Model) -> str:
    """Every planned period and milestone, as iCalendar text (RFC 5545) in the plan's zone."""
    plan, zone = model.plan, model.plan.zone
    lo, hi = model.at - timedelta(days=400), model.at + timedelta(days=400)
    stamp = model.at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = plan.config.site.base_url
    # Only with a base address: an iCalendar URI must be absolute (RFC 5545 3.3.13).
    url = [f"URL;VALUE=URI:{base}index.html"] if base else []
    events: list[list[str]] = []
    instants: list[datetime] = [model.at]
    for period in plan.config.periods.values():
        for start, end in period_occurrences(plan, period, lo, hi):
            if start is None or end is None:
                continue  # an open-ended period has no calendar span
            instants += [start, end]
            title = period.title or period.id
            if period.title_en:
                title += f" / {period.title_en}"
            events.append(
                [
                    f"UID:{_uid('period', period.id, start.isoformat())}",
                    f"DTSTAMP:{stamp}",
                    f"DTSTART;TZID={zone.key}:{_local(start, zone)}",
                    f"DTEND;TZID={zone.key}:{_local(end, zone)}",
                    f"SUMMARY:{_ics_text(title)}",
                    "CATEGORIES:PERIOD",
                    "TRANSP:TRANSPARENT",
                    *url,
                ]
            )
    for index, ms in enumerate(plan.config.milestones):
        title = ms.title + (f" / {ms.title_en}" if ms.title_en else "")
        lines = [f"UID:{_uid('milestone', index, ms.at, ms.title)}", f"DTSTAMP:{stamp}"]
        if isinstance(ms.at, datetime):
            instants.append(ms.at)
            lines.append(f"DTSTART;TZID={zone.key}:{_local(ms.at, zone)}")
            if isinstance(ms.until, datetime):
                lines.append(f"DTEND;TZID={zone.key}:{_local(ms.until, zone)}")
            elif ms.until is not None:
                end = datetime.combine(ms.until + timedelta(days=1), datetime.min.time(), zone)
                lines.append(f"DTEND;TZID={zone.key}:{_local(end, zone)}")
        else:
            instants.append(milestone_start(ms, plan))
            until = ms.until if ms.until is not None else ms.at
            if isinstance(until, datetime):
                until = until.astimezone(zone).date()
            lines.append(f"DTSTART;VALUE=DATE:{ms.at:%Y%m%d}")
            lines.append(f"DTEND;VALUE=DATE:{until + timedelta(days=1):%Y%m%d}")
        lines.append(f"SUMMARY:{_ics_text(title)}")
        detail = "\n".join(d for d in (ms.detail, ms.detail_en) if d)
        if detail:
            lines.append(f"DESCRIPTION:{_ics_text(detail)}")
        lines += ["CATEGORIES:MILESTONE", "TRANSP:TRANSPARENT", *url]
        events.append(lines)
    out = [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        "PRODID:-//channel-monitor//status page//ZH",
        "CALSCALE:GREGORIAN",
        "METHOD:PUBLISH",
        f"X-WR-CALNAME:{_ics_text(plan.config.monitor.title)}",
        f"X-WR-TIMEZONE:{zone.key}",
        *([f"SOURCE;VALUE=URI:{base}calendar.ics", *url] if base else []),
        *vtimezone(zone, min(instants) - timedelta(days=1), max(instants) + timedelta(days=1)),
    ]
    for lines in events:
        out += ["BEGIN:VEVENT", *lines, "END:VEVENT"]
    out.append("END:VCALENDAR")
    return "".join(_fold(line) + "\r\n" for line in out)


# --- badges ------------------------------------------------------------------------------------

BADGE_COLOURS = {
    "open": "#1a7f37",
    "unobserved": "#0969da",
    "any": "#9a6700",
    "closed": "#57606a",
    "broken": "#cf222e",
    "leak": "#57606a",  # citizens are told what the plan says: paused
}


def text_width(text: str) -> float:
    """Approximate width in pixels at 11 px: CJK characters are square, Latin ones narrow."""
    return sum(11.0 if ord(c) > 0x2E80 else 6.6 for c in text) + 10


def badge(view: ServiceView) -> dict:
    """What the badge template needs: label, message, colour and widths."""
    state = view.state
    message = WORDS["zh"][f"state_{'closed' if state == 'leak' else state}"]
    label = view.ref.service.name
    left, right = text_width(label), text_width(message)
    return {
        "label": label,
        "message": message,
        "title": f"{view.ref.channel.name} · {label}: {message}",
        "colour": BADGE_COLOURS[state],
        "left": round(left, 1),
        "right": round(right, 1),
        "width": round(left + right, 1),
    }

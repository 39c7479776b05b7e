"""Operators' notices in the site's files: Statuspage incidents and Atom entries.

A notice is published beside the monitor's own incidents, never mixed with them: in the
Statuspage files it is an incident whose id starts with `notice-` (its updates newest first,
as Statuspage lists them, with the components it names), in `history.atom` one entry per
notice whose `updated` is its latest update. The page itself formats them in its template.
"""

from __future__ import annotations

from collections.abc import Callable

from monitor.notices import Notice
from monitor.plan import ServiceRef
from monitor.site.feeds import _short, _update, iso
from monitor.site.model import Model
from monitor.site.words import WORDS


def refs(model: Model, notice: Notice) -> list[ServiceRef]:
    """The plan's services a notice names (validation made sure they exist)."""
    found = (model.view(key) for key in notice.service_keys())
    return [view.ref for view in found if view is not None]


def statuspage_incident(model: Model, notice: Notice, by_id: dict[str, dict]) -> dict:
    """One notice as a Statuspage incident (planned work has the impact `maintenance`)."""
    zone = model.plan.zone
    shown = notice.shown(model.at)
    comps = [by_id[key] for key in (f"{c}.{s}" for c, s in notice.service_keys()) if key in by_id]
    affected = [
        {"code": c["id"], "name": c["name"], "old_status": c["status"], "new_status": c["status"]}
        for c in comps
    ]
    updates = []
    for index, update in reversed(list(enumerate(shown))):
        item = _update(
            f"notice-{notice.id}-{index}",
            update.status,
            f"{update.text} / {update.text_en}",
            f"notice-{notice.id}",
            update.at,
            zone,
            None,
            "",
        )
        item["affected_components"] = affected
        updates.append(item)
    latest = shown[-1]
    monitoring = next((u.at for u in shown if u.status == "monitoring"), None)
    return {
        "id": f"notice-{notice.id}",
        "name": f"{notice.title} / {notice.title_en}",
        "status": latest.status,
        "created_at": iso(shown[0].at, zone),
        "updated_at": iso(latest.at, zone),
        "monitoring_at": iso(monitoring, zone),
        "resolved_at": iso(latest.at, zone) if latest.closed else None,
        "impact": "maintenance" if notice.planned else "minor",
        "shortlink": f"/index.html#notice-{notice.id}",
        "started_at": iso(shown[0].at, zone),
        "page_id": "channel-monitor",
        "incident_updates": updates,
        "components": [_short(c) for c in comps],
    }


def add_to_statuspage(
    files: dict[str, dict], model: Model, by_id: dict[str, dict]
) -> dict[str, dict]:
    """The Statuspage files (`feeds.statuspage`) with the notices added: every notice in
    `incidents.json`, the active ones in `incidents/unresolved.json` and `summary.json`
    (`by_id`: the components they name, `feeds.asked`)."""
    if not model.notices:
        return files
    every = [statuspage_incident(model, n, by_id) for n in model.notices]
    active = [i for n, i in zip(model.notices, every, strict=True) if n.active(model.at)]
    files["incidents.json"]["incidents"] = every + files["incidents.json"]["incidents"]
    for name in ("incidents/unresolved.json", "summary.json"):
        files[name]["incidents"] = active + files[name]["incidents"]
    return files


def atom_entries(model: Model, make_id: Callable[..., str]) -> list[dict]:
    """One Atom entry per notice: its latest update first, both languages."""
    zone = model.plan.zone
    words = WORDS["zh"]
    entries = []
    for notice in model.notices:
        shown = notice.shown(model.at)
        latest = shown[-1]
        lines = [
            f"{words['notice_' + u.status]} {u.at.astimezone(zone):%Y-%m-%d %H:%M}："
            f"{u.text} / {u.text_en}"
            for u in reversed(shown)
        ]
        entries.append(
            {
                "title": f"{notice.title}（{words['notice_' + latest.status]}）",
                "id": make_id("notice", notice.id),
                "published": iso(shown[0].at, zone),
                "updated": iso(latest.at, zone),
                "category": "notice",
                "content": "\n".join(lines),
            }
        )
    return entries

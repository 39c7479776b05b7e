"""Render the public page and its files from the plan and the store, and publish them at once.

`render(plan, site, at, store=...)` is the whole job: read the history, work out the model,
format `index.html` (zh-CN), `en/index.html`, `status.json`, the Statuspage files,
`history.atom`, `calendar.ics` and the badges, and swap them in atomically (`publish`).
Templates are Jinja2 with autoescape on, so every name from the plan is text, never markup.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape

from monitor.notice import NoticesFile
from monitor.plan import Plan
from monitor.site import feeds, history
from monitor.site import notices as site_notices
from monitor.site.model import Model, Snapshot, build, snapshot_from_store
from monitor.site.publish import publish
from monitor.site.words import WORDS, Lang, pick
from monitor.store import Store

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
#: Incidents listed on the page (all of the window are in status.json and history.atom).
PAGE_INCIDENTS = 20
#: Headline icon per phase.
_PHASE_STATE = {
    "down": "closed",
    "down_open": "closed",
    "upcoming": "open",
    "upcoming_open": "open",
    "ok": "open",
    "past": "open",
}


def _finalize(value: object) -> object:
    """Every value a template writes, with the characters XML 1.0 forbids dropped (a name
    holding `\\v` would otherwise make the feed and the badges ill-formed)."""
    if isinstance(value, str) and feeds.has_not_xml(value):  # rare: search, then rebuild
        text = feeds.xml_text(value)
        return Markup(text) if isinstance(value, Markup) else text
    return value


def environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=StrictUndefined,
        finalize=_finalize,
    )


_ENV = environment()


@dataclass(frozen=True)
class Rendered:
    """What a render wrote."""

    folder: Path
    files: dict[str, int]  # relative path -> size in bytes
    seconds: float


def _title(period, lang: Lang) -> str:
    if period is None:
        return lang.w["state_closed"]
    return lang.pick(period.title, period.title_en) or period.id


def known(model: Model, lang: Lang) -> Markup | None:
    """How many services are planned open and seen working, planned open but not observed,
    and paused as planned (the parts that are not zero), so the headline never claims more
    than monitoring saw."""
    k = model.headline.known
    if k is None:
        return None
    counts = (("known_working", k.working), ("known_unobserved", k.unobserved))
    counts += (("known_paused", k.paused),)
    parts = [lang.fmt(key, n=n) for key, n in counts if n]
    if not parts:
        return None
    parts_text = escape(lang.w["known_sep"]).join(parts)
    return lang.fmt("known", total=len(model.services), parts=parts_text)


def headline(model: Model, lang: Lang) -> list[Markup]:
    """The sentences at the top of the page, in one language: the main pause, the other
    pauses running beside it, broken services, and what was seen."""
    h = model.headline
    title = _title(h.period, lang)
    quiet = not h.others and not h.broken
    seen = h.known is not None and h.known.all_seen
    out: list[Markup] = []
    if h.kind == "down":
        out.append(lang.fmt("headline_down", title=title, at=lang.when(h.end, True, True)))
    elif h.kind == "down_open":
        out.append(lang.fmt("headline_down_open", title=title))
    elif h.kind in ("upcoming", "upcoming_open"):
        start = lang.when(h.start, True, countdown=True)
        end = lang.when(h.end, True) if h.end else ""
        text = lang.fmt(f"headline_{h.kind}", title=title, start=start, end=end)
        lead = "headline_all_ok" if seen else "headline_ok_plan"
        out.append(lang.fmt(lead) + text if quiet else text)
    elif h.kind == "past":
        out.append(lang.fmt("headline_past", title=title, end=lang.when(h.end, True)))
    elif quiet:
        out.append(lang.fmt("headline_ok" if seen else "headline_ok_plan"))
    for other in h.others:
        key = "headline_other" if other.end else "headline_other_open"
        end = lang.when(other.end, True) if other.end else ""
        n = len(other.services)
        out.append(lang.fmt(key, n=n, title=_title(other.period, lang), end=end))
    if h.broken:
        icon = Markup(
            '<svg class="i" aria-hidden="true" focusable="false"><use href="#i-broken"/></svg> '
        )
        out.append(icon + lang.fmt("headline_broken", n=h.broken))
    sentence = known(model, lang)
    if sentence is not None:
        out.append(sentence)
    return out


def headline_state(model: Model) -> str:
    """The headline's icon: a phase with nothing paused shows `open` (a tick) only when every
    planned-open service was seen working, else `unobserved`."""
    h = model.headline
    if h.kind == "ok" and h.broken:
        return "broken"
    state = _PHASE_STATE[h.kind]
    if state == "open" and not (h.known is not None and h.known.all_seen):
        return "unobserved"
    return state


def same_bars(bars: list[history.Bar], lang: Lang) -> list[tuple[str, history.Bar]]:
    """The bars of one channel with identical days merged into one row that names every
    service it stands for (most services of a channel share the plan and a clean record)."""
    rows: dict[tuple, list[history.Bar]] = {}
    for bar in bars:
        rows.setdefault(bar.runs, []).append(bar)
    return [
        (
            lang.w["sep"].join(lang.pick(b.ref.service.name, b.ref.service.name_en) for b in group),
            group[0],
        )
        for group in rows.values()
    ]


def _compact(html: str) -> str:
    """Drop indentation and blank lines (the page has no `<pre>`)."""
    return re.sub(r"\n\s*\n+", "\n", re.sub(r"\n[ \t]+", "\n", html))


def page(model: Model, code: str) -> str:
    """`index.html` (zh) or `en/index.html` (en)."""
    lang = Lang(code, model.plan.zone, model.at)
    bars = list(model.history.bars)
    by_channel = [(c, list(b)) for c, b in groupby(bars, key=lambda b: b.ref.channel.id)]
    config = model.plan.config.monitor
    sentences = headline(model, lang)
    html = _ENV.get_template("index.html").render(
        m=model,
        L=lang,
        w=lang.w,
        root="" if code == "zh" else "../",
        # Search engines want the language alternates absolute; without a base, relative.
        alternates=feeds.link(model, "", "" if code == "zh" else "../"),
        other_href="en/index.html" if code == "zh" else "../index.html",
        title=pick(config.title, config.title_en, code),
        headline=sentences,
        headline_text=" ".join(t.striptags() for t in sentences),
        headline_state=headline_state(model),
        kinds=history.KINDS,
        days=(model.history.last_day - model.history.first_day).days + 1,
        bars_by_channel=by_channel,
        same_bars=lambda bars: same_bars(bars, lang),
        incidents=model.history.incidents[:PAGE_INCIDENTS],
        more_incidents=len(model.history.incidents) > PAGE_INCIDENTS,
        refs={v.key: v.ref for v in model.services},
        channel_notes=[c for c in model.plan.config.channels if c.note],
        notices_active=[n for n in model.notices if n.active(model.at)],
        notices_past=[n for n in model.notices if not n.active(model.at)],
        notice_refs=lambda notice: site_notices.refs(model, notice),
    )
    return _compact(html)


#: A planned pause's state in the feed's titles, so a reader sees the change that dated it.
_PAUSE_STATE = {"scheduled": "已安排", "in_progress": "进行中", "completed": "已结束"}


def atom(model: Model) -> str:
    zone = model.plan.zone
    entries = []
    for record in model.history.incidents:
        view = model.view((record.channel, record.business))
        name = (
            f"{view.ref.channel.name} · {view.ref.service.name}"
            if view
            else f"{record.channel} · {record.business}"
        )
        down = record.direction == "unexpected_down"
        what = WORDS["zh"]["incident_down" if down else "incident_up"]
        reason = WORDS["zh"]["reason"] + "：" + (Lang("zh", zone, model.at).reason(record.reason))
        state = "已恢复" if record.resolved_at else "仍在持续"
        entries.append(
            {
                "title": f"{name}：{what}（{state}）",
                "id": _urn("incident", record.id, record.opened_at.timestamp()),
                "published": feeds.iso(record.opened_at, zone),
                "updated": feeds.iso(record.resolved_at or record.opened_at, zone),
                "category": "incident",
                "content": f"{name}：{what}。{reason}。",
            }
        )
    for item in model.maintenances:
        period = item.period
        title = (period.title or period.id) if period else WORDS["zh"]["state_closed"]
        names = "、".join(dict.fromkeys(ref.service.name for ref in item.services))
        lang = Lang("zh", zone, model.at)
        end = lang.when_text(item.end, True) if item.end else "待定"
        state = _PAUSE_STATE[item.status(model.at)]
        entries.append(
            {
                "title": f"{title}：{lang.when_text(item.start, True)} – {end}（{state}）",
                "id": _urn("maintenance", item.id),
                "published": feeds.iso(item.announced, zone),
                "updated": feeds.iso(item.changed(model.at), zone),
                "category": "planned",
                "content": f"按计划暂停：{names}（共 {len(item.services)} 项）。",
            }
        )
    entries += site_notices.atom_entries(model, _urn)
    entries.sort(key=lambda e: e["updated"], reverse=True)
    config = model.plan.config.monitor
    return _ENV.get_template("history.atom").render(
        title=config.title,
        subtitle=WORDS["zh"]["incidents"],
        feed_id=_urn("feed", config.title),
        updated=feeds.iso(model.at, zone),
        home=feeds.link(model, "index.html"),
        self_href=feeds.link(model, "history.atom"),
        entries=entries,
    )


def _urn(*parts: object) -> str:
    name = "channel-monitor/" + "/".join(map(str, parts))
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, name)}"


def _json(data: object) -> bytes:
    return (json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def files(model: Model) -> dict[str, bytes]:
    """Every file of the site, by relative path."""
    out: dict[str, bytes] = {}
    for name in ("style.css", "countdown.js"):
        out[name] = (STATIC / name).read_bytes()
    zh_lang = Lang("zh", model.plan.zone, model.at)
    en_lang = Lang("en", model.plan.zone, model.at)
    heads = {
        lang.code: " ".join(t.striptags() for t in headline(model, lang))
        for lang in (zh_lang, en_lang)
    }
    out["status.json"] = _json(feeds.own_status(model, heads))
    for name, data in site_notices.add_to_statuspage(feeds.statuspage(model), model).items():
        out[f"api/v2/{name}"] = _json(data)
    out["history.atom"] = atom(model).encode("utf-8")
    out["calendar.ics"] = feeds.calendar(model).encode("utf-8")
    badge = _ENV.get_template("badge.svg")
    for view in model.services:
        path = f"badges/{view.ref.channel.id}/{view.ref.service.id}.svg"
        out[path] = badge.render(b=feeds.badge(view)).encode("utf-8")
    out["en/index.html"] = page(model, "en").encode("utf-8")
    out["index.html"] = page(model, "zh").encode("utf-8")
    return out


def render(
    plan: Plan,
    site: Path,
    at: datetime,
    store: Store | None = None,
    snapshot: Snapshot | None = None,
    durable: bool = False,
    notices: NoticesFile | None = None,
) -> Rendered:
    """Render the site as of `at` and publish it at `site`.

    `store` gives the history (None: no history yet); `snapshot` the verdicts of a running
    pipeline (None: worked out from the store as of `at`). `durable` also fsyncs every file
    before the swap, so not even a power cut can leave `site` holding unwritten files;
    the daemon leaves it off (it renders often, and renders again when it starts).
    """
    started = time.perf_counter()
    if at.tzinfo is None:
        raise ValueError("render needs a timezone-aware instant")
    past = history.load(plan, store, at)
    if snapshot is None:
        snapshot = snapshot_from_store(plan, store, at)
    model = build(plan, at, snapshot, past, notices)
    content = files(model)
    folder = publish(content, Path(site), durable=durable)
    return Rendered(folder, {k: len(v) for k, v in content.items()}, time.perf_counter() - started)


def open_store(db: Path | None) -> Store | None:
    """The store at `db`, read-only; None when there is none yet (no history, not an error).
    Raises sqlite3.DatabaseError when the file is not a store."""
    if db is None or not Path(db).exists():
        return None
    store = Store(db, readonly=True)
    try:
        store.db.execute("SELECT 1 FROM rollups LIMIT 1").fetchall()
        store.db.execute("SELECT 1 FROM incidents LIMIT 1").fetchall()
    except sqlite3.DatabaseError:
        store.db.close()
        raise
    return store


def render_from(
    plan: Plan, site: Path, at: datetime, db: Path | None, notices: NoticesFile | None = None
) -> Rendered:
    """`channel-monitor render`: the plan and the store file at `db` (if it exists)."""
    store = open_store(db)
    try:
        return render(plan, site, at, store, durable=True, notices=notices)
    finally:
        if store is not None:
            store.db.close()

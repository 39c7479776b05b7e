"""Render the public page and its files from the plan and the store, and publish them at once.

`render(plan, site, at, store=...)` is the whole job: read the history, work out the model,
format `index.html` (zh-CN), `en/index.html`, `status.json`, the Statuspage files,
`history.atom`, `calendar.ics` and the badges, and swap them in atomically (`publish`).
Templates are Jinja2 with autoescape on, so every name from the plan is text, never markup.
"""

from __future__ import annotations

import gc
import json
import logging
import re
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from pathlib import Path
from typing import get_args

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape

from monitor.notices import NoticesFile
from monitor.plan import Plan, ServiceRef
from monitor.plan.schema import Channel, Group
from monitor.site import feeds, history
from monitor.site import notices as site_notices
from monitor.site.forked import Forked, ForkFailed, available
from monitor.site.model import RECENT, Item, Model, Snapshot, build, by_channel, snapshot_from_store
from monitor.site.publish import Content, publish, tidy
from monitor.site.words import WORDS, Lang, incident_state, pick
from monitor.store import StoreReader, StoreReads

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
#: Incidents listed on the page (all of the window are in status.json and history.atom).
PAGE_INCIDENTS = 20
#: Up to this many services the whole page is one `index.html` (the real plan's 73 services
#: make 48 KB in Chinese and 53 KB in English, about 0.65 KB a service, so 150 stay well under
#: `PAGE_BUDGET`). Above it, `index.html` is a summary (the headline, what is broken, what is
#: paused, a line per channel) and every channel gets a page of its own under `channels/`.
ONE_PAGE_SERVICES = 150
#: The size `index.html` must stay under, whatever the plan's size (tests hold it at 10,000).
PAGE_BUDGET = 100 * 1000
#: Items (one business across its channels) the summary lists per page state; the rest are on
#: the channel pages. Open services are only counted there: what matters is what is not.
#: `channels`: the channels named per item (the rest are counted).
SUMMARY_ITEMS = {
    "broken": 25,
    "closed": 25,
    "leak": 25,
    "open": 0,
    "unobserved": 0,
    "any": 0,
    "channels": 8,
}
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
    quiet = not h.others and not h.parts and not h.broken
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
    for part in h.parts:
        key = "headline_part" if part.end else "headline_part_open"
        end = lang.when(part.end, True) if part.end else ""
        out.append(lang.fmt(key, n=len(part.services), end=end))
    for other in h.others:
        key = "headline_other" if other.end else "headline_other_open"
        end = lang.when(other.end, True) if other.end else ""
        n = len(other.services)
        out.append(lang.fmt(key, n=n, title=_title(other.period, lang), end=end))
    if h.broken:
        out.append(_icon("broken") + " " + lang.fmt("headline_broken", n=h.broken))
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


@dataclass(frozen=True)
class ChannelRow:
    """One channel on the summary page: its link, services per page state, trouble days."""

    channel: Channel
    href: str
    total: int
    states: dict[str, int]  # page states present, in the order the page lists them
    days: dict[str, int]  # days broken (`down`) and open against the plan (`up`)


def channel_path(channel_id: str, code: str) -> str:
    """Where a channel's page lives, relative to the site folder."""
    return f"channels/{channel_id}.html" if code == "zh" else f"en/channels/{channel_id}.html"


def channel_rows(model: Model) -> list[ChannelRow]:
    """A line per channel of the plan for the summary page, in plan order (hrefs relative to
    the language's own `index.html`)."""
    states: dict[str, dict[str, int]] = {c.id: {} for c in model.plan.config.channels}
    for view in model.services:
        counts = states[view.ref.channel.id]
        state = "closed" if view.state == "leak" else view.state  # as citizens are told
        counts[state] = counts.get(state, 0) + 1
    days: dict[str, dict[str, int]] = {}
    for bar in model.history.bars:
        found = days.setdefault(bar.ref.channel.id, {"down": 0, "up": 0})
        found["down"] += bar.counts["down"]
        found["up"] += bar.counts["up"]
    order = ("broken", "closed", "open", "unobserved", "any")
    return [
        ChannelRow(
            channel,
            f"channels/{channel.id}.html",
            sum(states[channel.id].values()),
            {s: states[channel.id][s] for s in order if s in states[channel.id]},
            days.get(channel.id, {"down": 0, "up": 0}),
        )
        for channel in model.plan.config.channels
    ]


def split(model: Model) -> bool:
    """Whether the plan is too large for one page (see `ONE_PAGE_SERVICES`)."""
    return len(model.plan.services) > ONE_PAGE_SERVICES


def _icon(name: str) -> Markup:
    """An icon of the page's sprite, hidden from screen readers (the text beside it speaks)."""
    return Markup(
        '<svg class="i" aria-hidden="true" focusable="false"><use href="#i-{}"/></svg>'
    ).format(name)


def _names(lang: Lang, summary: bool) -> dict[str, object]:
    """The name helpers of the template: plain functions, because a Jinja macro call costs
    tens of microseconds and a channel page makes thousands of them."""

    def cname(ref: ServiceRef) -> object:
        return _finalize(lang.pick(ref.channel.name, ref.channel.name_en))

    def sname(ref: ServiceRef) -> object:
        return _finalize(lang.pick(ref.service.name, ref.service.name_en))

    # Escaped once per page: a channel page names its own channel for each of its services.
    sep = str(escape(_finalize(lang.w["sep"])))
    colon = str(escape(_finalize(lang.w["colon"])))
    escaped: dict[str, str] = {}
    heads = {g: f'<p><span class="g">{escape(_finalize(lang.w[g]))}{colon}</span>' for g in GROUPS}

    def escaped_name(ref: ServiceRef) -> str:
        found = escaped.get(ref.channel.id)
        if found is None:
            found = escaped[ref.channel.id] = str(escape(cname(ref)))
        return found

    def cnames(refs: list[ServiceRef] | tuple[ServiceRef, ...]) -> Markup:
        """Channel names in a list; the summary names the first few and counts them all."""
        cut = refs[: SUMMARY_ITEMS["channels"]] if summary else refs
        text = sep.join([escaped_name(ref) for ref in cut])
        if len(cut) < len(refs):
            text += str(lang.fmt("more_channels", n=len(refs)))
        return Markup(text)

    def channels(item: Item) -> Markup:
        """An item's channels, a line for the online ones and one for the offline ones."""
        lines = [
            f"{heads[group]}{cnames(refs)}</p>"
            for group in GROUPS
            if (refs := item.channels(group))
        ]
        return Markup("".join(lines))

    return {"icon": _icon, "cname": cname, "sname": sname, "cnames": cnames, "channels": channels}


#: The channels' groups in the order an item lists them (the plan's own list).
GROUPS: tuple[str, ...] = get_args(Group)


#: Stand-ins for what changes with every render on every page (the instant, for the countdown
#: script, and "updated at ..."): a page is rendered with them and they are filled in after,
#: so that a channel page kept from an earlier render is the page a render now would give.
_AT = "\ue000at\ue000"
_UPDATED = "\ue000updated\ue000"


class PageCache:
    """The channel pages of the last render, kept by the render worker between renders.

    At 10,000 services the 200 channel pages were most of a render's CPU, yet a render is
    asked for when a verdict changes, which changes one channel's page. A page is kept with
    the key of what it is made of (`_channel_keys`) and rendered again only when that changes;
    a new day (dates on the page leave out this year), another plan, other notices or a pause,
    window or milestone changing state render every page again (`_epoch`). The instant and
    "updated at" are filled in every time.
    """

    def __init__(self) -> None:
        self.epoch: tuple | None = None
        self.pages: dict[tuple[str, str], tuple[tuple, bytes]] = {}
        self.hits = 0  # pages given from what was kept, over the cache's life

    def get(self, epoch: tuple, name: tuple[str, str], key: tuple) -> bytes | None:
        """The kept page, compressed (`text` makes it a page again: only when it is written,
        2,000 pages at 100,000 services were 44 MB of text at once), or None."""
        if self.epoch != epoch:
            self.epoch, self.pages = epoch, {}
            return None
        found = self.pages.get(name)
        if found is None or found[0] != key:
            return None
        self.hits += 1
        return found[1]

    @staticmethod
    def text(kept: bytes) -> str:
        return zlib.decompress(kept).decode("utf-8")

    def put(self, name: tuple[str, str], key: tuple, text: str) -> None:
        """Keep a page, compressed (2,000 pages at 100,000 services: 88 MB as text, 7 MB so);
        one whose names hold a stand-in is never kept (see `page`)."""
        if text.count(_AT) == 1 and text.count(_UPDATED) == 1:
            self.pages[name] = (key, zlib.compress(text.encode("utf-8"), 1))


def _epoch(model: Model) -> tuple:
    """What every channel page depends on beside its own services: the plan (the very object:
    a reload is a new one), the local day, the notices as shown now, and the state of every
    pause (the headline's), window and milestone now."""
    at = model.at
    shown = tuple((n, n.active(at), n.shown(at)) for n in model.notices)
    recent = at - RECENT
    pauses = tuple(
        (p.id, p.status(at), p.end is not None and p.end >= recent) for p in model.maintenances
    )
    day = at.astimezone(model.plan.zone).date()
    return (model.plan, day, shown, pauses, model.windows, model.milestones)


def _channel_keys(model: Model) -> dict[str, tuple]:
    """What each channel's page is made of beside `_epoch`: its services' plan and verdicts
    (not when each was last seen, which the page does not tell), bars and incidents. From
    these and the epoch `model.by_channel` narrows the model, so equal keys give equal pages."""
    views = {
        c: [(v.key, v.expectation, v.verdict, v.state, v.next_change, v.next_up) for v in mine]
        for c, mine in model.of_channel.items()
    }
    bars = model.bars_of_channel
    incidents: dict[str, list] = {c: [] for c in views}
    for record in model.history.incidents:
        if record.channel in incidents and model.view((record.channel, record.business)):
            incidents[record.channel].append(record)
    days = (model.history.first_day, model.history.last_day)
    return {c: (tuple(views[c]), tuple(bars[c]), tuple(incidents[c]), days) for c in views}


def page(model: Model, code: str, channel: Channel | None = None) -> str:
    """`index.html` (zh) or `en/index.html` (en); with `channel`, that channel's page (the
    model narrowed by `model.by_channel`) under `channels/` or `en/channels/`."""
    lang = Lang(code, model.plan.zone, model.at)
    return _fill(_page(model, lang, channel), lang) or _page(model, lang, channel, filled=True)


def _fill(text: str, lang: Lang) -> str | None:
    """The page with the instant filled in for its stand-ins; None when a name on it held a
    stand-in too (the page is then rendered whole)."""
    filled = text.replace(_AT, lang.now.isoformat(), 1)
    filled = filled.replace(_UPDATED, lang.when(lang.now, year=True), 1)
    return None if _AT in filled or _UPDATED in filled else filled


def channel_pages(model: Model, cache: PageCache | None = None) -> Iterator[tuple[str, bytes]]:
    """Every channel's page in both languages, as (path, bytes); with `cache`, a page whose
    channel's content is unchanged since the last render is the kept one (only the channels
    that changed are narrowed and rendered)."""
    kept: dict[tuple[str, str], bytes] = {}
    epoch, keys = None, {}
    if cache is not None:
        epoch, keys = _epoch(model), _channel_keys(model)
        for c in keys:
            for code in ("zh", "en"):
                found = cache.get(epoch, (c, code), keys[c])
                if found is not None:
                    kept[(c, code)] = found
    ids = [c.id for c in model.plan.config.channels]
    stale = {c for c in ids if (c, "zh") not in kept or (c, "en") not in kept}
    narrowed = by_channel(model, only=stale)
    for channel in model.plan.config.channels:
        for code in ("zh", "en"):
            lang = Lang(code, model.plan.zone, model.at)
            found = kept.pop((channel.id, code), None)
            text = None if found is None else PageCache.text(found)
            if text is None:
                text = _page(narrowed[channel.id], lang, channel)
                if cache is not None:
                    cache.put((channel.id, code), keys[channel.id], text)
            filled = _fill(text, lang)
            if filled is None:
                filled = _page(narrowed[channel.id], lang, channel, filled=True)
            yield channel_path(channel.id, code), filled.encode("utf-8")


def _page(model: Model, lang: Lang, channel: Channel | None, filled: bool = False) -> str:
    """The page with the stand-ins for the instant (or, `filled`, the instant itself)."""
    code = lang.code
    if channel is None:
        zh_path, en_path = "index.html", "en/index.html"
    else:
        zh_path, en_path = channel_path(channel.id, "zh"), channel_path(channel.id, "en")
    here = zh_path if code == "zh" else en_path
    root = "../" * here.count("/")
    summary = channel is None and split(model)
    bars = list(model.history.bars)
    by_channel = [(c, list(b)) for c, b in groupby(bars, key=lambda b: b.ref.channel.id)]
    config = model.plan.config.monitor
    sentences = headline(model, lang)
    html = _ENV.get_template("index.html").render(
        **_names(lang, summary),
        at_attr=model.at.isoformat() if filled else _AT,
        updated=lang.when(model.at, year=True) if filled else _UPDATED,
        m=model,
        L=lang,
        w=lang.w,
        root=root,
        # Search engines want the language alternates absolute; without a base, relative.
        alternates=feeds.link(model, "", root),
        zh_path=zh_path,
        en_path=en_path,
        other_href=root + (en_path if code == "zh" else zh_path),
        home=root + ("index.html" if code == "zh" else "en/index.html"),
        channel=channel,
        split=summary,
        limits=SUMMARY_ITEMS,
        channel_rows=channel_rows(model) if summary else (),
        title=pick(config.title, config.title_en, code),
        rehearsal=model.plan.config.rehearsal,
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
        channel_notes=[c for c in model.plan.config.channels if c.note and channel in (None, c)],
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
        # citizens' words only: the probe's reason is for the page's operators' section
        what = WORDS["zh"]["incident_down" if down else "incident_up"]
        state = incident_state(record, "zh")
        entries.append(
            {
                "title": f"{name}：{what}（{state}）",
                "id": _urn("incident", record.id, record.opened_at.timestamp()),
                "published": feeds.iso(record.opened_at, zone),
                "updated": feeds.iso(record.resolved_at or record.opened_at, zone),
                "category": "incident",
                "content": f"{name}：{what}。",
            }
        )
    for item in feeds.listed(model):
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
                # optional in Atom: left out unless the plan says when it was published
                "published": feeds.iso(feeds.published(model), zone),
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


_BADGE = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" role="img" '
    'aria-label="{title}"><title>{title}</title><rect width="{left}" height="20" fill="#555"/>'
    '<rect x="{left}" width="{right}" height="20" fill="{colour}"/><g fill="#fff" '
    'font-family="sans-serif" font-size="11" text-anchor="middle"><text x="{middle_left}" '
    'y="14">{label}</text><text x="{middle_right}" y="14">{message}</text></g></svg>'
)


def badge_svg(b: dict) -> str:
    """A badge (`feeds.badge`) as `templates/badge.svg` writes it, formatted in Python: a
    template call per service cost a quarter second at 10,000 services."""

    def text(value: str) -> str:
        return str(escape(_finalize(value)))

    return _BADGE.format(
        width=b["width"],
        title=text(b["title"]),
        left=b["left"],
        right=b["right"],
        colour=text(b["colour"]),
        middle_left=b["left"] / 2,
        middle_right=b["left"] + b["right"] / 2,
        label=text(b["label"]),
        message=text(b["message"]),
    )


#: Pieces of a file made while it is written are joined up to about this size (one write each).
_PIECE = 1 << 16


def _json_stream(data: dict) -> Iterator[bytes]:
    """`_json(data)` in pieces made as they are written (`publish`), a list or iterator value
    encoded item by item: an iterator's items are made only as they are encoded, and the file
    is never held whole (`status.json` at 100,000 services: 40 MB)."""
    pending: list[bytes] = [b"{"]
    size = 0
    for index, (key, value) in enumerate(data.items()):
        pending.append((b"," if index else b"") + _dumps(key) + b":")
        if not isinstance(value, list | Iterator):
            pending.append(_dumps(value))
            continue
        pending.append(b"[")
        for number, item in enumerate(value):
            piece = (b"," if number else b"") + _dumps(item)
            pending.append(piece)
            size += len(piece)
            if size >= _PIECE:
                yield b"".join(pending)
                pending, size = [], 0
        pending.append(b"]")
    pending.append(b"}\n")
    yield b"".join(pending)


_dumps = feeds.dumps


def _spliced(value: object) -> list[bytes]:
    """`_dumps(value)` as pieces in which every `feeds.Encoded` is a piece of its own, never
    copied (a pause's components are megabytes at 100,000 services, shared by its files)."""
    out: list[bytes] = []
    small: list[bytes] = []
    _walk(value, out, small)
    if small:
        out.append(b"".join(small))
    return out


def _walk(value: object, out: list[bytes], small: list[bytes]) -> None:
    """`_spliced`'s step: small pieces gather in `small` until an `Encoded` comes. (A module
    function: a nested one that calls itself is a reference cycle, which kept every file's
    pieces alive until the next full collection.)"""
    if isinstance(value, feeds.Encoded):
        if small:
            out.append(b"".join(small))
            small.clear()
        out.append(value)
    elif isinstance(value, dict):
        small.append(b"{")
        for index, (key, item) in enumerate(value.items()):
            small.append((b"," if index else b"") + _dumps(str(key)) + b":")
            _walk(item, out, small)
        small.append(b"}")
    elif isinstance(value, list) and any(isinstance(i, dict | feeds.Encoded) for i in value):
        small.append(b"[")
        for index, item in enumerate(value):
            small.append(b"," if index else b"")
            _walk(item, out, small)
        small.append(b"]")
    else:
        small.append(_dumps(value))


def _json_files(files: dict[str, dict]) -> Iterator[tuple[str, Iterator[bytes]]]:
    """The Statuspage files as `_json` writes them, one at a time, each shared part encoded
    once: the component list is in two files and every pause in up to three, and the large
    parts come encoded already (`feeds.Encoded`, written as they are). The parts are encoded
    before the first file is given, so the caller may drop the dicts."""
    done: dict[int, list[bytes]] = {}

    def encode(value: object) -> list[bytes]:
        key = id(value)  # the parts are alive in `files` while this runs
        if key not in done:
            done[key] = _spliced(value)
        return done[key]

    layouts = []
    for name, data in files.items():
        parts: list[tuple[bytes, list[list[bytes]] | list[bytes]]] = []
        for key, value in data.items():
            head = _dumps(key) + b":"
            if isinstance(value, list):  # its items one by one: each may be shared
                parts.append((head, [encode(item) for item in value]))
            else:
                parts.append((head, encode(value)))
        layouts.append((name, parts))
    files.clear()  # every part is encoded: the dicts can go
    data = value = None
    for name, parts in layouts:
        chunks = [b"{"]
        for index, (head, value) in enumerate(parts):
            chunks += [b"," if index else b"", head]
            if value and isinstance(value[0], list):
                chunks.append(b"[")
                for number, item in enumerate(value):
                    chunks += [b",", *item] if number else item
                chunks.append(b"]")
            elif not value:
                chunks.append(b"[]")
            else:
                chunks += value
        chunks.append(b"}\n")
        # written piece by piece as it is made: the file is never whole, nor an `Encoded`
        # part uncompressed for longer than its piece is written
        yield name, (p.text() if isinstance(p, feeds.Encoded) else p for p in chunks)


def iter_files(
    model: Model, pages: PageCache | None = None, helper: bool = False
) -> Iterator[tuple[str, Content]]:
    """Every file of the site as (relative path, bytes or pieces of bytes), one at a time:
    `publish` writes each as it comes, so a render never holds the whole site (330 MB at
    100,000 services). The channel pages come from `pages` where what they show did not
    change. With `helper` (and a second CPU) a forked process makes the pages meanwhile
    (`forked`, about half of the CPU), and they are given as they arrive between the other
    files."""
    forked = None
    if helper and split(model) and available():
        # The model and the plan outlive the render: frozen, no collection in either process
        # walks them again, and the child's collections copy none of their pages of memory.
        gc.freeze()
        try:
            forked = Forked(lambda: _pages(model))
        except OSError as exc:  # no process to be had (a limit on processes, memory)
            log.warning("pages: no helper process (%s); making them here", exc)
    if forked is None:
        yield from _data_files(model, tuple)
        yield from _pages(model, pages)
        return
    given: set[str] = set()  # the helper's files given so far

    def arrived(made: Callable[[], Iterator[tuple[str, bytes]]]) -> Iterator[tuple[str, bytes]]:
        for name, data in made():
            given.add(name)
            yield name, data

    try:
        yield from _data_files(model, lambda: arrived(forked.ready))
        try:
            yield from arrived(forked.rest)
        except ForkFailed as exc:
            log.warning("pages: %s; making the rest here", exc)
            for name, data in _pages(model):
                if name not in given:
                    yield name, data
    finally:
        forked.close()


def _data_files(
    model: Model, arrived: Callable[[], Iterable[tuple[str, bytes]]]
) -> Iterator[tuple[str, Content]]:
    """Every file but the pages and feeds (`_pages`): the JSON files and the badges. What
    `arrived` gives (the pages a helper made meanwhile) is passed on between them, so that
    they are written as they come, not held."""
    for name in ("style.css", "countdown.js"):
        yield name, (STATIC / name).read_bytes()
    zh_lang = Lang("zh", model.plan.zone, model.at)
    en_lang = Lang("en", model.plan.zone, model.at)
    heads = {
        lang.code: " ".join(t.striptags() for t in headline(model, lang))
        for lang in (zh_lang, en_lang)
    }
    yield "status.json", _json_stream(feeds.own_status(model, heads))
    yield from arrived()
    comps = feeds.components(model, feeds.asked(model))
    statuspage = feeds.statuspage(model, comps)
    statuspage = site_notices.add_to_statuspage(statuspage, model, comps.by_id)
    del comps  # its parts are in `statuspage`, dropped as they are encoded
    for name, data in _json_files(statuspage):
        yield f"api/v2/{name}", data
        yield from arrived()
    data = None  # the last file's parts are not held while the rest is made
    for number, view in enumerate(model.services):
        path = f"badges/{view.ref.channel.id}/{view.ref.service.id}.svg"
        yield path, badge_svg(feeds.badge(view)).encode("utf-8")
        if number % 1000 == 999:
            yield from arrived()
    yield from arrived()


def _pages(model: Model, pages: PageCache | None = None) -> Iterator[tuple[str, bytes]]:
    """The HTML pages, the summary and each channel's, and the feeds: what a helper process
    makes (a few hundred files, about half of a render's CPU at 10,000 services)."""
    yield "history.atom", atom(model).encode("utf-8")
    yield "calendar.ics", feeds.calendar(model).encode("utf-8")
    yield "en/index.html", page(model, "en").encode("utf-8")
    yield "index.html", page(model, "zh").encode("utf-8")
    if split(model):
        yield from channel_pages(model, pages)


def files(model: Model, pages: PageCache | None = None) -> dict[str, bytes]:
    """Every file of the site, by relative path (see `iter_files`)."""
    return {
        name: data if isinstance(data, bytes) else b"".join(data)
        for name, data in iter_files(model, pages)
    }


def _sizes(
    pairs: Iterator[tuple[str, Content]], into: dict[str, int]
) -> Iterator[tuple[str, Content]]:
    """The pairs as they come, their sizes noted in `into`."""
    for name, data in pairs:
        if isinstance(data, bytes):
            into[name] = len(data)
        elif isinstance(data, list):
            into[name] = sum(map(len, data))
        else:
            data = _counted(data, into, name)
        yield name, data
        data = None  # not held while the next file is made


def _counted(pieces: Iterator[bytes], into: dict[str, int], name: str) -> Iterator[bytes]:
    """The pieces as they come, their sizes summed into `into[name]`."""
    into[name] = 0
    for piece in pieces:
        into[name] += len(piece)
        yield piece


def render(
    plan: Plan,
    site: Path,
    at: datetime,
    store: StoreReads | None = None,
    snapshot: Snapshot | None = None,
    durable: bool = False,
    notices: NoticesFile | None = None,
    days: history.DayCache | None = None,
    pages: PageCache | None = None,
    helper: bool = False,
) -> Rendered:
    """Render the site as of `at` and publish it at `site`.

    `store` gives the history (None: no history yet); `snapshot` the verdicts of a running
    pipeline (None: worked out from the store as of `at`). `durable` also flushes the new
    folder to the disk once before the swap (`publish`), so not even a power cut can leave
    `site` holding unwritten files; the daemon leaves it off (it renders often, and renders
    again when it starts).
    `days` keeps the history of the days that are over between renders, `pages` the channel
    pages (both the render worker's). `helper` has a forked process make the pages and feeds
    meanwhile (`iter_files`): what `render`, a new process with nothing kept, asks.
    """
    started = time.perf_counter()
    if at.tzinfo is None:
        raise ValueError("render needs a timezone-aware instant")
    past = history.load(plan, store, at, cache=days)
    if snapshot is None:
        snapshot = snapshot_from_store(plan, store, at)
    model = build(plan, at, snapshot, past, notices)
    sizes: dict[str, int] = {}
    folder = publish(_sizes(iter_files(model, pages, helper), sizes), Path(site), durable=durable)
    return Rendered(folder, sizes, time.perf_counter() - started)


def open_store(db: Path | None) -> StoreReader | None:
    """The store at `db`, read-only through its read API; None when there is none yet (no
    history, not an error). Raises StoreError when the file is not a store of this version.
    Opened to leave nothing beside the store once closed (`open_reader`'s `leave_no_files`),
    whether or not a `run` writes it meanwhile."""
    if db is None or not Path(db).exists():
        return None
    return StoreReader(db, leave_no_files=True)


def render_from(
    plan: Plan, site: Path, at: datetime, db: Path | None, notices: NoticesFile | None = None
) -> Rendered:
    """`channel-monitor render`: the plan and the store file at `db` (if it exists)."""
    store = open_store(db)
    # The plan (millions of objects at 10,000 services) lives to the end of the render: each
    # full collection walked all of it again, 0.25 s of a `render` of 2 s. Frozen, it is not.
    gc.freeze()
    try:
        rendered = render(plan, site, at, store, durable=True, notices=notices, helper=True)
    finally:
        gc.unfreeze()
        if store is not None:
            store.close()
    tidy(site)  # one publish and done: no work folder left beside the site
    return rendered

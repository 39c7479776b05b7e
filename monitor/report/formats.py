"""The report written out: a terminal table, CSV, JSON, and one printable HTML document.

Every format carries the same numbers and says which resolution they came from. Probe
reasons go through the one table of reason words (`monitor.reasons`), so text a probe did
not choose from its fixed phrases never reaches a report; the report is the operators', so
unlike the page it keeps the parts of a reason that are for operators only (what a
channel pushed: `渠道推送：count 3`, not `the channel reported its state`). The HTML is
self-contained (inline CSS, no script, no request to anywhere) and laid out for A4 paper,
one channel per page.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from html import escape

from monitor import reasons
from monitor.judge import ended_by_plan
from monitor.report import ChannelLine, Evidence, IncidentLine, Report, Times
from monitor.site.words import reason_text
from monitor.table import render_table

DIRECTIONS = {
    "unexpected_up": ("应停未停", "up while it should be down"),
    "unexpected_down": ("应开未开", "down while it should be up"),
}


def _reason(reason: str | None, lang: str) -> str:
    """A reason in operators' words (`lang` zh or en): the table's full words, with the parts
    the page leaves out; a reason the table does not know is "other reason", as on the page."""
    return reasons.describe(reason, lang) or reason_text(reason, lang)


def _local(report: Report, value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(report.zone).strftime("%Y-%m-%d %H:%M")


def _iso(report: Report, value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(report.zone).isoformat()


def span_text(seconds: float) -> str:
    """`32d 14h 30m`, `40m`, `0`: durations as people read them (seconds only when present)."""
    total = round(seconds)
    if total <= 0:
        return "0"
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{v}{u}" for v, u in ((days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")) if v]
    return " ".join(parts)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def resolution_text(report: Report) -> tuple[str, str]:
    """Which history the numbers come from, in Chinese and English."""
    if report.forced:  # the user's choice, not what the store keeps
        which = report.resolution
        zh = "原始观测" if which == "raw" else "小时汇总"
        en = "raw observations" if which == "raw" else "hourly rollups"
        return f"{zh}（由 --resolution {which} 指定）", f"{en} (forced by --resolution {which})"
    if report.resolution == "raw":
        return "原始观测", "raw observations"
    if report.resolution == "hourly":
        return "小时汇总（原始观测已过保留期）", "hourly rollups (raw observations past retention)"
    cut = _local(report, report.raw_from)
    return f"{cut} 之前为小时汇总，之后为原始观测", f"hourly rollups before {cut}, raw from then on"


def coverage_text(report: Report) -> tuple[str, str]:
    """How one observation covers time, in Chinese and English."""
    if report.cover is None:
        return (
            "每次观测代表到下一次观测为止，最长为该服务探测间隔的 2 倍",
            "each observation stands until the next one, at most twice the service's interval",
        )
    length = span_text(report.cover.total_seconds())
    return (
        f"每次观测代表到下一次观测为止，最长 {length}",
        f"each observation stands until the next one, at most {length}",
    )


# --- JSON --------------------------------------------------------------------------------------


def _times(times: Times) -> dict:
    share = times.availability
    return {
        "planned_up_seconds": round(times.planned_up, 3),
        "planned_down_seconds": round(times.planned_down, 3),
        "planned_any_seconds": round(times.planned_any, 3),
        "observed_seconds": round(times.observed, 3),
        "observed_up_seconds": round(times.observed_up, 3),
        "observed_down_seconds": round(times.observed_down, 3),
        "unobserved_seconds": round(times.unobserved, 3),
        "matched_seconds": round(times.matched, 3),
        "availability": None if share is None else round(share, 6),
    }


def _evidence(report: Report, item: Evidence | None) -> dict | None:
    if item is None:
        return None
    return {
        "at": _iso(report, item.at),
        "reason": _reason(item.reason, "en"),
        "reason_zh": _reason(item.reason, "zh"),
    }


def _incident(report: Report, item: IncidentLine) -> dict:
    return {
        "id": item.id,
        "direction": item.direction,
        "opened": _iso(report, item.opened_at),
        "resolved": _iso(report, item.resolved_at),
        "duration_seconds": round(item.duration.total_seconds(), 3),
        "reason": _reason(item.reason, "en"),
        "reason_zh": _reason(item.reason, "zh"),
        "resolve_reason": _reason(item.resolve_reason, "en") or None,
        "resolve_reason_zh": _reason(item.resolve_reason, "zh") or None,
        # the plan's change ended it, not the channel: it never did what the plan asked
        "ended_by_plan": ended_by_plan(item.resolve_reason),
        "first_mismatch": _evidence(report, item.first),
        "last_mismatch": _evidence(report, item.last),
    }


def as_json(report: Report) -> dict:
    """The `report --format json` document; durations in seconds, instants in the plan's zone."""
    return {
        "title": report.title,
        "title_en": report.title_en,
        "from": _iso(report, report.start),
        "until": _iso(report, report.end),
        "timezone": report.zone.key,
        "resolution": report.resolution,
        "raw_from": _iso(report, report.raw_from),
        "cover_seconds": None if report.cover is None else report.cover.total_seconds(),
        "coverage": coverage_text(report)[1],
        "totals": _times(report.times),
        "channels": [
            {
                "channel": line.channel.id,
                "channel_name": line.channel.name,
                "channel_name_en": line.channel.name_en,
                **_times(line.times),
                "incidents": len(line.incidents),
                "services": [
                    {
                        "service": s.ref.service.id,
                        "service_name": s.ref.service.name,
                        "service_name_en": s.ref.service.name_en,
                        "probed": s.ref.service.probe is not None,
                        **_times(s.times),
                        "incidents": [_incident(report, i) for i in s.incidents],
                    }
                    for s in line.services
                ],
            }
            for line in report.channels
        ],
        "orphan_incidents": report.orphan_incidents,
    }


# --- CSV ---------------------------------------------------------------------------------------

CSV_COLUMNS = (
    "level",
    "channel",
    "channel_name",
    "service",
    "service_name",
    "planned_up_seconds",
    "planned_down_seconds",
    "planned_any_seconds",
    "observed_seconds",
    "observed_up_seconds",
    "observed_down_seconds",
    "unobserved_seconds",
    "matched_seconds",
    "availability",
    "incidents_unexpected_up",
    "incidents_unexpected_down",
    "resolution",
    "from",
    "until",
)


def as_csv(report: Report) -> str:
    """One row per service, then one `channel` row with its channel's sums; every row says the
    range and resolution, so a row pasted elsewhere keeps its meaning. RFC 4180: every record
    ends in CRLF, the last one included, and nothing follows it (a spreadsheet reads a blank
    line after it as an empty record)."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)  # None (no availability) is written as an empty cell
    tail = [report.resolution, _iso(report, report.start), _iso(report, report.end)]

    def row(level: str, line: ChannelLine, sid: str, name: str, times: Times, items: list) -> None:
        numbers = _times(times)
        ups = sum(1 for i in items if i.direction == "unexpected_up")
        names = [level, line.channel.id, line.channel.name, sid, name]
        writer.writerow([*names, *numbers.values(), ups, len(items) - ups, *tail])

    for line in report.channels:
        for s in line.services:
            row("service", line, s.ref.service.id, s.ref.service.name, s.times, s.incidents)
        row("channel", line, "", "", line.times, line.incidents)
    return out.getvalue()


# --- terminal table ----------------------------------------------------------------------------

HEADERS = [
    "channel",
    "service",
    "planned up",
    "planned down",
    "observed",
    "obs. down",
    "unobserved",
    "matched",
    "availability",
    "incidents",
]


def _time_values(times: Times) -> list[str]:
    """The times as the table and the HTML show them, in the order of their headings."""
    return [
        span_text(times.planned_up),
        span_text(times.planned_down),
        span_text(times.observed),
        span_text(times.observed_down),
        span_text(times.unobserved),
        span_text(times.matched),
        _share(times.availability),
    ]


def _cells(times: Times, incidents: list[IncidentLine]) -> list[str]:
    return [*_time_values(times), ", ".join(i.direction for i in incidents) or "-"]


def _evidence_text(report: Report, item: Evidence | None) -> str:
    if item is None:
        return "(pruned)"
    return f"{_local(report, item.at)} {_reason(item.reason, 'en')}"


def as_text(report: Report) -> str:
    """The report for a terminal: one table of services with channel totals, then incidents."""
    zh, en = resolution_text(report)
    cover_zh, cover_en = coverage_text(report)
    lines = [
        f"{report.title}: 对照计划报告 report against the plan",
        f"{_local(report, report.start)} to {_local(report, report.end)} ({report.zone.key})",
        f"精度 resolution: {zh} / {en}",
        f"覆盖 coverage: {cover_zh} / {cover_en}",
        "",
    ]
    rows = []
    for line in report.channels:
        for s in line.services:
            rows.append([line.channel.name, s.ref.service.name, *_cells(s.times, s.incidents)])
        if len(line.services) > 1:
            rows.append([line.channel.name, "= 合计 total", *_cells(line.times, line.incidents)])
    lines.append(render_table(HEADERS, rows))
    incidents = [
        (f"{line.channel.name} / {s.ref.service.name}", item)
        for line in report.channels
        for s in line.services
        for item in s.incidents
    ]
    lines += ["", f"事件 incidents: {len(incidents)}"]
    if incidents:
        table = []
        for name, item in sorted(incidents, key=lambda p: p[1].opened_at):
            table.append(
                [
                    f"#{item.id}",
                    name,
                    f"{DIRECTIONS[item.direction][0]} {item.direction}",
                    _local(report, item.opened_at),
                    _local(report, item.resolved_at) if item.resolved_at else "open",
                    span_text(item.duration.total_seconds()),
                    _reason(item.reason, "en"),
                    _reason(item.resolve_reason, "en") or "-",
                    _evidence_text(report, item.first),
                    _evidence_text(report, item.last),
                ]
            )
        headers = ["id", "service", "direction", "opened", "resolved", "duration", "reason"]
        headers += ["resolve reason", "first mismatch", "last mismatch"]
        lines.append(render_table(headers, table))
    if report.orphan_incidents:
        lines.append(f"({report.orphan_incidents} incident(s) of services no longer in the plan)")
    return "\n".join(lines)


# --- HTML ----------------------------------------------------------------------------------------

CSS = """
@page { size: A4; margin: 14mm 12mm; }
* { box-sizing: border-box; }
body { font: 9.5pt/1.45 "Noto Sans CJK SC", "WenQuanYi Micro Hei", "PingFang SC",
  "Microsoft YaHei", system-ui, sans-serif; color: #111; margin: 0 auto; max-width: 186mm; }
h1 { font-size: 15pt; margin: 0 0 2mm; }
h2 { font-size: 12pt; margin: 0 0 2mm; border-bottom: 1.5pt solid #111; }
h3 { font-size: 10.5pt; margin: 4mm 0 1mm; }
.en { color: #444; font-weight: normal; }
p.meta { margin: 0 0 1mm; }
table { border-collapse: collapse; width: 100%; margin: 1mm 0 3mm; font-size: 8.5pt; }
th:first-child, td:first-child { width: 30%; }
table.incidents th:first-child, table.incidents td:first-child { width: 2.5em; }
th, td { border-bottom: 0.5pt solid #999; padding: 1mm 1.2mm; text-align: left;
  vertical-align: top; }
th { background: #eee; font-size: 8pt; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.total td { font-weight: bold; border-top: 1pt solid #111; }
thead { display: table-header-group; }
tr { break-inside: avoid; page-break-inside: avoid; }
section.channel { break-before: page; page-break-before: always; }
.up { color: #a40000; } .down { color: #7a4a00; }
@media screen { body { padding: 8mm; } }
"""


def _h(zh: str, en: str, tag: str) -> str:
    return f'<{tag}>{escape(zh)} <span class="en">{escape(en)}</span></{tag}>'


TIME_HEADS = [
    ("计划开放", "planned up"),
    ("计划暂停", "planned down"),
    ("已观测", "observed"),
    ("观测为停", "observed down"),
    ("未观测", "unobserved"),
    ("符合计划", "matched"),
    ("符合率", "availability"),
]


def _time_cells(times: Times) -> str:
    return "".join(f'<td class="n">{escape(v)}</td>' for v in _time_values(times))


def _head(first: list[tuple[str, str]]) -> str:
    cells = [f"<th>{escape(zh)}<br>{escape(en)}</th>" for zh, en in first]
    cells += [f'<th class="n">{escape(zh)}<br>{escape(en)}</th>' for zh, en in TIME_HEADS]
    return f"<thead><tr>{''.join(cells)}</tr></thead>"


def _html_evidence(report: Report, item: Evidence | None) -> str:
    if item is None:
        return "原始观测已清理 pruned"
    return escape(
        f"{_local(report, item.at)} {_reason(item.reason, 'zh')} / {_reason(item.reason, 'en')}"
    )


def _html_resolve_reason(item: IncidentLine) -> str:
    """Why an incident ended, both languages; one the plan ended is marked, since the channel
    then never did what the plan asked."""
    if not item.resolve_reason:
        return "-"
    text = escape(f"{_reason(item.resolve_reason, 'zh')} / {_reason(item.resolve_reason, 'en')}")
    return f"<strong>{text}</strong>" if ended_by_plan(item.resolve_reason) else text


def _html_incidents(report: Report, line: ChannelLine) -> str:
    if not line.incidents:
        return "<p>无事件。 <span class='en'>No incidents.</span></p>"
    names = {id(i): s.ref.service.name for s in line.services for i in s.incidents}
    heads = [
        ("编号", "id"),
        ("服务", "service"),
        ("方向", "direction"),
        ("开始", "opened"),
        ("结束", "resolved"),
        ("时长", "duration"),
        ("原因", "reason"),
        ("结束原因", "resolve reason"),
        ("首次不符观测", "first mismatch"),
        ("最后不符观测", "last mismatch"),
    ]
    head = "".join(f"<th>{escape(zh)}<br>{escape(en)}</th>" for zh, en in heads)
    rows = []
    for item in line.incidents:
        zh, en = DIRECTIONS[item.direction]
        kind = "up" if item.direction == "unexpected_up" else "down"
        cells = [
            f"#{item.id}",
            escape(names[id(item)]),
            f'<span class="{kind}">{escape(zh)}<br>{escape(en)}</span>',
            escape(_local(report, item.opened_at)),
            escape(_local(report, item.resolved_at)) if item.resolved_at else "未结束 open",
            escape(span_text(item.duration.total_seconds())),
            escape(f"{_reason(item.reason, 'zh')} / {_reason(item.reason, 'en')}"),
            _html_resolve_reason(item),
            _html_evidence(report, item.first),
            _html_evidence(report, item.last),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    body = "".join(rows)
    return f'<table class="incidents"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def as_html(report: Report) -> str:
    """One printable document: the summary of every channel, then a page per channel."""
    zh, en = resolution_text(report)
    cover_zh, cover_en = coverage_text(report)
    span = f"{_local(report, report.start)} – {_local(report, report.end)} ({report.zone.key})"
    summary_rows = []
    for line in report.channels:
        count = len(line.incidents)
        summary_rows.append(
            f"<tr><td>{escape(line.channel.name)}<br><span class='en'>"
            f"{escape(line.channel.name_en)}</span></td>{_time_cells(line.times)}"
            f'<td class="n">{count}</td></tr>'
        )
    summary_rows.append(
        f"<tr class='total'><td>合计 total</td>{_time_cells(report.times)}"
        f'<td class="n">{sum(len(c.incidents) for c in report.channels)}</td></tr>'
    )
    incidents_head = '<th class="n">事件<br>incidents</th>'
    sections = []
    for line in report.channels:
        rows = [
            f"<tr><td>{escape(s.ref.service.name)}<br><span class='en'>"
            f"{escape(s.ref.service.name_en)}</span></td>{_time_cells(s.times)}</tr>"
            for s in line.services
        ]
        rows.append(f"<tr class='total'><td>合计 total</td>{_time_cells(line.times)}</tr>")
        anchor = f"channel-{len(sections) + 1}"
        sections.append(
            f'<section class="channel" aria-labelledby="{anchor}">'
            + _h(line.channel.name, line.channel.name_en, "h2").replace(
                "<h2>", f'<h2 id="{anchor}">', 1
            )
            + _h("服务", "Services", "h3")
            + f"<table>{_head([('服务', 'service')])}<tbody>{''.join(rows)}</tbody></table>"
            + _h("事件与证据", "Incidents and evidence", "h3")
            + _html_incidents(report, line)
            + "</section>"
        )
    head = _head([("渠道", "channel")]).replace("</tr></thead>", incidents_head + "</tr></thead>")
    orphans = (
        f"<p>另有 {report.orphan_incidents} 个事件属于已不在计划中的服务。"
        f" <span class='en'>{report.orphan_incidents} more incident(s) belong to services no "
        "longer in the plan.</span></p>"
        if report.orphan_incidents
        else ""
    )
    return (
        '<!DOCTYPE html>\n<html lang="zh-CN">\n<head>\n<meta charset="utf-8">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>{escape(report.title)}：对照计划报告 / Report against the plan</title>\n"
        f"<style>{CSS}</style>\n</head>\n<body>\n<header>\n"
        + _h(f"{report.title}：对照计划报告", f"{report.title_en}: report against the plan", "h1")
        + f'\n<p class="meta">时间范围 <span class="en">Range</span>: {escape(span)}</p>'
        + f'\n<p class="meta">数据精度 <span class="en">Resolution</span>: {escape(zh)} '
        f'<span class="en">{escape(en)}</span></p>'
        + f'\n<p class="meta">观测覆盖 <span class="en">Coverage</span>: {escape(cover_zh)} '
        f'<span class="en">{escape(cover_en)}</span></p>\n'
        + '<p class="meta">符合率 = 符合计划的时间 ÷ 已观测时间（两个方向都计入）。 '
        '<span class="en">Availability = time matching the plan ÷ observed time (both '
        "directions count).</span></p>\n</header>\n<main>\n"
        + '<section class="summary" aria-labelledby="summary">'
        + _h("各渠道汇总", "Channels", "h2").replace("<h2>", '<h2 id="summary">', 1)
        + f"\n<table>{head}<tbody>{''.join(summary_rows)}</tbody></table>\n"
        + orphans
        + "</section>\n"
        + "\n".join(sections)
        + "\n</main>\n</body>\n</html>\n"
    )


FORMATS = {"table": as_text, "csv": as_csv, "html": as_html}


def render(report: Report, form: str) -> str:
    """The report in one of `table`, `csv`, `json`, `html`."""
    if form == "json":
        import json

        return json.dumps(as_json(report), ensure_ascii=False, indent=2)
    return FORMATS[form](report)

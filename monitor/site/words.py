"""The page's words in Chinese and English, and how it writes instants, dates and reasons.

Every instant is written 24-hour and zero-padded, with its zone (`北京时间` / `UTC+8`), inside a
`<time datetime>` element. Probe reasons are translated through the one table of
`monitor.reasons`; anything else becomes a generic phrase, so no text from a probe's answer can
reach the page.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo

from markupsafe import Markup, escape

from monitor import reasons
from monitor.judge import ended_by_plan
from monitor.notices import STATUS_EN, STATUS_ZH
from monitor.store import IncidentRecord

#: Zones whose clock is Beijing time (the page says 北京时间 rather than an offset).
BEIJING_ZONES = frozenset(
    {"Asia/Shanghai", "Asia/Chongqing", "Asia/Chungking", "Asia/Harbin", "PRC"}
)

WORDS: dict[str, dict[str, str]] = {
    "zh": {
        "lang": "zh-CN",
        "other_lang": "en",
        "other_label": "English",
        "updated": "更新于",
        "state_open": "按计划开放，经监测可以办理",
        "state_unobserved": "按计划开放，未经监测",
        "state_any": "按计划不作保证",
        "state_closed": "按计划暂停",
        "state_broken": "应开放但暂时无法使用",
        "state_leak": "按计划应暂停，但仍在受理",
        "count": "{n} 项",
        "online": "线上",
        "offline": "线下",
        "alternatives": "可改到",
        "resumes": "预计恢复",
        "resumes_unless": "除另注明外，均预计 {at}恢复办理。",
        "changes": "计划变化",
        "next_change": "下一次计划变化",
        "to_up": "开放",
        "to_down": "暂停",
        "to_any": "不作保证",
        "change_item": "{names}{to}",
        "headline_down": "{title}进行中，预计 {at}恢复办理。",
        "headline_down_open": "{title}进行中，恢复时间待定。",
        "headline_upcoming": "{title}将于 {start}开始，预计 {end}恢复。",
        "headline_upcoming_open": "{title}将于 {start}开始。",
        "headline_ok": "各项业务按计划开放，经监测均可办理。",
        "headline_ok_plan": "目前没有按计划暂停的业务。",
        "headline_all_ok": "各项业务目前按计划开放，经监测均可办理。",
        "headline_past": "{title}已于 {end}结束，按计划相关业务已恢复办理。",
        "known": "{total} 项业务中，{parts}。",
        "known_working": "{n} 项按计划开放，经监测可以办理",
        "known_unobserved": "{n} 项按计划开放，未经监测",
        "known_paused": "{n} 项按计划暂停",
        "known_sep": "；",
        "unobserved_note": "计划说这些业务可以办理，但目前没有监测数据，无法确认实际能否办理。",
        "headline_other": "另有 {n} 项业务按计划暂停（{title}），预计 {end}恢复。",
        "headline_other_open": "另有 {n} 项业务按计划暂停（{title}）。",
        "headline_part": "其中 {n} 项业务预计 {end}恢复办理。",
        "headline_part_open": "其中 {n} 项业务恢复时间待定。",
        "n_services": "{n} 项业务",
        "headline_broken": "另有 {n} 项按计划应开放的业务暂时无法使用，详见下方。",
        "windows": "特别窗口",
        "window_upcoming": "将于 {start}开放，{end}截止",
        "window_active": "开放中，{end}截止",
        "window_ended": "已于 {end}截止",
        "milestones": "重要日期",
        "no_milestones": "近期没有其他重要日期。",
        "history": "近 90 天",
        "history_note": "每条为一项业务，从左 {start}到右 {end}。按计划暂停的日子以灰色标出，"
        "不算故障。",
        "day_ok": "正常",
        "day_planned": "按计划暂停",
        "day_down": "意外中断",
        "day_up": "未按计划暂停",
        "day_none": "无数据",
        "days": "{n} 天",
        "no_history": "还没有监测记录。",
        "incidents": "事件记录",
        "no_incidents": "近 90 天没有事件。",
        "incident_down": "按计划应可办理，但暂时无法使用",
        "incident_up": "按计划已暂停，但仍能提交业务；请勿在暂停期间办理，待恢复后再办",
        "ops_incidents": "事件的监测原因",
        "ops_ended": "；因计划变更结束：{why}",
        "ongoing": "仍在持续",
        "incident_recovered": "已恢复正常",
        "incident_ended": "已随计划调整结束",
        "lasted": "持续",
        "reason": "原因",
        "ops": "运维信息",
        "ops_note": "以下业务按计划应暂停，监测发现仍可访问。请勿据此办理，待恢复办理后再办。",
        "ops_none": "没有需要运维处理的事项。",
        "probed": "{n} 项业务由自动监测核实，其余按计划展示。",
        "unobserved": "{n} 项业务还没有接入监测，只能按计划展示；探测地址、推送令牌或环境变量"
        "需由渠道运营方提供，填入 channels.toml 中该业务的 [channels.services.probe] 或 "
        "push，或设置所列变量：",
        "not_configured": "尚未配置，需设置环境变量 {names}",
        "schedule_only": "未接入监测，仅按计划展示",
        "channels": "渠道说明",
        "files": "数据文件",
        "hours": "{n} 小时",
        "minutes": "{n} 分钟",
        "days_short": "{n} 天",
        "js_days": "天",
        "js_hours": "小时",
        "js_minutes": "分钟",
        "js_left": "还有",
        "js_passed": "已到时间，请刷新页面查看最新状态",
        "sep": "、",
        "list_sep": "；",
        "colon": "：",
        "legend": "图例",
        "skip": "跳到主要内容",
        "more_incidents": "仅列出最近 {n} 条，完整记录见 history.atom 与 status.json。",
        # the summary page of a large plan, and the channel pages it links
        "by_channel": "各渠道",
        "more_channels": "等共 {n} 个渠道",
        "more_items": "另有 {n} 项未在此列出，请在下方“各渠道”中打开相应渠道的页面查看。",
        "history_split": "每项业务逐日的记录在各渠道的页面上；“各渠道”一栏列出了每个渠道"
        "意外中断和未按计划暂停的天数。",
        "unobserved_split": "{n} 项业务还没有接入监测，只能按计划展示，名单见各渠道的页面。",
        "short_broken": "无法使用",
        "short_closed": "暂停",
        "short_open": "正常",
        "short_unobserved": "未监测",
        "short_any": "不作保证",
    },
    "en": {
        "lang": "en",
        "other_lang": "zh-CN",
        "other_label": "中文",
        "updated": "Updated",
        "state_open": "Planned open and seen working",
        "state_unobserved": "Planned open, not observed",
        "state_any": "Not guaranteed by the plan",
        "state_closed": "Paused as planned",
        "state_broken": "Should be available, but not working",
        "state_leak": "Paused by the plan, but still accepting business",
        "count": "{n}",
        "online": "Online",
        "offline": "In person",
        "alternatives": "Go instead to",
        "resumes": "Expected back",
        "resumes_unless": "Unless noted otherwise, all expected back {at}.",
        "changes": "Plan changes",
        "next_change": "Next planned change",
        "to_up": "open",
        "to_down": "paused",
        "to_any": "not guaranteed",
        "change_item": "{names} → {to}",
        "headline_down": "{title}: in progress, expected to end {at}.",
        "headline_down_open": "{title}: in progress, no end date yet.",
        "headline_upcoming": "{title}: from {start}, expected to end {end}.",
        "headline_upcoming_open": "{title}: from {start}.",
        "headline_ok": "All business is planned open, and all of it was seen working.",
        "headline_ok_plan": "The plan pauses no business now.",
        "headline_all_ok": "All business is planned open now, and all of it was seen working.",
        "headline_past": "{title}: ended {end}; by the plan, the business it paused is open again.",
        "known": "Of {total} services: {parts}.",
        "known_working": "{n} planned open and seen working",
        "known_unobserved": "{n} planned open but not observed",
        "known_paused": "{n} paused as planned",
        "known_sep": "; ",
        "unobserved_note": "The plan says these are open, but nothing has observed them, so "
        "whether they work right now is not known.",
        "headline_other": "{n} more service(s) paused as planned ({title}) until {end}.",
        "headline_other_open": "{n} more service(s) paused as planned ({title}).",
        "headline_part": "Of these, {n} service(s) are planned to reopen {end}.",
        "headline_part_open": "Of these, {n} service(s) have no reopening date yet.",
        "n_services": "{n} services",
        "headline_broken": "{n} service(s) that should be available are not working; see below.",
        "windows": "Special windows",
        "window_upcoming": "opens {start}, closes {end}",
        "window_active": "open now, closes {end}",
        "window_ended": "closed {end}",
        "milestones": "Key dates",
        "no_milestones": "No other key dates ahead.",
        "history": "Last 90 days",
        "history_note": "One bar per service, from {start} on the left to {end} on the right. "
        "Planned pauses are grey and do not count as outages.",
        "day_ok": "working",
        "day_planned": "paused as planned",
        "day_down": "outage",
        "day_up": "not paused as planned",
        "day_none": "no data",
        "days": "{n} d",
        "no_history": "No monitoring history yet.",
        "incidents": "Incidents",
        "no_incidents": "No incidents in the last 90 days.",
        "incident_down": "should be open as planned, but could not be used",
        "incident_up": "paused as planned, but still took submissions; please wait until it "
        "reopens",
        "ops_incidents": "What the monitoring saw in each incident",
        "ops_ended": "; ended by a change of the plan: {why}",
        "ongoing": "ongoing",
        "incident_recovered": "back to plan",
        "incident_ended": "ended by a change of the plan",
        "lasted": "lasted",
        "reason": "reason",
        "ops": "For operators",
        "ops_note": "The plan pauses these services, yet monitoring finds them still reachable. "
        "Please wait until business resumes before using them.",
        "ops_none": "Nothing for operators to act on.",
        "probed": "{n} services are checked by automatic monitoring; the rest are shown "
        "as planned.",
        "unobserved": "{n} services are not observed yet and can only be shown as planned; the "
        "channel operator must supply the probe address, push token or the variables listed, "
        "for the service's [channels.services.probe] or push in channels.toml:",
        "not_configured": "not configured yet: set the environment variables {names}",
        "schedule_only": "not observed, shown as planned",
        "channels": "About the channels",
        "files": "Data files",
        "hours": "{n} h",
        "minutes": "{n} min",
        "days_short": "{n} d",
        "js_days": "d",
        "js_hours": "h",
        "js_minutes": "min",
        "js_left": "in",
        "js_passed": "time reached; reload the page for the latest state",
        "sep": ", ",
        "list_sep": "; ",
        "colon": ": ",
        "legend": "Legend",
        "skip": "Skip to the main content",
        "more_incidents": "Only the latest {n} are listed; history.atom and status.json "
        "hold them all.",
        "by_channel": "By channel",
        "more_channels": " and others ({n} channels in all)",
        "more_items": "{n} more are not listed here: open the channel's page under "
        "“By channel” below.",
        "history_split": "Each service's day-by-day record is on its channel's page; “By "
        "channel” gives every channel's days of outage and of not pausing as planned.",
        "unobserved_split": "{n} services are not observed yet and can only be shown as "
        "planned; each channel's page lists them.",
        "short_broken": "not working",
        "short_closed": "paused",
        "short_open": "working",
        "short_unobserved": "not observed",
        "short_any": "not guaranteed",
    },
}

#: Words of operators' notices (monitor/notices/__init__.py): the section, and each update's status.
NOTICE_WORDS: dict[str, dict[str, str]] = {
    "zh": {
        "notices": "运维公告",
        "notices_past": "已结束的公告",
        "notice_about": "涉及",
        "notice_incident": "关联事件",
        **{f"notice_{status}": words for status, words in STATUS_ZH.items()},
    },
    "en": {
        "notices": "Notices from the operators",
        "notices_past": "Closed notices",
        "notice_about": "About",
        "notice_incident": "Incident",
        **{f"notice_{status}": words for status, words in STATUS_EN.items()},
    },
}
for _code, _words in NOTICE_WORDS.items():
    WORDS[_code].update(_words)


def reason_text(reason: str | None, lang: str) -> str:
    """A probe reason in the page's language (from `monitor.reasons`, without the parts
    citizens must not read); unknown text never passes through."""
    if not reason:
        return ""
    text = reasons.describe(reason, lang, public=True)
    if text is None:
        return "其他原因" if lang == "zh" else "other reason"
    return text


def incident_state(record: IncidentRecord, lang: str) -> str:
    """How an incident stands, in citizens' words, for the feeds' titles: ongoing, back to
    plan, or ended by a change of the plan. The last is not a recovery: the channel was seen
    as it was all along (still taking business when the freeze ended, or removed from the plan)."""
    if record.resolved_at is None:
        return WORDS[lang]["ongoing"]
    ended = ended_by_plan(record.resolve_reason)
    return WORDS[lang]["incident_ended" if ended else "incident_recovered"]


def zone_label(at: datetime, zone: tzinfo, lang: str) -> str:
    """`北京时间` (zh, Beijing zones) or `UTC+8` / `UTC-4:30` from the offset at `at`."""
    if lang == "zh" and getattr(zone, "key", None) in BEIJING_ZONES:
        return "北京时间"
    offset = at.astimezone(zone).utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    hours, rest = divmod(abs(minutes), 60)
    return f"UTC{sign}{hours}" + (f":{rest:02d}" if rest else "")


_EN_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class Lang:
    """One language of the page: its words and how it writes times."""

    code: str
    zone: tzinfo
    now: datetime

    @property
    def w(self) -> dict[str, str]:
        return WORDS[self.code]

    def local(self, at: datetime) -> datetime:
        return at.astimezone(self.zone)

    def date_text(self, day: date, year: bool | None = None) -> str:
        """`2022年7月25日` / `25 Jul 2022`; the year is left out when it is this year's."""
        if year is None:
            year = day.year != self.local(self.now).year
        if self.code == "zh":
            return (f"{day.year}年" if year else "") + f"{day.month}月{day.day}日"
        return f"{day.day} {_EN_MONTHS[day.month - 1]}" + (f" {day.year}" if year else "")

    def when_text(self, at: datetime, year: bool | None = None) -> str:
        """`7月25日 08:30（北京时间）` / `25 Jul 08:30 (UTC+8)`: 24-hour, zero-padded, zoned."""
        local = self.local(at)
        zone = zone_label(at, self.zone, self.code)
        text = f"{self.date_text(local.date(), year)} {local:%H:%M}"
        return f"{text}（{zone}）" if self.code == "zh" else f"{text} ({zone})"

    def when(self, at: datetime, year: bool | None = None, countdown: bool = False) -> Markup:
        """An instant as a `<time datetime>` element (see `_when`)."""
        return _when(self, at, year, countdown)

    def day(self, value: date | datetime, year: bool | None = None) -> Markup:
        """A date (or the date of an instant, with its time) as a `<time>` element."""
        if isinstance(value, datetime):
            return self.when(value, year)
        return Markup('<time datetime="{}">{}</time>').format(
            value.isoformat(), self.date_text(value, year)
        )

    def duration(self, value: timedelta) -> str:
        minutes = max(0, int(value.total_seconds() // 60))
        days, rest = divmod(minutes, 1440)
        hours, minutes = divmod(rest, 60)
        parts = []
        if days:
            parts.append(self.w["days_short"].format(n=days))
        if hours:
            parts.append(self.w["hours"].format(n=hours))
        if minutes or not parts:
            parts.append(self.w["minutes"].format(n=minutes))
        return " ".join(parts)

    def paren(self, text: object) -> Markup:
        """Text in brackets: full-width in Chinese."""
        if self.code == "zh":
            return Markup("（{}）").format(text)
        return Markup(" ({})").format(text)

    def pick(self, zh: str, en: str) -> str:
        return pick(zh, en, self.code)

    def reason(self, reason: str | None) -> str:
        return reason_text(reason, self.code)

    def ended_by_plan(self, resolve_reason: str | None) -> str:
        """The plan's change that ended an incident, in words; "" for one the channel ended.
        Operators must see that a portal "resolved" when the freeze ended never closed."""
        return reason_text(resolve_reason, self.code) if ended_by_plan(resolve_reason) else ""

    def fmt(self, key: str, **values: object) -> Markup:
        """A sentence from the word list with escaped (or already safe) values filled in."""
        return escape(self.w[key]).format(**values) if values else escape(self.w[key])


@functools.lru_cache(maxsize=4096)
def _when(lang: Lang, at: datetime, year: bool | None, countdown: bool) -> Markup:
    """`Lang.when`, kept: a channel page names the same few instants (when a pause ends) for
    each of its hundred services, and formatting one was a tenth of the page's time."""
    stamp = lang.local(at).isoformat(timespec="minutes")
    extra = Markup(" data-countdown") if countdown else Markup("")
    return Markup('<time datetime="{}"{}>{}</time>').format(stamp, extra, lang.when_text(at, year))


def pick(zh: str, en: str, lang: str) -> str:
    """The English text where there is one, else the Chinese."""
    return en if lang == "en" and en else zh

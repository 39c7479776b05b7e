"""What an alert says: one `Alert` per incident transition, and its text in Chinese and English.

An `Alert` is a snapshot taken when the incident changes (inside the incident's transaction),
stored as JSON in the outbox, so a delivery after a restart says what was true at the time even
if the plan was edited since. It holds names from the plan, never a probe URL, header or body.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from monitor import reasons
from monitor.judge import ended_by_plan
from monitor.notices import STATUS_EN, STATUS_ZH, Notice, NoticeUpdate, dedup_key

if TYPE_CHECKING:
    from monitor.plan import Plan

#: The two directions in plain words; the Chinese ones are what operators say.
DIRECTION_ZH = {"unexpected_up": "应停未停", "unexpected_down": "应开未开"}
DIRECTION_EN = {
    "unexpected_up": "up while expected down",
    "unexpected_down": "down while expected up",
}
EXPECTED_ZH = {"up": "应正常服务", "down": "应停止服务", "any": "不作要求"}
EXPECTED_EN = {"up": "expected up", "down": "expected down", "any": "no expectation"}


def reason_zh(reason: str) -> str:
    """The Chinese of a probe reason (`connection refused` -> `连接被拒绝`), from the one table
    in `monitor.reasons`; a reason it lacks is passed on as it is (operators read alerts)."""
    return reasons.describe(reason, "zh") or reason


def reason_en(reason: str) -> str:
    """The English of a probe reason, from the same table as the Chinese."""
    return reasons.describe(reason, "en") or reason


def iso(value: datetime) -> str:
    """RFC 3339 in UTC with a `Z`, as Alertmanager and most receivers expect."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Alert:
    """One incident transition (`opened`, `resolved`) or a `test` message, ready to send."""

    dedup_key: str
    kind: str
    direction: str
    channel: str
    channel_name: str
    business: str
    service_name: str
    expected: str
    reason: str
    opened_at: str
    at: str
    timezone: str
    incident: int | None = None
    channel_name_en: str = ""
    service_name_en: str = ""
    period: str | None = None
    period_title: str = ""
    period_title_en: str = ""
    resolved_at: str | None = None
    #: Operators' notices (kind `notice`): the notice, the status and text of one update;
    #: `service_name(_en)` then hold the names of the services it is about.
    notice: str = ""
    notice_title: str = ""
    notice_title_en: str = ""
    status: str = ""
    body: str = ""
    body_en: str = ""
    #: Sent by `channel-monitor rehearse`: the titles say so (【演练】, [rehearsal]).
    rehearsal: bool = False

    # --- storage ---------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Alert:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    # --- facts -----------------------------------------------------------------------------

    @property
    def test(self) -> bool:
        return self.kind == "test"

    @property
    def resolved(self) -> bool:
        return self.kind == "resolved"

    @property
    def ended_by_plan(self) -> bool:
        """A resolution the plan brought, not the channel (still serving when the freeze
        ended): it reads "ended", never "recovered", and names the plan's change, or the
        operator would take the portal for one that closed."""
        return self.resolved and ended_by_plan(self.reason)

    @property
    def is_notice(self) -> bool:
        """An update of an operators' notice, not an incident transition."""
        return self.kind == "notice"

    @property
    def serving(self) -> bool:
        """What the probes saw when the incident opened: the direction says it."""
        return self.direction == "unexpected_up"

    def local(self, value: str | None) -> str:
        if not value:
            return "-"
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return at.astimezone(ZoneInfo(self.timezone)).strftime("%Y-%m-%d %H:%M:%S")

    def duration(self, chinese: bool = False) -> str:
        """How long the incident lasted, in whole minutes (`1h05m`, `1 小时 5 分钟`)."""
        if not self.resolved_at:
            return ""
        start = datetime.fromisoformat(self.opened_at.replace("Z", "+00:00"))
        end = datetime.fromisoformat(self.resolved_at.replace("Z", "+00:00"))
        minutes = max(0, round((end - start).total_seconds() / 60))
        hours, minutes = divmod(minutes, 60)
        if chinese:
            return f"{hours} 小时 {minutes} 分钟" if hours else f"{minutes} 分钟"
        return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"

    def where(self, english: bool = False) -> str:
        if english:
            channel = self.channel_name_en or self.channel_name
            service = self.service_name_en or self.service_name
            return f"{channel} / {service}"
        return f"{self.channel_name} · {self.service_name}"

    # --- words -----------------------------------------------------------------------------

    def title_zh(self) -> str:
        return ("【演练】" if self.rehearsal else "") + self._title_zh()

    def title_en(self) -> str:
        return ("[rehearsal] " if self.rehearsal else "") + self._title_en()

    def _title_zh(self) -> str:
        if self.test:
            return "【测试】渠道监测告警测试"
        if self.is_notice:
            return f"【公告·{STATUS_ZH.get(self.status, self.status)}】{self.notice_title}"
        if self.ended_by_plan:
            state = "已结束"
        else:
            state = "已恢复" if self.resolved else DIRECTION_ZH[self.direction]
        return f"【{state}】{self.where()}"

    def _title_en(self) -> str:
        if self.test:
            return "[TEST] channel-monitor alert test"
        if self.is_notice:
            status = STATUS_EN.get(self.status, self.status).upper()
            return f"[NOTICE: {status}] {self.notice_title_en}"
        words = DIRECTION_EN[self.direction].upper()
        if self.ended_by_plan:
            return f"[ENDED BY THE PLAN: {words}] {self.where(True)}"
        return f"[{'RESOLVED: ' + words if self.resolved else words}] {self.where(True)}"

    def lines_zh(self) -> list[str]:
        """The Chinese body, one fact a line (without the title)."""
        if self.test:
            return [
                "这是一条测试消息，用于确认告警通道可用，无需处理。",
                f"发送时间：{self.local(self.at)}（{self.timezone}）",
            ]
        if self.is_notice:
            about = [f"涉及：{self.service_name}"] if self.service_name else []
            return [
                self.body,
                *about,
                f"发布时间：{self.local(self.at)}（{self.timezone}）",
                f"公告：{self.notice}",
            ]
        period = f"（时段：{self.period_title or self.period}）" if self.period else ""
        direction = DIRECTION_ZH[self.direction]
        if self.ended_by_plan:
            return [
                f"事件：{direction}，因计划变更而结束",
                f"结束原因：{reason_zh(self.reason)}",
                f"原计划：{EXPECTED_ZH.get(self.expected, self.expected)}{period}",
                f"开始：{self.local(self.opened_at)}",
                f"结束：{self.local(self.resolved_at)}（持续 {self.duration(chinese=True)}）",
                f"事件编号：#{self.incident}",
            ]
        if self.resolved:
            return [
                f"事件：{direction}，已恢复",
                f"计划：{EXPECTED_ZH.get(self.expected, self.expected)}{period}",
                f"最新观测：{reason_zh(self.reason)}",
                f"开始：{self.local(self.opened_at)}",
                f"恢复：{self.local(self.resolved_at)}（持续 {self.duration(chinese=True)}）",
                f"事件编号：#{self.incident}",
            ]
        observed = "仍在提供服务" if self.serving else "无法提供服务"
        return [
            f"事件：{direction}",
            f"计划：{EXPECTED_ZH.get(self.expected, self.expected)}{period}",
            f"观测：{observed}（{reason_zh(self.reason)}）",
            f"开始：{self.local(self.opened_at)}（{self.timezone}）",
            f"事件编号：#{self.incident}",
        ]

    def lines_en(self) -> list[str]:
        """The English body, one fact a line (without the title)."""
        if self.test:
            return [
                "A test message to check this alert channel; no action needed.",
                f"Sent at {self.local(self.at)} ({self.timezone}).",
            ]
        if self.is_notice:
            names = self.service_name_en or self.service_name
            about = [f"About: {names}"] if names else []
            return [
                self.body_en,
                *about,
                f"Posted: {self.local(self.at)} ({self.timezone})",
                f"Notice: {self.notice}",
            ]
        period = f" (period: {self.period_title_en or self.period})" if self.period else ""
        direction = DIRECTION_EN[self.direction]
        expected = EXPECTED_EN.get(self.expected, self.expected)
        if self.ended_by_plan:
            return [
                f"Incident: {direction}, ended by a change of the plan",
                f"Why it ended: {reason_en(self.reason)}",
                f"Plan when it opened: {expected}{period}",
                f"Opened: {self.local(self.opened_at)}",
                f"Ended: {self.local(self.resolved_at)} (lasted {self.duration()})",
                f"Incident #{self.incident}",
            ]
        if self.resolved:
            return [
                f"Incident: {direction}, resolved",
                f"Plan: {expected}{period}",
                f"Last observation: {reason_en(self.reason)}",
                f"Opened: {self.local(self.opened_at)}",
                f"Resolved: {self.local(self.resolved_at)} (lasted {self.duration()})",
                f"Incident #{self.incident}",
            ]
        observed = "serving" if self.serving else "not serving"
        return [
            f"Incident: {direction}",
            f"Plan: {expected}{period}",
            f"Observed: {observed} ({reason_en(self.reason)})",
            f"Since: {self.local(self.opened_at)} ({self.timezone})",
            f"Incident #{self.incident}",
        ]

    def text(self) -> str:
        """Plain text: the Chinese, then the English below."""
        return "\n".join([self.title_zh(), *self.lines_zh(), "", self.title_en(), *self.lines_en()])

    def markdown(self) -> str:
        """Markdown that WeCom, DingTalk and Feishu robots all render."""
        zh = "\n".join(f"> {line}" for line in self.lines_zh())
        en = "\n".join(f"> {line}" for line in self.lines_en())
        return f"### {self.title_zh()}\n{zh}\n\n**{self.title_en()}**\n{en}"


def notice_alert(plan: Plan, notice: Notice, index: int, update: NoticeUpdate) -> Alert:
    """The message of one update of an operators' notice, in both languages, with the
    services by name."""
    refs = [plan.service(*key) for key in notice.service_keys()]
    stamp = iso(update.at)
    return Alert(
        dedup_key=dedup_key(notice, index, update),
        kind="notice",
        direction="",
        channel="",
        channel_name="",
        business="",
        service_name="、".join(f"{r.channel.name} · {r.service.name}" for r in refs),
        service_name_en="; ".join(
            f"{r.channel.name_en or r.channel.name} / {r.service.name_en or r.service.name}"
            for r in refs
        ),
        expected="",
        reason="",
        opened_at=stamp,
        at=stamp,
        timezone=plan.zone.key,
        notice=notice.id,
        notice_title=notice.title,
        notice_title_en=notice.title_en,
        status=update.status,
        body=update.text,
        body_en=update.text_en,
        rehearsal=plan.config.rehearsal is not None,
    )


def test_alert(at: datetime, timezone: str) -> Alert:
    """The clearly marked message of `channel-monitor alerts test`."""
    stamp = iso(at)
    return Alert(
        dedup_key=f"test-{int(at.timestamp())}",
        kind="test",
        direction="unexpected_up",
        channel="channel-monitor",
        channel_name="渠道监测",
        channel_name_en="channel monitor",
        business="alert-test",
        service_name="告警测试",
        service_name_en="alert test",
        expected="any",
        reason="test",
        opened_at=stamp,
        at=stamp,
        timezone=timezone,
    )

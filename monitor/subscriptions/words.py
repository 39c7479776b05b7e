"""What subscribers are told, in both languages, in citizens' words (no operators' detail:
no reasons, no probes, no periods' ids)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

WORDS: dict[str, dict[str, str]] = {
    "zh": {
        "paused": "暂停",
        "reopened": "恢复",
        "reminder": "提醒",
        "confirm_subject": "请确认订阅服务状态通知",
        "confirm_body": (
            "您（或他人用您的邮箱）在服务状态页订阅了以下服务的通知：\n\n{services}\n\n"
            "请打开下面的链接并点击“确认订阅”按钮：\n{link}\n\n"
            "如果不是您本人操作，请忽略本邮件；48 小时内未确认的订阅将被删除。"
        ),
        "paused_line": "· {service}：已按计划暂停办理，计划于 {reopens} 恢复",
        "paused_open_end": "· {service}：已按计划暂停办理，恢复时间另行通知",
        "reopened_line": "· {service}：已按计划恢复办理",
        "remind_paused": "· {service}：将于 {at} 按计划暂停办理",
        "remind_reopened": "· {service}：将于 {at} 按计划恢复办理",
        "down_line": "· {service}：按计划应可办理，但目前无法使用，我们正在处理",
        "up_line": "· {service}：已恢复正常，可以办理",
        "more": "等 {count} 项服务",
        "subject_plan": "【{word}】{service}{more}",
        "subject_remind": "【{word}】{service}{more}将于 {at} {change}",
        "subject_down": "【暂停】{service} 暂时无法办理",
        "subject_up": "【恢复】{service} 已恢复办理",
        "subject_notice": "【通知】{title}",
        "notice_body": "{at} 发布：\n{text}",
        "footer": "\n\n退订：{link}\n（打开链接后点击“退订”，将删除您的邮箱和全部订阅。）",
        "page_confirm": "确认订阅",
        "page_confirm_text": "点击下面的按钮确认订阅服务状态通知。",
        "page_confirmed": "订阅已确认。服务暂停、恢复时我们会发邮件通知您。",
        "page_unsubscribe": "退订",
        "page_unsubscribe_text": "点击下面的按钮退订，您的邮箱和全部订阅将被删除。",
        "page_unsubscribed": "已退订，您的邮箱已删除。",
        "page_unknown": "链接无效或已过期（未确认的订阅 48 小时后删除）。",
        "page_accepted": "请查收邮件：我们已向该地址发送确认链接（若该地址可以接收）。",
    },
    "en": {
        "paused": "paused",
        "reopened": "reopened",
        "reminder": "reminder",
        "confirm_subject": "Please confirm your service status subscription",
        "confirm_body": (
            "You (or someone using your address) subscribed on the service status page to:\n\n"
            "{services}\n\nOpen the link below and press “Confirm”:\n{link}\n\n"
            "If this was not you, ignore this mail; unconfirmed subscriptions are deleted "
            "after 48 hours."
        ),
        "paused_line": "- {service}: paused as planned; planned to reopen {reopens}",
        "paused_open_end": "- {service}: paused as planned; reopening to be announced",
        "reopened_line": "- {service}: reopened as planned",
        "remind_paused": "- {service}: pauses as planned at {at}",
        "remind_reopened": "- {service}: reopens as planned at {at}",
        "down_line": "- {service}: should be open as planned but is not working; we are on it",
        "up_line": "- {service}: working again",
        "more": " and {count} more",
        "subject_plan": "[{word}] {service}{more}",
        "subject_remind": "[{word}] {service}{more} {change} at {at}",
        "subject_down": "[paused] {service} is not working",
        "subject_up": "[reopened] {service} is working again",
        "subject_notice": "[notice] {title}",
        "notice_body": "Posted {at}:\n{text}",
        "footer": "\n\nUnsubscribe: {link}\n(Open it and press “Unsubscribe”: your address and "
        "every subscription are deleted.)",
        "page_confirm": "Confirm",
        "page_confirm_text": "Press the button to confirm your subscription.",
        "page_confirmed": "Confirmed. We will mail you when a service pauses or reopens.",
        "page_unsubscribe": "Unsubscribe",
        "page_unsubscribe_text": "Press the button to unsubscribe; your address is deleted.",
        "page_unsubscribed": "Unsubscribed; your address is deleted.",
        "page_unknown": "This link is unknown or expired (unconfirmed ones go after 48 hours).",
        "page_accepted": "Check your mail: we sent a confirmation link to that address (if it "
        "can receive mail).",
    },
}

LANGS = tuple(WORDS)


def when(at: datetime, zone: ZoneInfo, lang: str) -> str:
    """An instant as citizens read it, in the plan's time zone."""
    local = at.astimezone(zone)
    if lang == "zh":
        return f"{local.month}月{local.day}日 {local:%H:%M}"
    return f"{local.day} {local:%B} {local:%H:%M}"

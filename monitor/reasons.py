"""Every reason an observation can give, in the one table the probe, the page, the alerts and
the reports share.

A reason is a fixed English phrase, sometimes with a variable tail (`HTTP 503`,
`timeout after 10s`, `not configured: set WECOM_TOKEN`). The probes write the English; everyone
else translates it here, so a phrase cannot say one thing on the page and another in an alert
(the first version had two tables, and they drifted).

Each row names its tail's parts as `{placeholders}`. A placeholder's kind says what text it
matches and whether it may be shown to citizens: status codes, durations and numbers may;
expressions, pushed text, setting names and exception types are for operators only, so a row with
such a tail also says what the page writes instead. Text that matches no row is never passed on
to the page (it might be whatever a server answered).

To add a reason: add one `Reason` row (both languages; a `public_*` pair if its tail is private)
to the rows of the kind that writes it (`REASONS` in its module under `monitor/kinds/`), or to
`SHARED` below when no one kind owns it; the table gathers the kinds' rows from the registry.
`tests/test_reasons.py` checks that every row has both languages and that every reason the
monitor's code writes resolves through this table.
"""

from __future__ import annotations

import functools

from monitor.kinds import KINDS
from monitor.reason_rows import PARTS as PARTS
from monitor.reason_rows import Part as Part
from monitor.reason_rows import Reason

#: The rows no one kind owns: network failures that the http and browser kinds both report,
#: and the monitor's own words (not configured, removed, ended by the plan, its own fault).
SHARED: tuple[Reason, ...] = (
    Reason("timeout after {duration}", "{duration} 内无响应", "no answer within {duration}"),
    Reason("connection refused", "连接被拒绝", "connection refused"),
    Reason("connection reset", "连接被中断", "connection dropped"),
    Reason("DNS lookup failed", "域名解析失败", "the name does not resolve"),
    Reason("TLS certificate expired", "证书已过期", "certificate expired"),
    Reason("TLS certificate not trusted", "证书不受信任", "certificate not trusted"),
    Reason("TLS handshake failed", "加密连接失败", "secure connection failed"),
    Reason(
        "TLS handshake failed ({what})",
        "加密连接失败（{what}）",
        "secure connection failed ({what})",
        "加密连接失败",
        "secure connection failed",
    ),
    Reason("too many redirects", "重定向次数过多", "too many redirects"),
    Reason("connection failed", "连接失败", "connection failed"),
    Reason(
        "connection failed ({type})",
        "连接失败（{type}）",
        "connection failed ({type})",
        "连接失败",
        "connection failed",
    ),
    Reason(
        "not configured: set {name}",
        "未配置：请设置 {name}",
        "not configured: set {name}",
        "监测尚未配置",
        "monitoring is not configured yet",
    ),
    Reason("removed from the plan", "已从计划中移除", "removed from the plan"),
    # An incident the plan ended, not the channel (`monitor.judge.PLAN_ENDED`). No tail: the
    # words hold nothing private, so the page shows them as they are.
    Reason(
        "plan now expects up; the channel never closed",
        "计划已改为开放，渠道始终未暂停",
        "the plan now expects it up; the channel never closed",
    ),
    Reason(
        "plan no longer expects down; the channel never closed",
        "计划不再要求暂停，渠道始终未暂停",
        "the plan no longer expects it down; the channel never closed",
    ),
    Reason(
        "plan now expects down; the channel never opened",
        "计划已改为暂停，渠道始终未开放",
        "the plan now expects it down; the channel never opened",
    ),
    Reason(
        "plan no longer expects up; the channel never opened",
        "计划不再要求开放，渠道始终未开放",
        "the plan no longer expects it up; the channel never opened",
    ),
    Reason(
        "probe failed ({type})",
        "监测本身出错（{type}）",
        "the check itself failed ({type})",
        "监测本身出错",
        "the check itself failed",
    ),
)

#: The table: every kind's rows from the registry, then the shared ones. Order matters only
#: where two rows could match one text (none do today).
REASONS: tuple[Reason, ...] = (*(row for kind in KINDS.values() for row in kind.reasons), *SHARED)

#: The fixed words every reason starts with (the probe's `REASON_PHRASES`).
PHRASES: tuple[str, ...] = tuple(dict.fromkeys(r.prefix for r in REASONS))

#: Rows by their first word, so a lookup tries two or three patterns, not the whole table.
_BY_HEAD: dict[str, tuple[Reason, ...]] = {}
for _row in REASONS:
    _head = _row.phrase.split(" ", 1)[0]
    _BY_HEAD[_head] = (*_BY_HEAD.get(_head, ()), _row)


def lookup(reason: str | None) -> tuple[Reason, dict[str, str]] | None:
    """The row a reason text is an instance of, with its tail's parts; None if it is none."""
    if not reason:
        return None
    text = reason.strip()
    for row in _BY_HEAD.get(text.split(" ", 1)[0], ()):
        match = row.regex.fullmatch(text)
        if match:
            return row, match.groupdict()
    return None


@functools.lru_cache(maxsize=4096)
def describe(reason: str | None, lang: str, public: bool = False) -> str | None:
    """A reason in words for people (`lang` is `zh` or `en`); None when the table has no row
    for it. `public` leaves out the parts citizens must not read (the page's words)."""
    found = lookup(reason)
    if found is None:
        return None
    row, parts = found
    return row.words(lang, public).format(**parts)


def public_phrase(reason: str | None) -> str | None:
    """The English phrase safe to publish as data (status.json): the reason itself when its
    tail is public, its fixed words when not, None when it is no known reason."""
    found = lookup(reason)
    if found is None:
        return None
    row, _ = found
    return row.prefix if row.private else (reason or "").strip()

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

To add a reason: add one `Reason` row (both languages; a `public_*` pair if its tail is private).
`tests/test_reasons.py` checks that every row has both languages and that every reason the
monitor's code writes resolves through this table.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

_DURATION = r"\d+(?:ms|s|m|h|d)(?:\d+(?:ms|s|m|h|d))*"
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:Inf|inf)|NaN|nan"
#: One setting name, or several (`A, B`) when a probe needs more than one.
_NAMES = r"[A-Za-z_]\w*(?:(?:, | and )[A-Za-z_]\w*)*"


@dataclass(frozen=True, slots=True)
class Part:
    """What one placeholder of a tail matches, and whether citizens may read it."""

    pattern: str
    public: bool


#: Placeholder name -> what it matches. A new tail reuses one of these or adds its own here.
PARTS: dict[str, Part] = {
    "code": Part(r"\d{3}", public=True),
    "duration": Part(_DURATION, public=True),
    "value": Part(_NUMBER, public=True),
    "limit": Part(_NUMBER, public=True),
    "op": Part(r"<=|>=|==|!=|<|>", public=True),
    "expr": Part(r".+", public=False),
    "what": Part(r".+", public=False),
    "text": Part(r".*", public=False),
    "name": Part(_NAMES, public=False),
    "type": Part(r"[A-Za-z_][\w.]*", public=False),
}

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True, slots=True)
class Reason:
    """One row: the probe's English phrase and its words for people.

    `zh` and `en` are for operators (alerts, reports, `check`) and may use every placeholder;
    `public_zh` / `public_en` are what the page writes when the tail holds a private part.
    """

    phrase: str
    zh: str
    en: str
    public_zh: str = ""
    public_en: str = ""
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern, at = "", 0
        for match in _PLACEHOLDER.finditer(self.phrase):
            part = PARTS[match.group(1)]
            pattern += re.escape(self.phrase[at : match.start()])
            pattern += f"(?P<{match.group(1)}>{part.pattern})"
            at = match.end()
        pattern += re.escape(self.phrase[at:])
        object.__setattr__(self, "regex", re.compile(pattern))

    @property
    def prefix(self) -> str:
        """The fixed words the phrase starts with (what a probe's reason starts with)."""
        return self.phrase.split("{", 1)[0].rstrip(" (:")

    @property
    def placeholders(self) -> tuple[str, ...]:
        return tuple(_PLACEHOLDER.findall(self.phrase))

    @property
    def private(self) -> bool:
        """Whether the tail holds something citizens must not read."""
        return any(not PARTS[name].public for name in self.placeholders)

    def words(self, lang: str, public: bool) -> str:
        """The template in `lang` (`zh` or `en`); the page's own when `public` and private."""
        if public and self.private:
            return self.public_zh if lang == "zh" else self.public_en
        return self.zh if lang == "zh" else self.en


#: The table. Order matters only where two rows could match one text (none do today).
REASONS: tuple[Reason, ...] = (
    Reason("HTTP {code}", "服务器返回 HTTP {code}", "server answered HTTP {code}"),
    Reason(
        "response slower than {duration}", "响应慢于 {duration}", "response slower than {duration}"
    ),
    Reason(
        "body matches maintenance notice",
        "页面显示维护公告",
        "the page shows a maintenance notice",
    ),
    Reason(
        "body does not match", "页面内容不是正常办理页面", "the page is not the usual service page"
    ),
    Reason("body is not JSON", "返回内容不是 JSON", "the answer is not JSON"),
    Reason(
        "json condition failed: {expr}",
        "返回的 JSON 不满足条件：{expr}",
        "the JSON answer fails the condition: {expr}",
        "返回内容不符合预期",
        "the answer is not as expected",
    ),
    Reason(
        "rendered text matches maintenance notice",
        "浏览器打开的页面显示维护公告",
        "the page, opened in a browser, shows a maintenance notice",
    ),
    Reason(
        "rendered text does not match",
        "浏览器打开的页面不是正常办理页面",
        "the page, opened in a browser, is not the usual service page",
    ),
    Reason(
        "browser not available: {what}",
        "监测用的浏览器不可用：{what}",
        "the monitoring browser is not available: {what}",
        "监测用的浏览器不可用",
        "the monitoring browser is not available",
    ),
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
        "invalid HTTP answer ({what})",
        "服务器的应答不合 HTTP 规范（{what}）",
        "the server's answer is not valid HTTP ({what})",
        "服务器的应答无法识别",
        "the server's answer could not be read",
    ),
    Reason(
        "content encoding not supported: {what}",
        "应答内容的压缩方式无法解读：{what}",
        "the answer's content encoding cannot be read: {what}",
        "应答内容无法读取，无法判断",
        "the answer's content could not be read, so the check cannot tell",
    ),
    Reason(
        "query value {value} {op} {limit}",
        "监测指标 {value} {op} {limit}",
        "monitored value {value} {op} {limit}",
    ),
    Reason("query returned no data", "监测指标查询无数据", "the metric query returned no data"),
    Reason("query failed", "监测指标查询失败", "the metric query failed"),
    Reason(
        "query failed ({what})",
        "监测指标查询失败（{what}）",
        "the metric query failed ({what})",
        "监测指标查询失败",
        "the metric query failed",
    ),
    Reason(
        "no push for {duration}",
        "{duration} 内未收到渠道推送",
        "no push from the channel for {duration}",
    ),
    Reason("push", "收到渠道推送", "the channel reported in"),
    Reason(
        "pushed: {text}",
        "渠道推送：{text}",
        "the channel pushed: {text}",
        "渠道报告了状态",
        "the channel reported its state",
    ),
    Reason(
        "not configured: set {name}",
        "未配置：请设置 {name}",
        "not configured: set {name}",
        "监测尚未配置",
        "monitoring is not configured yet",
    ),
    Reason("removed from the plan", "已从计划中移除", "removed from the plan"),
    Reason(
        "probe failed ({type})",
        "监测本身出错（{type}）",
        "the check itself failed ({type})",
        "监测本身出错",
        "the check itself failed",
    ),
)

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

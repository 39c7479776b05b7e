"""The one vocabulary of reasons (`monitor/reasons.py`): every row in both languages, and the
probe, the page, status.json and the alerts all reading the same row."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from monitor import reasons
from monitor.alerts.message import reason_en, reason_zh
from monitor.kinds import KINDS
from monitor.site.feeds import safe_reason
from monitor.site.words import reason_text

ROOT = Path(__file__).resolve().parent.parent
CJK = re.compile(r"[\u4e00-\u9fff]")

#: A value of each kind of placeholder, to build an instance of every row.
SAMPLES = {
    "code": "503",
    "duration": "10s",
    "value": "3",
    "limit": "0",
    "op": ">",
    "expr": '$.status == "ok"',
    "what": "chromium not found",
    "text": "kiosk 7 out of paper",
    "name": "WECOM_KEY",
    "type": "ClientOSError",
}


def instance(row: reasons.Reason) -> str:
    return row.phrase.format(**{name: SAMPLES[name] for name in row.placeholders})


ROWS = pytest.mark.parametrize("row", reasons.REASONS, ids=lambda r: r.phrase)


def test_samples_cover_every_kind_of_placeholder() -> None:
    assert set(SAMPLES) == set(reasons.PARTS)


@ROWS
def test_every_reason_has_both_languages(row: reasons.Reason) -> None:
    for public in (False, True):
        zh, en = row.words("zh", public), row.words("en", public)
        assert CJK.search(zh), (row.phrase, public, zh)
        assert en and not CJK.search(en), (row.phrase, public, en)
        # The same tail in both languages, so neither loses what the other says.
        assert (
            set(row.placeholders if not public or not row.private else ())
            == set(re.findall(r"\{(\w+)\}", zh))
            == set(re.findall(r"\{(\w+)\}", en))
        ), row.phrase


@ROWS
def test_probe_page_status_and_alerts_resolve_every_row_through_the_table(
    row: reasons.Reason,
) -> None:
    text = instance(row)
    found = reasons.lookup(text)
    assert found is not None and found[0] is row, text
    assert text.startswith(row.prefix) and row.prefix in reasons.PHRASES
    for lang in ("zh", "en"):
        assert reason_text(text, lang) == reasons.describe(text, lang, public=True)
    assert reason_zh(text) == reasons.describe(text, "zh")
    assert reason_en(text) == reasons.describe(text, "en")
    assert safe_reason(text) == (row.prefix if row.private else text)


@ROWS
def test_the_page_never_shows_a_private_tail(row: reasons.Reason) -> None:
    text = instance(row)
    for name in row.placeholders:
        if not reasons.PARTS[name].public:
            for lang in ("zh", "en"):
                assert SAMPLES[name] not in reason_text(text, lang)
            assert SAMPLES[name] in reason_zh(text) and SAMPLES[name] in reason_en(text)
            assert SAMPLES[name] not in safe_reason(text)


def test_the_table_is_every_kinds_rows_and_the_shared_ones() -> None:
    # One table, gathered from the registry: a kind's rows reach the page, the alerts and the
    # report without an edit here, and no phrase is written by two kinds.
    owned = [row for kind in KINDS.values() for row in kind.reasons]
    assert all(kind.reasons for kind in KINDS.values())
    assert set(reasons.REASONS) == set(owned) | set(reasons.SHARED)
    phrases = [row.phrase for row in reasons.REASONS]
    assert len(set(phrases)) == len(phrases)
    assert len(set(reasons.PHRASES)) == len(reasons.PHRASES)


def test_the_two_drifted_phrases_read_alike_everywhere() -> None:
    # Alerts once said 连接被重置 and TLS 握手失败 where the page said 连接被中断 and 加密连接失败.
    assert reason_zh("connection reset") == reason_text("connection reset", "zh") == "连接被中断"
    assert reason_zh("TLS handshake failed") == reason_text("TLS handshake failed", "zh")
    assert reason_text("TLS handshake failed", "zh") == "加密连接失败"


def test_text_that_is_no_reason_never_reaches_the_page() -> None:
    for text in ("HTTP 503 token=abc", "<b>whatever</b>", "HTTP", "timeout after soon", "pushy"):
        assert reasons.lookup(text) is None, text
        assert reason_text(text, "zh") == "其他原因"
        assert safe_reason(text) == "other"


def _literal_reasons(tree: ast.AST) -> list[tuple[int, str, bool]]:
    """(line, text, whole) of every literal a module gives as a reason: assigned to a name
    `reason` (alone or in a tuple) or passed as `reason=` to an `Observation`. `whole` is False
    for an f-string, whose text is then its fixed start."""

    def literal(node: ast.AST) -> tuple[str, bool] | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value, True
        if isinstance(node, ast.JoinedStr):
            head = node.values[0] if node.values else None
            start = head.value if isinstance(head, ast.Constant) else ""
            return start, False
        return None

    found: list[tuple[int, str, bool]] = []
    for node in ast.walk(tree):
        pairs: list[tuple[ast.AST, ast.AST]] = []
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                    pairs += zip(target.elts, node.value.elts, strict=False)
                else:
                    pairs.append((target, node.value))
        for target, value in pairs:
            if isinstance(target, ast.Name) and target.id == "reason":
                hit = literal(value)
                if hit:
                    found.append((node.lineno, *hit))
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Observation":
            for keyword in node.keywords:
                hit = literal(keyword.value) if keyword.arg == "reason" else None
                if hit:
                    found.append((node.lineno, *hit))
    return found


def test_every_reason_the_monitor_writes_is_in_the_table() -> None:
    seen = 0
    for path in sorted((ROOT / "monitor").rglob("*.py")):
        for line, text, whole in _literal_reasons(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(ROOT)}:{line}: {text!r}"
            if whole:
                assert reasons.lookup(text) is not None, where
            else:
                assert any(text.startswith(p) for p in reasons.PHRASES), where
            seen += 1
    assert seen >= 10  # the probe's own reasons at least: the scan still finds them


@pytest.mark.parametrize(
    ("text", "zh"),
    [
        ("query value 1e+06 >= 0.5", "监测指标 1e+06 >= 0.5"),
        ("query value NaN > 0", "监测指标 NaN > 0"),
        ("query value -Inf < 1", "监测指标 -Inf < 1"),
        (
            "not configured: set ZWFW_TOKEN, KIOSK_PUSH_TOKEN",
            "未配置：请设置 ZWFW_TOKEN, KIOSK_PUSH_TOKEN",
        ),
        ("json condition failed: code == `0`", "返回的 JSON 不满足条件：code == `0`"),
        ("response slower than 1m30s", "响应慢于 1m30s"),
        ("no push for 5m", "5m 内未收到渠道推送"),
    ],
)
def test_tails_the_new_kinds_write(text: str, zh: str) -> None:
    assert reasons.describe(text, "zh") == zh


def test_every_reason_the_judge_ends_an_incident_with_is_in_the_table() -> None:
    # The judge writes these as constants, which the scan above does not see.
    from monitor.judge import PLAN_ENDED, Verdict

    for reason in PLAN_ENDED.values():
        assert reasons.lookup(reason) is not None, reason
        assert reason_text(reason, "zh") == reasons.describe(reason, "zh"), reason
    assert reason_zh(PLAN_ENDED[(Verdict.UNEXPECTED_UP, "up")]) == "计划已改为开放，渠道始终未暂停"

"""Alerts: the `[[alerts]]` schema, each sink's payload and signature pinned against the
documented formats (respx), and the outbox: one transaction with the incident, retries with
backoff, a dead sink that blocks nobody, `send_resolved` and `directions` routing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import respx
from helpers import async_wait_for

from monitor import alerts
from monitor.alerts import dingtalk, feishu, webhook, wecom
from monitor.alerts.alertmanager import AlertmanagerSink
from monitor.alerts.base import Sink, SinkError
from monitor.alerts.message import Alert, reason_en, reason_zh
from monitor.alerts.sender import AlertSender, alert_for, backoff, build_sink
from monitor.cli import main
from monitor.clock import ReplayClock
from monitor.judge import PLAN_ENDED, IncidentEvent, OpenIncident, Verdict
from monitor.part import Part
from monitor.plan import Plan
from monitor.plan.errors import ConfigError
from monitor.plan.load import validate_config
from monitor.plan.sinks import AlertSink
from monitor.store import Store

OPENED_AT = datetime(2022, 6, 22, 10, 10, 5, tzinfo=UTC)  # 18:10:05 in Beijing
RESOLVED_AT = OPENED_AT + timedelta(minutes=42)
WECOM_URL = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=wecom-key-0001"
DINGTALK_URL = "https://oapi.dingtalk.com/robot/send?access_token=ding-token-0002"
FEISHU_URL = "https://open.feishu.cn/open-apis/bot/v2/hook/feishu-hook-0003"
AM_URL = "http://alertmanager.test:9093"
HOOK_URL = "https://hooks.example.test/channel-monitor?token=hook-token-0004"


def plan_data(alert_tables: list[dict] | None = None) -> dict:
    return {
        "monitor": {"timezone": "Asia/Shanghai"},
        "periods": {
            "freeze": {
                "title": "系统切换冻结期",
                "title_en": "cutover freeze",
                "start": datetime(2022, 6, 22, 18, 0),
                "end": datetime(2022, 7, 25, 8, 30),
            }
        },
        "channels": [
            {
                "id": "hbzwfw",
                "name": "湖北政务服务网",
                "name_en": "Hubei government services portal",
                "kind": "web",
                "group": "online",
                "services": [
                    {
                        "id": "social-insurance",
                        "name": "社保缴费",
                        "name_en": "social insurance payment",
                        "expect": [{"during": "freeze", "state": "down"}],
                        "probe": {"url": "https://probe.example.test/secret-probe-path"},
                    },
                    {
                        "id": "medical",
                        "name": "医保缴费",
                        "name_en": "medical insurance payment",
                        "probe": {"url": "https://probe.example.test/medical"},
                    },
                ],
            }
        ],
        "alerts": alert_tables or [],
    }


def make_plan(alert_tables: list[dict] | None = None, env: dict | None = None) -> Plan:
    return Plan(validate_config(plan_data(alert_tables), env=env or {}))


def problems(alert_tables: list[dict], env: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_config(plan_data(alert_tables), env=env or {})
    return info.value.problems


def opened_alert(direction: str = "unexpected_up", incident: int = 7) -> Alert:
    return Alert(
        dedup_key=f"incident-{incident}-opened",
        kind="opened",
        direction=direction,
        channel="hbzwfw",
        channel_name="湖北政务服务网",
        channel_name_en="Hubei government services portal",
        business="social-insurance",
        service_name="社保缴费",
        service_name_en="social insurance payment",
        expected="down" if direction == "unexpected_up" else "up",
        period="freeze",
        period_title="系统切换冻结期",
        period_title_en="cutover freeze",
        reason="HTTP 200" if direction == "unexpected_up" else "connection refused",
        opened_at="2022-06-22T10:10:05Z",
        at="2022-06-22T10:10:05Z",
        timezone="Asia/Shanghai",
        incident=incident,
    )


def resolved_alert(direction: str = "unexpected_up", incident: int = 7) -> Alert:
    base = opened_alert(direction, incident)
    data = json.loads(base.to_json())
    data.update(
        dedup_key=f"incident-{incident}-resolved",
        kind="resolved",
        reason="HTTP 503",
        resolved_at="2022-06-22T10:52:05Z",
        at="2022-06-22T10:52:05Z",
    )
    return Alert(**data)


def sink(table: dict, env: dict | None = None) -> Sink:
    config = make_plan([table], env).config.alerts[0]
    return build_sink(config, httpx.AsyncClient())


def sent_json(route: respx.Route, index: int = -1) -> object:
    return json.loads(route.calls[index].request.content)


# --- config ----------------------------------------------------------------------------------


def test_sink_defaults() -> None:
    (config,) = make_plan([{"type": "wecom", "url": WECOM_URL}]).config.alerts
    assert config.name == "wecom"
    assert config.directions == ("unexpected_up", "unexpected_down")
    assert config.send_resolved is True
    assert config.secret is None
    assert "wecom-key" not in repr(config) and "wecom-key" not in str(config)


def test_environment_references_are_substituted() -> None:
    env = {"WECOM_KEY": "k-123", "DING_SECRET": "SECabc"}
    tables = [
        {"type": "wecom", "url": "https://qyapi.weixin.qq.com/send?key=${WECOM_KEY}"},
        {"type": "dingtalk", "url": DINGTALK_URL, "secret": "${DING_SECRET}"},
    ]
    wecom_sink, ding_sink = make_plan(tables, env).config.alerts
    assert wecom_sink.url == "https://qyapi.weixin.qq.com/send?key=k-123"
    assert ding_sink.secret == "SECabc"


def test_missing_environment_variable_is_named_and_nothing_leaks() -> None:
    tables = [
        {"type": "wecom", "url": "https://qyapi.weixin.qq.com/send?key=tok-${WECOM_KEY}"},
        {"type": "feishu", "url": FEISHU_URL, "secret": "${FEISHU_SECRET}"},
    ]
    found = problems(tables)
    assert found == [
        'channels.toml: alerts[0].url: environment variable "WECOM_KEY" referenced here is '
        "not set or empty; expected it in the environment of channel-monitor",
        'channels.toml: alerts[1].secret: environment variable "FEISHU_SECRET" referenced here '
        "is not set or empty; expected it in the environment of channel-monitor",
    ]
    assert not any("qyapi" in p or "feishu-hook" in p or "tok-" in p for p in found)


def test_empty_environment_variable_counts_as_missing() -> None:
    found = problems([{"type": "dingtalk", "url": DINGTALK_URL, "secret": "${S}"}], {"S": ""})
    assert found == [
        'channels.toml: alerts[0].secret: environment variable "S" referenced here is not set '
        "or empty; expected it in the environment of channel-monitor"
    ]


def test_alert_config_errors_name_key_path_and_expectation() -> None:
    tables = [
        {"url": WECOM_URL},
        {"type": "slack", "url": "https://hooks.example.test/x"},
        {"type": "webhook", "url": "ftp://user:pw@host/x", "directions": []},
        {"type": "webhook", "name": "hook-2", "url": HOOK_URL, "directions": ["up"]},
        {"type": "wecom", "name": "wecom-b", "url": WECOM_URL, "secret": "s3cr3t-value"},
        {"type": "feishu", "url": FEISHU_URL, "send_resolvd": False},
        {"type": "feishu", "url": FEISHU_URL},
        {"type": "alertmanager", "url": 9093},
    ]
    found = problems(tables)
    expected = [
        "channels.toml: alerts[0].type: missing required key",
        "channels.toml: alerts[1].type: got \"slack\"; expected one of 'alertmanager', "
        "'webhook', 'wecom', 'dingtalk' or 'feishu'",
        "channels.toml: alerts[2].url: expected an http:// or https:// URL",
        "channels.toml: alerts[2].directions: expected at least one entry",
        'channels.toml: alerts[3].directions[0]: got "up"; expected one of '
        "'unexpected_up' or 'unexpected_down'",
        'channels.toml: alerts[5].send_resolvd: unknown key "send_resolvd" (did you mean '
        '"send_resolved"?); allowed keys: type, url, name, secret, directions, send_resolved',
        "channels.toml: alerts[7].url: expected a string (input should be a valid string)",
        'channels.toml: alerts[6].name: duplicate sink name "feishu"; it is already used by '
        "alerts[5]; expected a distinct `name` for each [[alerts]] table (the default name is "
        "its type)",
        "channels.toml: alerts[4].secret: a wecom sink does not sign its requests; expected "
        "`secret` only with type webhook, dingtalk, feishu",
    ]
    assert sorted(found) == sorted(expected)
    for secret in ("wecom-key", "user:pw", "s3cr3t", "hook-token", "feishu-hook"):
        assert not any(secret in p for p in found)


def test_plan_without_alerts_needs_no_environment() -> None:
    assert make_plan().config.alerts == ()


# --- messages --------------------------------------------------------------------------------


def test_message_states_direction_plainly_in_chinese_then_english() -> None:
    up = opened_alert("unexpected_up").text()
    assert up.startswith("【应停未停】湖北政务服务网 · 社保缴费")
    assert "计划：应停止服务（时段：系统切换冻结期）" in up
    assert "观测：仍在提供服务（服务器返回 HTTP 200）" in up
    assert "Observed: serving (server answered HTTP 200)" in up
    assert "开始：2022-06-22 18:10:05（Asia/Shanghai）" in up
    assert up.index("应停未停") < up.index("[UP WHILE EXPECTED DOWN]")
    down = opened_alert("unexpected_down").text()
    assert down.startswith("【应开未开】")
    assert "观测：无法提供服务（连接被拒绝）" in down
    assert "Observed: not serving (connection refused)" in down
    resolved = resolved_alert().text()
    assert resolved.startswith("【已恢复】")
    assert "恢复：2022-06-22 18:52:05（持续 42 分钟）" in resolved
    assert "Resolved: 2022-06-22 18:52:05 (lasted 42m)" in resolved
    assert "[RESOLVED: UP WHILE EXPECTED DOWN]" in resolved
    assert "probe.example.test" not in up + down + resolved


def test_an_incident_the_plan_ended_reads_ended_not_recovered() -> None:
    # Still serving when the freeze ended: the portal never closed, and the alert says so.
    up = resolved_alert()
    up = Alert(**{**json.loads(up.to_json()), "reason": PLAN_ENDED[(Verdict.UNEXPECTED_UP, "up")]})
    text = up.text()
    assert up.ended_by_plan
    assert text.startswith("【已结束】湖北政务服务网 · 社保缴费")
    assert "已恢复" not in text and "RESOLVED" not in text
    assert "结束原因：计划已改为开放，渠道始终未暂停" in text
    assert "Why it ended: the plan now expects it up; the channel never closed" in text
    assert "[ENDED BY THE PLAN: UP WHILE EXPECTED DOWN]" in text
    assert "结束：2022-06-22 18:52:05（持续 42 分钟）" in text
    assert webhook.body(up)["ended_by_plan"] is True
    down = resolved_alert("unexpected_down")
    down = Alert(
        **{**json.loads(down.to_json()), "reason": PLAN_ENDED[(Verdict.UNEXPECTED_DOWN, "down")]}
    )
    assert "结束原因：计划已改为暂停，渠道始终未开放" in down.markdown()
    # A service an edit of the plan removed: ended, nothing seen of the channel.
    gone = Alert(**{**json.loads(resolved_alert().to_json()), "reason": "removed from the plan"})
    assert gone.ended_by_plan
    assert gone.text().startswith("【已结束】湖北政务服务网 · 社保缴费")
    assert "结束原因：已从计划中移除" in gone.text() and "已恢复" not in gone.text()
    assert "Why it ended: removed from the plan" in gone.text()
    # A recovery of the channel itself keeps its words.
    assert not resolved_alert().ended_by_plan
    assert webhook.body(resolved_alert())["ended_by_plan"] is False


def test_reason_translation_is_the_tables() -> None:
    # The page's words (tests/test_reasons.py), not a second set that drifts.
    assert reason_zh("timeout after 10s") == "10s 内无响应"
    assert reason_zh("connection reset") == "连接被中断"
    assert reason_en("connection reset") == "connection dropped"
    # Operators read the private tail the page leaves out; unknown text reaches them as it is.
    assert reason_zh("not configured: set WECOM_KEY") == "未配置：请设置 WECOM_KEY"
    assert reason_zh("something new") == "something new"


def test_alert_round_trips_through_json() -> None:
    alert = resolved_alert("unexpected_down", 3)
    assert Alert.from_json(alert.to_json()) == alert


# --- sinks: documented formats ---------------------------------------------------------------


@respx.mock
async def test_wecom_markdown_payload() -> None:
    route = respx.post(WECOM_URL).respond(200, json={"errcode": 0, "errmsg": "ok"})
    answer = await sink({"type": "wecom", "url": WECOM_URL}).send(opened_alert())
    assert answer == "HTTP 200, errcode 0"
    request = route.calls.last.request
    assert str(request.url) == WECOM_URL
    assert request.headers["content-type"] == "application/json; charset=utf-8"
    body = sent_json(route)
    assert set(body) == {"msgtype", "markdown"}
    assert body["msgtype"] == "markdown"
    assert set(body["markdown"]) == {"content"}
    content = body["markdown"]["content"]
    assert content.startswith(
        '### <font color="warning">【应停未停】湖北政务服务网 · 社保缴费</font>\n'
    )
    assert "> 观测：仍在提供服务（服务器返回 HTTP 200）" in content
    assert "**[UP WHILE EXPECTED DOWN] Hubei government services portal / social" in content
    assert len(content.encode()) <= 4096


def test_wecom_content_is_cut_to_4096_bytes_on_a_character_boundary() -> None:
    long = "应停未停" * 2000
    cut = wecom.truncate_bytes(long, 4096)
    assert len(cut.encode()) <= 4096 and cut.endswith("...")
    cut.encode().decode()  # still valid UTF-8


@respx.mock
@pytest.mark.parametrize(
    ("answer", "permanent"),
    [({"errcode": 93000, "errmsg": "invalid webhook url"}, True), ({"errcode": 45009}, False)],
)
async def test_wecom_error_codes(answer: dict, permanent: bool) -> None:
    respx.post(WECOM_URL).respond(200, json=answer)
    with pytest.raises(SinkError) as info:
        await sink({"type": "wecom", "url": WECOM_URL}).send(opened_alert())
    assert info.value.permanent is permanent
    assert f"errcode {answer['errcode']}" in str(info.value)
    assert "wecom-key" not in str(info.value)


def test_dingtalk_sign_matches_the_documented_scheme() -> None:
    # Base64(HMAC-SHA256(key=secret, message="{timestamp}\n{secret}")), then URL-encoded.
    signed = dingtalk.sign("secret", "1700000000000")
    assert urllib.parse.quote_plus(signed) == "OuzzJR5%2BxZ4%2FEYwqtNt6sMYZQMTa%2FHEGvc9miJe7XzY%3D"


@respx.mock
async def test_dingtalk_signed_markdown_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dingtalk.time, "time", lambda: 1700000000.0)
    route = respx.post(url__startswith="https://oapi.dingtalk.com/robot/send").respond(
        200, json={"errcode": 0, "errmsg": "ok"}
    )
    table = {"type": "dingtalk", "url": DINGTALK_URL, "secret": "secret"}
    assert await sink(table).send(opened_alert("unexpected_down")) == "HTTP 200, errcode 0"
    url = route.calls.last.request.url
    assert url.path == "/robot/send"
    query = urllib.parse.parse_qs(url.query.decode())
    assert query == {
        "access_token": ["ding-token-0002"],
        "timestamp": ["1700000000000"],
        "sign": ["OuzzJR5+xZ4/EYwqtNt6sMYZQMTa/HEGvc9miJe7XzY="],
    }
    assert "sign=OuzzJR5%2BxZ4%2FEYwqtNt6sMYZQMTa%2FHEGvc9miJe7XzY%3D" in url.query.decode()
    body = sent_json(route)
    assert body["msgtype"] == "markdown"
    assert body["markdown"]["title"] == "【应开未开】湖北政务服务网 · 社保缴费"
    text = body["markdown"]["text"]
    assert text.startswith("### 【应开未开】湖北政务服务网 · 社保缴费\n\n> 事件：应开未开\n\n")
    assert "**[DOWN WHILE EXPECTED UP] Hubei" in text


@respx.mock
async def test_dingtalk_without_secret_sends_no_signature() -> None:
    route = respx.post(url__startswith="https://oapi.dingtalk.com/").respond(
        200, json={"errcode": 0}
    )
    await sink({"type": "dingtalk", "url": DINGTALK_URL}).send(opened_alert())
    assert str(route.calls.last.request.url) == DINGTALK_URL


@respx.mock
@pytest.mark.parametrize(("code", "permanent"), [(310000, True), (130101, False)])
async def test_dingtalk_error_codes(code: int, permanent: bool) -> None:
    respx.post(url__startswith="https://oapi.dingtalk.com/").respond(
        200, json={"errcode": code, "errmsg": "sign not match"}
    )
    with pytest.raises(SinkError) as info:
        await sink({"type": "dingtalk", "url": DINGTALK_URL, "secret": "s"}).send(opened_alert())
    assert info.value.permanent is permanent


def test_feishu_sign_matches_the_documented_scheme() -> None:
    # Base64(HMAC-SHA256(key="{timestamp}\n{secret}", message=b"")): the key is the
    # string to sign and the message is empty (unlike DingTalk).
    key = b"1599360473\nsecret"
    expected = base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
    assert feishu.sign("secret", "1599360473") == expected
    assert feishu.sign("secret", "1599360473") != dingtalk.sign("secret", "1599360473")


@respx.mock
async def test_feishu_signed_card(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feishu.time, "time", lambda: 1599360473.9)
    route = respx.post(FEISHU_URL).respond(200, json={"code": 0, "msg": "success", "data": {}})
    table = {"type": "feishu", "url": FEISHU_URL, "secret": "secret"}
    assert await sink(table).send(opened_alert()) == "HTTP 200, code 0"
    body = sent_json(route)
    assert body["timestamp"] == "1599360473"
    assert body["sign"] == feishu.sign("secret", "1599360473")
    assert body["msg_type"] == "interactive"
    card = body["card"]
    assert card["header"] == {
        "title": {"tag": "plain_text", "content": "【应停未停】湖北政务服务网 · 社保缴费"},
        "template": "red",
    }
    first, rule, second = card["elements"]
    assert first["tag"] == "markdown" and first["content"].startswith("事件：应停未停\n")
    assert rule == {"tag": "hr"}
    assert second["content"].startswith("**[UP WHILE EXPECTED DOWN] Hubei")


@respx.mock
async def test_feishu_unsigned_colours() -> None:
    route = respx.post(FEISHU_URL).respond(200, json={"StatusCode": 0, "StatusMessage": "ok"})
    feishu_sink = sink({"type": "feishu", "url": FEISHU_URL})
    await feishu_sink.send(opened_alert("unexpected_down"))
    assert "sign" not in sent_json(route)
    assert sent_json(route)["card"]["header"]["template"] == "orange"
    await feishu_sink.send(resolved_alert())
    assert sent_json(route)["card"]["header"]["template"] == "green"


@respx.mock
@pytest.mark.parametrize(("code", "permanent"), [(19021, True), (11232, False)])
async def test_feishu_error_codes(code: int, permanent: bool) -> None:
    respx.post(FEISHU_URL).respond(200, json={"code": code, "msg": "sign match fail"})
    with pytest.raises(SinkError) as info:
        await sink({"type": "feishu", "url": FEISHU_URL, "secret": "s"}).send(opened_alert())
    assert info.value.permanent is permanent
    assert str(info.value) == f"code {code}: sign match fail"


@respx.mock
async def test_alertmanager_v2_payload() -> None:
    route = respx.post(f"{AM_URL}/api/v2/alerts").respond(200)
    am = sink({"type": "alertmanager", "url": AM_URL + "/"})
    assert isinstance(am, AlertmanagerSink)
    before = datetime.now(UTC)
    await am.send(opened_alert("unexpected_up"))
    (firing,) = sent_json(route)
    assert firing["labels"] == {
        "alertname": "ChannelUpWhileExpectedDown",
        "channel": "hbzwfw",
        "business": "social-insurance",
        "severity": "critical",
    }
    assert firing["startsAt"] == "2022-06-22T10:10:05Z"
    ends = datetime.fromisoformat(firing["endsAt"].replace("Z", "+00:00"))
    assert before + timedelta(minutes=3) < ends < before + timedelta(minutes=5)
    notes = firing["annotations"]
    assert notes["summary"] == "应停未停：湖北政务服务网 · 社保缴费"
    assert notes["summary_en"] == (
        "Up while expected down: Hubei government services portal / social insurance payment"
    )
    assert notes["expected"] == "down" and notes["observed"] == "serving"
    assert notes["reason"] == "HTTP 200" and notes["period"] == "freeze"
    assert notes["channel_name"] == "湖北政务服务网" and notes["service_name_en"]
    assert "计划：应停止服务" in notes["description"]
    assert "Plan: expected down" in notes["description_en"]

    await am.send(resolved_alert("unexpected_down"))
    (resolved,) = sent_json(route)
    assert resolved["labels"]["alertname"] == "ChannelDownWhileExpectedUp"
    assert resolved["labels"]["severity"] == "warning"
    assert resolved["endsAt"] == "2022-06-22T10:52:05Z"


@respx.mock
async def test_webhook_documented_body_and_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhook.time, "time", lambda: 1656000000.5)
    route = respx.post(HOOK_URL).respond(204)
    table = {"type": "webhook", "url": HOOK_URL, "secret": "hook-secret"}
    assert await sink(table).send(opened_alert()) == "HTTP 204"
    request = route.calls.last.request
    assert request.headers["idempotency-key"] == "incident-7-opened"
    assert request.headers["x-channel-monitor-timestamp"] == "1656000000"
    mac = hmac.new(b"hook-secret", b"1656000000." + request.content, hashlib.sha256)
    assert request.headers["x-channel-monitor-signature"] == "sha256=" + mac.hexdigest()
    body = json.loads(request.content)
    assert body["version"] == 1
    assert body["kind"] == "opened" and body["direction"] == "unexpected_up"
    assert body["direction_zh"] == "应停未停"
    assert body["incident"] == 7 and body["dedup_key"] == "incident-7-opened"
    assert body["observed"] == {"serving": True, "reason": "HTTP 200"}
    assert body["expected"] == "down" and body["period"] == "freeze"
    assert body["resolved_at"] is None and body["timezone"] == "Asia/Shanghai"
    assert body["title"].startswith("【应停未停】") and body["text"].startswith("【应停未停】")
    documented = webhook.__doc__ or ""
    for key in body:
        assert f'"{key}"' in documented, key


@respx.mock
@pytest.mark.parametrize(
    ("status", "permanent"), [(500, False), (503, False), (429, False), (400, True), (404, True)]
)
async def test_http_status_decides_retry(status: int, permanent: bool) -> None:
    respx.post(HOOK_URL).respond(status, text="nope")
    with pytest.raises(SinkError) as info:
        await sink({"type": "webhook", "url": HOOK_URL}).send(opened_alert())
    assert info.value.permanent is permanent
    assert str(info.value) == f"HTTP {status} (nope)"


@respx.mock
async def test_network_errors_are_transient_and_never_name_the_url() -> None:
    respx.post(WECOM_URL).mock(side_effect=httpx.ConnectError("cannot reach " + WECOM_URL))
    with pytest.raises(SinkError) as info:
        await sink({"type": "wecom", "url": WECOM_URL}).send(opened_alert())
    assert not info.value.permanent
    assert str(info.value) == "connection failed"


#: A URL the plan accepts (`https?://` and no blank) that is not one: its port is not a number.
UNPARSABLE_URL = "http://[::1/hook?key=unparsable-s3cret"


async def test_a_url_that_does_not_parse_is_a_permanent_failure_that_never_names_it() -> None:
    """`validate` refuses such a URL now; the sender still guards against one it is handed."""
    config = AlertSink.model_construct(
        type="webhook", url=UNPARSABLE_URL, name="webhook", secret=None,
        directions=("unexpected_up", "unexpected_down"), send_resolved=True,
    )  # fmt: skip
    with pytest.raises(SinkError) as info:
        await build_sink(config, httpx.AsyncClient()).send(opened_alert())
    assert info.value.permanent
    assert str(info.value) == "invalid URL"


# --- outbox and sender -----------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "monitor.db")
    yield store
    store.close()


def open_event(direction: Verdict = Verdict.UNEXPECTED_UP, at: datetime = OPENED_AT):
    expected = "down" if direction == Verdict.UNEXPECTED_UP else "up"
    reason = "HTTP 200" if direction == Verdict.UNEXPECTED_UP else "HTTP 503"
    incident = OpenIncident(None, direction, at, reason, expected, "freeze")
    return IncidentEvent("opened", direction, at, reason, expected, "freeze", incident)


def resolve_event(opened: IncidentEvent, incident_id: int, at: datetime = RESOLVED_AT):
    incident = OpenIncident(
        incident_id, opened.direction, opened.at, opened.reason, opened.expected, "freeze"
    )
    return IncidentEvent(
        "resolved", opened.direction, at, "HTTP 503", opened.expected, "freeze", incident
    )


def make_sender(store: Store, tables: list[dict], **options) -> AlertSender:
    plan = make_plan(tables)
    options = {"backoff_base": 0.05, "jitter": 0.0, "poll": 0.2, **options}
    sender = AlertSender(plan, store, plan.config.alerts, **options)
    store.incident_hooks.append(sender.hook)
    return sender


def outbox_rows(store: Store) -> list[dict]:
    return store.outbox.rows()


def test_backoff_doubles_up_to_the_cap() -> None:
    delays = [backoff(n, base=1.0, cap=300.0, jitter=0.0) for n in range(1, 12)]
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert 0.9 <= backoff(1, 1.0, 300.0, 0.1, rand=lambda: 0.0) < 1.0
    assert 1.0 < backoff(1, 1.0, 300.0, 0.1, rand=lambda: 1.0) <= 1.1


def test_outbox_rows_are_written_in_the_incident_transaction(store: Store) -> None:
    tables = [
        {"type": "webhook", "url": HOOK_URL},
        {"type": "wecom", "url": WECOM_URL},
    ]
    make_sender(store, tables)
    record = store.record_event("hbzwfw", "social-insurance", open_event())
    rows = outbox_rows(store)
    assert [(r["sink"], r["dedup_key"]) for r in rows] == [
        ("webhook", f"incident-{record.id}-opened"),
        ("wecom", f"incident-{record.id}-opened"),
    ]
    payload = store.db.execute("SELECT payload FROM alert_outbox LIMIT 1").fetchone()[0]
    alert = Alert.from_json(payload)
    assert alert.channel_name == "湖北政务服务网" and alert.period_title == "系统切换冻结期"
    assert "probe.example.test" not in payload and "wecom-key" not in payload

    # a hook failing after ours rolls back the incident and its outbox rows together
    def broken(*_args: object) -> None:
        raise sqlite3.OperationalError("disk full")

    store.incident_hooks.append(broken)
    with pytest.raises(sqlite3.OperationalError):
        store.record_event("hbzwfw", "medical", open_event(Verdict.UNEXPECTED_DOWN))
    assert len(outbox_rows(store)) == 2
    assert [i.business for i in store.open_incidents()] == ["social-insurance"]


def test_routing_by_direction_and_send_resolved(store: Store) -> None:
    tables = [
        {"type": "webhook", "name": "all", "url": HOOK_URL},
        {"type": "webhook", "name": "up-only", "url": HOOK_URL, "directions": ["unexpected_up"]},
        {
            "type": "webhook",
            "name": "down-no-resolved",
            "url": HOOK_URL,
            "directions": ["unexpected_down"],
            "send_resolved": False,
        },
    ]
    make_sender(store, tables)
    up = open_event(Verdict.UNEXPECTED_UP)
    up_record = store.record_event("hbzwfw", "social-insurance", up)
    store.record_event("hbzwfw", "social-insurance", resolve_event(up, up_record.id))
    down = open_event(Verdict.UNEXPECTED_DOWN)
    down_record = store.record_event("hbzwfw", "medical", down)
    store.record_event("hbzwfw", "medical", resolve_event(down, down_record.id))
    queued = {(r["sink"], r["dedup_key"]) for r in outbox_rows(store)}
    u, d = up_record.id, down_record.id
    assert queued == {
        ("all", f"incident-{u}-opened"),
        ("all", f"incident-{u}-resolved"),
        ("all", f"incident-{d}-opened"),
        ("all", f"incident-{d}-resolved"),
        ("up-only", f"incident-{u}-opened"),
        ("up-only", f"incident-{u}-resolved"),
        ("down-no-resolved", f"incident-{d}-opened"),
    }


def test_a_transition_is_queued_once_per_sink(store: Store) -> None:
    make_sender(store, [{"type": "webhook", "url": HOOK_URL}])
    record = store.record_event("hbzwfw", "social-insurance", open_event())
    alert = alert_for(make_plan(), record, "opened", OPENED_AT, "HTTP 200")
    with store.db:
        assert store.outbox.enqueue(["webhook"], alert.dedup_key, alert.to_json(), time.time()) == 0
    assert len(outbox_rows(store)) == 1


@respx.mock
async def test_retries_with_backoff_until_2xx(store: Store) -> None:
    route = respx.post(HOOK_URL).mock(
        side_effect=[httpx.Response(503), httpx.Response(502), httpx.Response(200)]
    )
    sender = make_sender(store, [{"type": "webhook", "url": HOOK_URL}], backoff_base=0.1)
    await sender.start()
    try:
        started = time.monotonic()
        await store.call(store.record_event, "hbzwfw", "social-insurance", open_event())
        await async_wait_for(lambda: sender.delivered["webhook"] == 1)
        elapsed = time.monotonic() - started
    finally:
        await sender.close()
    assert route.call_count == 3
    assert elapsed >= 0.1 + 0.2  # the two backoff delays
    (row,) = outbox_rows(store)
    assert row["attempts"] == 3 and row["delivered_at"] is not None
    assert row["last_error"] == "HTTP 502"
    keys = {c.request.headers["idempotency-key"] for c in route.calls}
    assert keys == {row["dedup_key"]}


@respx.mock
async def test_a_dead_sink_blocks_neither_the_others_nor_its_own_later_retries(
    store: Store,
) -> None:
    dead = "https://dead.example.test/hook"
    dead_route = respx.post(dead).mock(side_effect=httpx.ConnectError("refused"))
    live_route = respx.post(HOOK_URL).respond(200)
    tables = [
        {"type": "webhook", "name": "dead", "url": dead},
        {"type": "webhook", "name": "live", "url": HOOK_URL},
        {"type": "wecom", "name": "hung", "url": WECOM_URL},
    ]
    sender = make_sender(store, tables, backoff_base=0.05, backoff_cap=0.2, close_timeout=0.2)

    class Hung(Sink):  # a sink that never answers at all
        type = "wecom"

        async def send(self, alert: Alert) -> str:
            await asyncio.Event().wait()
            return "never"

    sender.sinks[2] = Hung(sender.sinks[2].config, sender.client)
    await sender.start()
    try:
        for business in ("social-insurance", "medical"):
            await store.call(store.record_event, "hbzwfw", business, open_event())
        await async_wait_for(lambda: sender.delivered["live"] == 2)
        await async_wait_for(lambda: dead_route.call_count >= 3)
    finally:
        await sender.close()
    assert live_route.call_count == 2
    rows = {(r["sink"], r["dedup_key"]): r for r in outbox_rows(store)}
    dead_rows = [r for (name, _), r in rows.items() if name == "dead"]
    assert all(r["delivered_at"] is None and r["failed_at"] is None for r in dead_rows)
    assert dead_rows[0]["last_error"] == "connection failed"
    hung_rows = [r for (name, _), r in rows.items() if name == "hung"]
    assert all(r["delivered_at"] is None for r in hung_rows)  # still pending after close


@respx.mock
async def test_the_probing_is_never_blocked_by_a_sink(store: Store) -> None:
    respx.post(HOOK_URL).mock(side_effect=httpx.ConnectError("refused"))
    sender = make_sender(store, [{"type": "webhook", "url": HOOK_URL}], backoff_base=0.01)
    await sender.start()
    try:
        # recording incidents (what the pipeline does) stays fast while the sink is dead
        started = time.monotonic()
        for _ in range(20):
            up = open_event()
            record = await store.call(store.record_event, "hbzwfw", "social-insurance", up)
            await store.call(
                store.record_event, "hbzwfw", "social-insurance", resolve_event(up, record.id)
            )
        assert time.monotonic() - started < 2.0
    finally:
        await sender.close()
    assert len(outbox_rows(store)) == 40


@respx.mock
async def test_a_permanent_failure_gives_up_that_row_and_goes_on(store: Store) -> None:
    route = respx.post(WECOM_URL).mock(
        side_effect=[
            httpx.Response(200, json={"errcode": 40008, "errmsg": "invalid message type"}),
            httpx.Response(200, json={"errcode": 0, "errmsg": "ok"}),
        ]
    )
    sender = make_sender(store, [{"type": "wecom", "url": WECOM_URL}])
    up = open_event()
    record = store.record_event("hbzwfw", "social-insurance", up)
    store.record_event("hbzwfw", "social-insurance", resolve_event(up, record.id))
    await sender.start()
    try:
        await async_wait_for(lambda: sender.delivered["wecom"] == 1)
    finally:
        await sender.close()
    assert route.call_count == 2
    first, second = outbox_rows(store)
    assert first["failed_at"] is not None and first["last_error"].startswith("errcode 40008")
    assert second["delivered_at"] is not None
    # in order: the opened transition went first
    assert json.loads(route.calls[0].request.content)["markdown"]["content"].find("应停未停") > 0
    assert "已恢复" in json.loads(route.calls[1].request.content)["markdown"]["content"]


@respx.mock
async def test_alertmanager_open_alerts_are_resent_and_resolutions_sent_once(
    store: Store,
) -> None:
    route = respx.post(f"{AM_URL}/api/v2/alerts").respond(200)
    sender = make_sender(store, [{"type": "alertmanager", "url": AM_URL}], resend_interval=0.1)
    up = open_event()
    record = store.record_event("hbzwfw", "social-insurance", up)
    await sender.start()
    try:
        await async_wait_for(lambda: route.call_count >= 4)
        await store.call(
            store.record_event, "hbzwfw", "social-insurance", resolve_event(up, record.id)
        )
        await async_wait_for(lambda: sender.delivered["alertmanager"] == 2)
        calls = route.call_count
        resent_after = time.monotonic() + 0.35
        await async_wait_for(lambda: time.monotonic() > resent_after)
    finally:
        await sender.close()
    bodies = [json.loads(c.request.content) for c in route.calls]
    firing = [b for b in bodies if b and b[0]["endsAt"] != "2022-06-22T10:52:05Z"]
    assert len(firing) >= 3
    assert all(b[0]["startsAt"] == "2022-06-22T10:10:05Z" for b in firing)
    # after the resolution nothing is re-sent: only empty refreshes are skipped
    assert route.call_count == calls
    assert bodies[calls - 1][0]["endsAt"] == "2022-06-22T10:52:05Z"


@respx.mock
async def test_logs_never_hold_urls_or_secrets(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    respx.post(WECOM_URL).respond(500, text="busy")
    respx.post(url__startswith="https://oapi.dingtalk.com/").respond(200, json={"errcode": 0})
    tables = [
        {"type": "wecom", "url": WECOM_URL},
        {"type": "dingtalk", "url": DINGTALK_URL, "secret": "SECsecret-0005"},
    ]
    sender = make_sender(store, tables)
    await sender.start()
    try:
        await store.call(store.record_event, "hbzwfw", "social-insurance", open_event())
        await async_wait_for(lambda: sender.delivered["dingtalk"] == 1)
        await async_wait_for(lambda: outbox_rows(store)[0]["attempts"] >= 2)
    finally:
        await sender.close()
    text = caplog.text
    assert "delivered to sink dingtalk" in text and "to sink wecom failed" in text
    for secret in ("wecom-key", "ding-token", "SECsecret", "qyapi", "oapi.dingtalk"):
        assert secret not in text


# --- wiring and the command ------------------------------------------------------------------


def test_the_daemon_wires_the_hook_listener_and_startup_of_the_sender(tmp_path: Path) -> None:
    from monitor.daemon import Daemon

    plan = make_plan([{"type": "webhook", "url": HOOK_URL}])
    daemon = Daemon(plan, db_path=tmp_path / "m.db", site_dir=tmp_path / "site")
    try:
        senders = [x for x in daemon.listeners if isinstance(x, AlertSender)]
        assert len(senders) == 1
        assert senders[0].hook in daemon.store.incident_hooks
        assert senders[0].on_startup in daemon.app.on_startup
    finally:
        daemon.store.close()
    replay = Daemon(
        plan,
        db_path=tmp_path / "r.db",
        site_dir=tmp_path / "site",
        clock=ReplayClock(OPENED_AT),
    )
    try:
        assert not any(isinstance(x, AlertSender) for x in replay.listeners)
        assert replay.sender is None
        assert alerts.build(plan, replay.store, replay.clock) == (None, Part())
    finally:
        replay.store.close()


def write_plan(path: Path, tables: str) -> Path:
    path.write_text(
        '[[channels]]\nid = "portal"\nname = "门户"\nkind = "web"\ngroup = "online"\n'
        '[[channels.services]]\nid = "biz"\nname = "社保"\n' + tables,
        encoding="utf-8",
    )
    return path


@respx.mock
def test_alerts_test_command_reports_each_sink(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CM_TEST_WECOM_KEY", "wecom-key-0001")
    wecom_route = respx.post(WECOM_URL).respond(200, json={"errcode": 0, "errmsg": "ok"})
    am_route = respx.post(f"{AM_URL}/api/v2/alerts").respond(200)
    respx.post(FEISHU_URL).respond(200, json={"code": 19021, "msg": "sign match fail"})
    plan = write_plan(
        tmp_path / "plan.toml",
        '[[alerts]]\ntype = "wecom"\n'
        'url = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=${CM_TEST_WECOM_KEY}"\n'
        f'[[alerts]]\ntype = "alertmanager"\nurl = "{AM_URL}"\n'
        f'[[alerts]]\ntype = "feishu"\nurl = "{FEISHU_URL}"\nsecret = "s"\n',
    )
    assert main(["alerts", "test", "--config", str(plan)]) == 1
    out = capsys.readouterr().out
    assert "wecom" in out and "ok" in out and "HTTP 200, errcode 0" in out
    assert "FAILED" in out and "code 19021: sign match fail (permanent)" in out
    assert "2 of 3 sink(s) accepted the test message" in out
    assert "wecom-key" not in out and "feishu-hook" not in out
    content = json.loads(wecom_route.calls.last.request.content)["markdown"]["content"]
    assert "【测试】" in content and "no action needed" in content
    (test_alert,) = json.loads(am_route.calls.last.request.content)
    assert test_alert["labels"]["alertname"] == "ChannelMonitorTest"


def test_alerts_test_command_refuses_a_sink_whose_url_does_not_parse(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The plan is invalid (exit 2, as `validate` says): nothing is sent, the URL not named."""
    plan = write_plan(
        tmp_path / "plan.toml", f'[[alerts]]\ntype = "webhook"\nurl = "{UNPARSABLE_URL}"\n'
    )
    assert main(["alerts", "test", "--config", str(plan)]) == 2
    out, err = capsys.readouterr()
    assert "alerts[0].url: expected a well-formed http:// or https:// URL" in err
    assert "s3cret" not in out + err and "Traceback" not in out + err


def test_alerts_test_command_without_sinks_and_with_missing_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = write_plan(tmp_path / "plan.toml", "")
    assert main(["alerts", "test", "--config", str(plan)]) == 0
    assert "no [[alerts]] sinks are configured" in capsys.readouterr().out
    monkeypatch.delenv("CM_TEST_UNSET", raising=False)
    plan = write_plan(
        tmp_path / "env.toml",
        '[[alerts]]\ntype = "webhook"\nurl = "https://h.example.test/${CM_TEST_UNSET}"\n',
    )
    # Not sent, and said so: a warning on stderr, a failed row, exit 1 (a sink failed).
    assert main(["alerts", "test", "--config", str(plan)]) == 1
    out, err = capsys.readouterr()
    assert 'alerts[0].url: warning: environment variable "CM_TEST_UNSET" is not set' in err
    assert "not sent: environment variable CM_TEST_UNSET is not set" in out
    assert "h.example.test" not in err + out


# --- the shipped plan ------------------------------------------------------------------------


def test_shipped_plan_needs_no_environment_and_its_example_sinks_validate() -> None:
    import tomllib

    path = Path(__file__).resolve().parent.parent / "channels.toml"
    text = path.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    assert "alerts" not in data  # commented out: validate, plan, render, demo need no env
    validate_config(data, env={})

    start = text.index("# [[alerts]]")
    example = "\n".join(
        line.removeprefix("# ").removeprefix("#") for line in text[start:].splitlines()
    )
    enabled = tomllib.loads(text[:start] + example)
    env = {
        name: "x"
        for name in (
            "WECOM_KEY",
            "DINGTALK_TOKEN",
            "DINGTALK_SECRET",
            "FEISHU_HOOK",
            "FEISHU_SECRET",
            "WEBHOOK_SECRET",
        )
    }
    sinks = validate_config(enabled, env=env).alerts
    assert sorted(s.type for s in sinks) == sorted(
        ["alertmanager", "wecom", "dingtalk", "feishu", "webhook"]
    )
    with pytest.raises(ConfigError) as info:
        validate_config(enabled, env={})
    assert len(info.value.problems) == len(env)


async def test_start_is_idempotent_even_when_calls_race(store: Store) -> None:
    sender = make_sender(store, [{"type": "webhook", "url": HOOK_URL}])
    await asyncio.gather(sender.start(), sender.on_startup(None), sender.observed(None))
    try:
        assert len(sender.tasks) == 1
    finally:
        await sender.close()

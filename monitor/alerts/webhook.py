"""Generic webhook: `POST {url}` with one JSON object per incident transition.

The body (version 1; fields are only ever added):

```json
{
  "version": 1,
  "dedup_key": "incident-12-opened",
  "kind": "opened",                   // "opened" | "resolved" | "test"
  "direction": "unexpected_up",       // "unexpected_up" | "unexpected_down"
  "direction_zh": "应停未停",          // "应停未停" | "应开未开"
  "incident": 12,
  "channel": "hbzwfw", "channel_name": "湖北政务服务网", "channel_name_en": "...",
  "business": "social-insurance", "service_name": "...", "service_name_en": "...",
  "expected": "down",                 // what the plan expected: "up" | "down"
  "period": "freeze", "period_title": "...", "period_title_en": "...",
  "observed": {"serving": true, "reason": "HTTP 200"},
  "opened_at": "2022-06-22T10:10:05Z",
  "resolved_at": null,                // set when kind is "resolved"
  "ended_by_plan": false,             // resolved by a change of the plan, the channel unchanged
  "at": "2022-06-22T10:10:05Z",       // the instant of this transition
  "timezone": "Asia/Shanghai",
  "title": "【应停未停】...", "title_en": "[UP WHILE EXPECTED DOWN] ...",
  "text": "Chinese, then English: the same words the robots send"
}
```

An update of an operators' notice with `notify = true` (monitor/notices/__init__.py) comes as
`{"version": 1, "dedup_key": "notice-<id>-<n>-<unix time>", "kind": "notice", "notice": {"id",
"title", "title_en", "status", "text", "text_en", "services", "services_en"}, "at",
"timezone", "title", "title_en", "text"}`, once per update.

`observed.serving` is what the probes saw when the incident opened; on `resolved` it is null
and `observed.reason` is the reason of the observation that resolved it, or, when
`ended_by_plan` is true, the plan's change that ended it (`plan now expects up; the channel
never closed`: the channel never did what the plan asked; or `removed from the plan`: an edit
took the service out, and nothing more was seen of it). Instants are RFC 3339
UTC. Headers: `Idempotency-Key` (the `dedup_key`: a receiver that keeps them sees every
transition once even when a delivery is repeated after a crash) and, when the sink has a
`secret`, `X-Channel-Monitor-Timestamp` (Unix seconds) and `X-Channel-Monitor-Signature`:
`sha256=` + hex HMAC-SHA256 keyed with the secret over `"{timestamp}." + body`. Any 2xx answer
counts as delivered.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from monitor.alerts.base import Sink, json_bytes
from monitor.alerts.message import DIRECTION_ZH, Alert

VERSION = 1


def body(alert: Alert) -> dict:
    """The documented JSON body of one alert."""
    if alert.is_notice:
        return notice_body(alert)
    return {
        "version": VERSION,
        "dedup_key": alert.dedup_key,
        "kind": alert.kind,
        "direction": alert.direction,
        "direction_zh": DIRECTION_ZH[alert.direction],
        "incident": alert.incident,
        "channel": alert.channel,
        "channel_name": alert.channel_name,
        "channel_name_en": alert.channel_name_en,
        "business": alert.business,
        "service_name": alert.service_name,
        "service_name_en": alert.service_name_en,
        "expected": alert.expected,
        "period": alert.period,
        "period_title": alert.period_title,
        "period_title_en": alert.period_title_en,
        "observed": {
            "serving": alert.serving if alert.kind == "opened" else None,
            "reason": alert.reason,
        },
        "opened_at": alert.opened_at,
        "resolved_at": alert.resolved_at,
        "ended_by_plan": alert.ended_by_plan,
        "at": alert.at,
        "timezone": alert.timezone,
        "title": alert.title_zh(),
        "title_en": alert.title_en(),
        "text": alert.text(),
    }


def notice_body(alert: Alert) -> dict:
    """The body of an update of an operators' notice (`kind` "notice")."""
    return {
        "version": VERSION,
        "dedup_key": alert.dedup_key,
        "kind": "notice",
        "notice": {
            "id": alert.notice,
            "title": alert.notice_title,
            "title_en": alert.notice_title_en,
            "status": alert.status,
            "text": alert.body,
            "text_en": alert.body_en,
            "services": alert.service_name,
            "services_en": alert.service_name_en,
        },
        "at": alert.at,
        "timezone": alert.timezone,
        "title": alert.title_zh(),
        "title_en": alert.title_en(),
        "text": alert.text(),
    }


def signature(secret: str, timestamp: str, content: bytes) -> str:
    """`sha256=<hex>` over `"{timestamp}." + body`, keyed with the secret."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + content, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


class WebhookSink(Sink):
    type = "webhook"

    async def send(self, alert: Alert) -> str:
        content = json_bytes(body(alert))
        headers = {"Idempotency-Key": alert.dedup_key}
        if self.config.secret:
            stamp = str(int(time.time()))
            headers["X-Channel-Monitor-Timestamp"] = stamp
            headers["X-Channel-Monitor-Signature"] = signature(self.config.secret, stamp, content)
        response = await self.post(self.config.url, content, headers=headers)
        return f"HTTP {response.status_code}"

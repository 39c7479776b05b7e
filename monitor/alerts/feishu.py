"""Feishu (飞书) custom bot: `POST {url}` (`.../open-apis/bot/v2/hook/ID`).

Body: an interactive card, `{"msg_type": "interactive", "card": {"header": {"title":
{"tag": "plain_text", "content": ...}, "template": "red"}, "elements": [{"tag": "markdown",
"content": <Chinese>}, {"tag": "hr"}, {"tag": "markdown", "content": <English>}]}}`; red for
应停未停, orange for 应开未开, green when resolved. With a `secret` (签名校验), the body also
carries `timestamp` (Unix seconds, as a string) and `sign` = Base64(HMAC-SHA256(key=
"{timestamp}\\n{secret}", message=empty)); Feishu rejects a timestamp more than an hour off.
The bot answers `{"code": 0, "msg": "success"}` (older ones `{"StatusCode": 0}`); 11232
(rate limited) and 9499 are retried, other codes (19021 bad signature, 19024 keyword check
failed, 19001 bad hook...) are permanent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from monitor.alerts.base import Sink, robot_answer
from monitor.alerts.message import Alert

TRANSIENT = frozenset({9499, 11232})
TEMPLATE = {"unexpected_up": "red", "unexpected_down": "orange"}


def sign(secret: str, timestamp: str) -> str:
    """The `sign` field: the key is `"{timestamp}\\n{secret}"`, the message is empty."""
    key = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


def body(alert: Alert) -> dict:
    if alert.test or alert.is_notice:
        template = "blue"
    else:
        template = "green" if alert.resolved else TEMPLATE[alert.direction]
    return {
        "msg_type": "interactive",
        "card": {
            "config": {"wide_screen_mode": True},
            "header": {
                "title": {"tag": "plain_text", "content": alert.title_zh()},
                "template": template,
            },
            "elements": [
                {"tag": "markdown", "content": "\n".join(alert.lines_zh())},
                {"tag": "hr"},
                {
                    "tag": "markdown",
                    "content": f"**{alert.title_en()}**\n" + "\n".join(alert.lines_en()),
                },
            ],
        },
    }


class FeishuSink(Sink):
    type = "feishu"

    async def send(self, alert: Alert) -> str:
        payload = body(alert)
        if self.config.secret:
            stamp = str(int(time.time()))
            payload = {"timestamp": stamp, "sign": sign(self.config.secret, stamp), **payload}
        response = await self.post(self.config.url, payload)
        return robot_answer(response, ("code", "StatusCode"), TRANSIENT)

"""DingTalk (钉钉) custom robot: `POST {url}` (`.../robot/send?access_token=TOKEN`).

Body: `{"msgtype": "markdown", "markdown": {"title": ..., "text": ...}}`; `title` is what the
notification shows. With a `secret` (the robot's 加签 setting, `SEC...`), the query also gets
`timestamp` (Unix milliseconds) and `sign` = Base64(HMAC-SHA256(key=secret,
message="{timestamp}\\n{secret}")), URL-encoded; DingTalk rejects a timestamp more than an hour
off. The robot answers HTTP 200 with `{"errcode": 0, "errmsg": "ok"}`; 130101 (sending too
fast) and -1 (busy) are retried, other codes (310000 signature or keyword check failed,
300001 bad token...) are permanent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from monitor.alerts.base import Sink, robot_answer
from monitor.alerts.message import Alert

TRANSIENT = frozenset({-1, 130101})


def sign(secret: str, timestamp_ms: str) -> str:
    """The `sign` query value before URL encoding."""
    message = f"{timestamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def body(alert: Alert) -> dict:
    # DingTalk's markdown needs a blank line to break a line
    zh = "\n\n".join(f"> {line}" for line in alert.lines_zh())
    en = "\n\n".join(f"> {line}" for line in alert.lines_en())
    text = f"### {alert.title_zh()}\n\n{zh}\n\n**{alert.title_en()}**\n\n{en}"
    return {"msgtype": "markdown", "markdown": {"title": alert.title_zh(), "text": text}}


class DingTalkSink(Sink):
    type = "dingtalk"

    async def send(self, alert: Alert) -> str:
        params = None
        if self.config.secret:
            stamp = str(int(time.time() * 1000))
            params = {"timestamp": stamp, "sign": sign(self.config.secret, stamp)}
        response = await self.post(self.config.url, body(alert), params=params)
        return robot_answer(response, ("errcode",), TRANSIENT)

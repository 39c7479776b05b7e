"""WeCom (企业微信) group robot: `POST {url}` (`.../cgi-bin/webhook/send?key=KEY`).

Body: `{"msgtype": "markdown", "markdown": {"content": ...}}`, content at most 4096 bytes of
UTF-8. The robot answers HTTP 200 with `{"errcode": 0, "errmsg": "ok"}`; a non-zero `errcode`
is a failure: 45009 (over the rate limit, 20 messages a minute) and -1 (busy) are retried, any
other (93000 invalid key, 40008 bad message type...) is permanent. No signing: the key in the
URL is the secret, so the URL is never logged.
"""

from __future__ import annotations

from monitor.alerts.base import Sink, robot_answer
from monitor.alerts.message import Alert

MAX_BYTES = 4096
TRANSIENT = frozenset({-1, 45009})


def truncate_bytes(text: str, limit: int) -> str:
    """Cut UTF-8 text to at most `limit` bytes without splitting a character."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode(errors="ignore") + "..."


def body(alert: Alert) -> dict:
    color = "info" if alert.resolved or alert.test else "warning"
    title = f'### <font color="{color}">{alert.title_zh()}</font>'
    zh = "\n".join(f"> {line}" for line in alert.lines_zh())
    en = "\n".join(f"> {line}" for line in alert.lines_en())
    content = f"{title}\n{zh}\n\n**{alert.title_en()}**\n{en}"
    return {"msgtype": "markdown", "markdown": {"content": truncate_bytes(content, MAX_BYTES)}}


class WeComSink(Sink):
    type = "wecom"

    async def send(self, alert: Alert) -> str:
        response = await self.post(self.config.url, body(alert))
        return robot_answer(response, ("errcode",), TRANSIENT)

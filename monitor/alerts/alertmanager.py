"""Alertmanager: the v2 API, `POST {url}/api/v2/alerts` with a list of alerts.

Each incident is one alert whose labels identify it (Alertmanager deduplicates on the label set):

| label | value |
| --- | --- |
| `alertname` | `ChannelUpWhileExpectedDown` (unexpected up) / `ChannelDownWhileExpectedUp` |
| `channel` | the channel id |
| `business` | the service id (as in the metrics; `service` is a Prometheus target label) |
| `severity` | `critical` for unexpected up, `warning` for unexpected down |

Annotations hold the names, the expectation, the observation and the reason, in Chinese
(`summary`, `description`) and English (`summary_en`, `description_en`). `startsAt` is when the
incident opened. Like Prometheus, the sender re-sends every open incident periodically with an
`endsAt` a few resend intervals ahead, so Alertmanager keeps it firing while the monitor lives;
a resolved incident is sent once more with `endsAt` set to its resolution.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from monitor.alerts.base import Sink
from monitor.alerts.message import DIRECTION_EN, DIRECTION_ZH, Alert, iso
from monitor.plan.sinks import AlertSink

ALERTNAME = {
    "unexpected_up": "ChannelUpWhileExpectedDown",
    "unexpected_down": "ChannelDownWhileExpectedUp",
}
SEVERITY = {"unexpected_up": "critical", "unexpected_down": "warning"}
TEST_ALERTNAME = "ChannelMonitorTest"

#: How often open incidents are re-sent, and how far ahead a firing alert's endsAt lies.
RESEND_INTERVAL = timedelta(seconds=60)
ENDS_AFTER = 4 * RESEND_INTERVAL


class AlertmanagerSink(Sink):
    type = "alertmanager"
    refreshes = True
    takes_notices = False  # an alert fires and resolves; a notice is words for people

    def __init__(
        self, config: AlertSink, client: httpx.AsyncClient, ends_after: timedelta = ENDS_AFTER
    ) -> None:
        super().__init__(config, client)
        self.ends_after = ends_after
        self.endpoint = config.url.rstrip("/") + "/api/v2/alerts"

    def payload(self, alert: Alert, now: datetime | None = None) -> dict:
        """One alert of the v2 API (`postableAlert`)."""
        now = now or datetime.now(UTC)
        if alert.test:
            return {
                "labels": {
                    "alertname": TEST_ALERTNAME,
                    "channel": alert.channel,
                    "business": alert.business,
                    "severity": "none",
                },
                "annotations": {
                    "summary": alert.title_zh(),
                    "summary_en": alert.title_en(),
                    "description": "\n".join(alert.lines_zh()),
                    "description_en": "\n".join(alert.lines_en()),
                },
                "startsAt": iso(now),
                "endsAt": iso(now + timedelta(minutes=5)),
            }
        direction = alert.direction
        ends = alert.resolved_at if alert.resolved else iso(now + self.ends_after)
        observed = "serving" if alert.serving else "not serving"
        return {
            "labels": {
                "alertname": ALERTNAME[direction],
                "channel": alert.channel,
                "business": alert.business,
                "severity": SEVERITY[direction],
            },
            "annotations": {
                "summary": f"{DIRECTION_ZH[direction]}：{alert.where()}",
                "summary_en": f"{DIRECTION_EN[direction].capitalize()}: {alert.where(True)}",
                "description": "\n".join(alert.lines_zh()),
                "description_en": "\n".join(alert.lines_en()),
                "channel_name": alert.channel_name,
                "channel_name_en": alert.channel_name_en,
                "service_name": alert.service_name,
                "service_name_en": alert.service_name_en,
                "expected": alert.expected,
                "observed": observed,
                "reason": alert.reason,
                "period": alert.period or "",
                "incident": str(alert.incident),
            },
            "startsAt": alert.opened_at,
            "endsAt": ends,
        }

    async def send(self, alert: Alert) -> str:
        response = await self.post(self.endpoint, [self.payload(alert)])
        return f"HTTP {response.status_code}"

    async def refresh(self, alerts: list[Alert]) -> None:
        if alerts:
            now = datetime.now(UTC)
            await self.post(self.endpoint, [self.payload(a, now) for a in alerts])

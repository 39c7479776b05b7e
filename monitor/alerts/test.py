"""`channel-monitor alerts test`: one clearly marked test message to every configured sink."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

from monitor.alerts.base import SinkError, within
from monitor.alerts.message import test_alert
from monitor.alerts.sender import build_sink, new_client
from monitor.plan import Plan


@dataclass(frozen=True, slots=True)
class SinkAnswer:
    """What one sink answered."""

    name: str
    type: str
    ok: bool
    answer: str


async def send_test(plan: Plan) -> list[SinkAnswer]:
    """Send the test message to every sink at once; never raises for a sink's failure."""
    alert = test_alert(datetime.now(UTC), plan.zone.key)
    # A sink whose `${NAME}` is unset would send the reference itself: it is not sent to.
    waiting = [
        SinkAnswer(
            config.name,
            config.type,
            False,
            f"not sent: environment variable {', '.join(config.unset)} is not set / "
            "未发送：环境变量未设置",
        )
        for config in plan.config.alerts
        if config.unset
    ]
    async with new_client() as client:
        sinks = [build_sink(c, client) for c in plan.config.alerts if not c.unset]

        async def one(sink) -> SinkAnswer:
            try:
                answer = await within(sink.send(alert))
            except SinkError as exc:
                kind = "permanent" if exc.permanent else "temporary"
                return SinkAnswer(sink.name, sink.type, False, f"{exc} ({kind})")
            except Exception as exc:  # as the sender does: named by its type, never its text
                return SinkAnswer(
                    sink.name, sink.type, False, f"internal error ({type(exc).__name__})"
                )
            return SinkAnswer(sink.name, sink.type, True, answer)

        return waiting + list(await asyncio.gather(*(one(sink) for sink in sinks)))

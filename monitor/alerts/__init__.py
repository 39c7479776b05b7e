"""Alerts both ways (应停未停 / 应开未开) to Alertmanager, webhooks and WeCom, DingTalk and
Feishu robots, through an outbox in the store that loses nothing.

`build(...)` is the one call the daemon makes: it hands back the sender with the outbox hook
(rows written in the incident's own transaction), the listener, and the hook that starts the
sender with the web server; the daemon stops it with the other listeners. One module per sink
behind `base.Sink`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from monitor.alerts.base import Sink, SinkError
from monitor.alerts.message import Alert
from monitor.alerts.sender import AlertSender
from monitor.clock import runs_in_real_time
from monitor.part import Part

if TYPE_CHECKING:
    from monitor.clock import Clock
    from monitor.plan import Plan
    from monitor.store import Store

__all__ = ["Alert", "AlertSender", "Sink", "SinkError", "build"]

log = logging.getLogger(__name__)


def build(plan: Plan, store: Store, clock: Clock) -> tuple[AlertSender | None, Part]:
    """The alert sender and its connections; no sender (and an empty part) when no
    `[[alerts]]` are configured, or on a replayed clock (the demo never alerts anyone)."""
    configs = plan.config.alerts
    if not configs:
        return None, Part()
    if not runs_in_real_time(clock):
        log.info("alerts: not sent on a replayed clock")
        return None, Part()
    sender = AlertSender(plan, store, configs)
    log.info("alerts: %s", ", ".join(f"{s.name} ({s.type})" for s in sender.sinks))
    return sender, Part(
        listener=sender,
        plan_user=sender,
        on_startup=(sender.on_startup,),
        incident_hook=sender.hook,
    )

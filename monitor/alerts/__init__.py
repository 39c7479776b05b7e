"""Alerts both ways (应停未停 / 应开未开) to Alertmanager, webhooks and WeCom, DingTalk and
Feishu robots, through an outbox in the store that loses nothing.

`attach(daemon)` is the one call the daemon makes: it registers the outbox hook (rows written in
the incident's own transaction), and starts the sender with the daemon's web server and stops it
with the daemon. One module per sink behind `base.Sink`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from monitor.alerts.base import Sink, SinkError
from monitor.alerts.message import Alert
from monitor.alerts.sender import AlertSender
from monitor.clock import RealClock

if TYPE_CHECKING:
    from monitor.daemon import Daemon

__all__ = ["Alert", "AlertSender", "Sink", "SinkError", "attach"]

log = logging.getLogger(__name__)


def attach(daemon: Daemon) -> AlertSender | None:
    """Hang the alert sender on a daemon; None when no `[[alerts]]` are configured, or when
    the daemon runs on a replayed clock (the demo never alerts anyone)."""
    configs = daemon.plan.config.alerts
    if not configs:
        return None
    if not isinstance(daemon.clock, RealClock):
        log.info("alerts: not sent on a replayed clock")
        return None
    sender = AlertSender(daemon.plan, daemon.store, configs)
    daemon.store.incident_hooks.append(sender.hook)
    daemon.listeners.append(sender)
    daemon.plan_users.append(sender)
    daemon.app.on_startup.append(sender.on_startup)
    log.info("alerts: %s", ", ".join(f"{s.name} ({s.type})" for s in sender.sinks))
    return sender

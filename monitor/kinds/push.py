"""Pushes from the inside: a channel's own systems tell the monitor how they are.

No probe from outside can see a kiosk, a bank branch's counter or a tax hall's POS. So such a
service is observed by push (`[channels.services.push]`): a cron job or the kiosk's own script
sends `POST /push/<channel>/<service>` with `Authorization: Bearer <token>` and an optional JSON
body `{"serving": true|false, "reason": "...", "count": N}`; an empty body is a heartbeat that
says "serving". Each accepted push is an observation at its arrival, judged like a probe's.

Silence is an observation too. When no push has come for `within` (5m by default), the service
is observed not serving, reason `no push for 5m`, at that moment (a loop timer, not the next
probe round). As healthchecks.io does with a check that misses its period, the silence is one
state that lasts until the next push; here it is observed again after every further `within`
of silence, because the judge opens an incident after `failure_threshold` consecutive
observations and needs fresh ones to keep the verdict from going stale. The incident itself,
like healthchecks.io's alert, opens once and resolves with the pushes that come back. After a
restart every push service's clock starts at the start: a silence is never inferred from before.
The deadline is one check, `overdue(at)`, asked with an instant: `run`'s loop timers ask it when
a `within` has passed on the wall clock; on a replayed clock (the demo, `watch_silence=False`)
there are no timers and the replay asks it at each of its steps, so a silence is found the same
way in both.

The receiving end (`POST /push`, the silence timers) is `monitor/receiver.py`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import field_validator

from monitor.fields import _ENV_REFERENCE as ENV_REFERENCE
from monitor.fields import PositiveDuration, ProbeEnv, _Model, _unset_names
from monitor.kinds.base import Kind
from monitor.reason_rows import Reason


class Push(_Model):
    """Observed from the inside: the channel's own systems send the monitor pushes."""

    token: Annotated[str, ProbeEnv]
    within: PositiveDuration = timedelta(minutes=5)

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: str) -> str:
        if not ENV_REFERENCE.search(value) and len(value) < 16:
            raise ValueError("expected a token of at least 16 characters")
        return value

    def __repr__(self) -> str:  # the token is a secret
        return "Push(...)"

    __str__ = __repr__

    @property
    def unset(self) -> tuple[str, ...]:
        return _unset_names(self.token)


#: The push kind's reasons.
REASONS: tuple[Reason, ...] = (
    Reason(
        "no push for {duration}",
        "{duration} 内未收到渠道推送",
        "no push from the channel for {duration}",
    ),
    Reason("push", "收到渠道推送", "the channel reported in"),
    Reason(
        "pushed: {text}",
        "渠道推送：{text}",
        "the channel pushed: {text}",
        "渠道报告了状态",
        "the channel reported its state",
    ),
)

#: Pushes arrive (POST /push, `PushReceiver`): nothing is probed, so the kind has no prober.
KIND = Kind("push", Push, table="push", reasons=REASONS, has_duration=False)

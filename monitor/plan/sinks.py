"""The alert sinks of a plan (`[[alerts]]`): their types, directions and secrets, validated
on the type. Beside the plan's schema because the schema holds them; the sinks themselves
are `monitor/alerts/`."""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationInfo,
    model_validator,
)

from monitor.fields import (
    _ENV_REFERENCE,
    _URL_PATTERN,
    _Model,
    _non_empty,
    check_probe_url,
    fill_in,
)

SinkType = Literal["alertmanager", "webhook", "wecom", "dingtalk", "feishu"]
AlertDirection = Literal["unexpected_up", "unexpected_down"]
#: Sink types that sign their requests with `secret`.
SIGNING_SINKS = ("webhook", "dingtalk", "feishu")


def _from_environment(value: object, info: ValidationInfo) -> object:
    """Replace every `${NAME}` in a string with the environment variable NAME.

    A missing or empty variable is an error that names the variable, never the value, where
    the sinks will be used (`run`, the default); for the commands that only read the plan
    (context `unset_secrets`), the reference stays as written and the sink says it is not
    ready (`AlertSink.unset`), so a plan can be checked on a machine without the secrets."""
    if not isinstance(value, str) or "${" not in value:
        return value  # nothing to fill in (and `info.context` costs 17 us a read)
    context = info.context or {}
    env = context.get("env")
    env = os.environ if env is None else env
    missing = [name for name in _ENV_REFERENCE.findall(value) if not env.get(name)]
    if missing and context.get("unset_secrets"):
        return fill_in(value, env)
    if missing:
        names = ", ".join(f'"{name}"' for name in dict.fromkeys(missing))
        plural = "s" if len(set(missing)) > 1 else ""
        raise ValueError(
            f"environment variable{plural} {names} referenced here "
            f"{'are' if plural else 'is'} not set or empty; expected "
            f"{'them' if plural else 'it'} in the environment of channel-monitor"
        )
    return _ENV_REFERENCE.sub(lambda m: env[m.group(1)], value)


FromEnv = BeforeValidator(_from_environment)


class AlertSink(_Model):
    """One `[[alerts]]` table: where incidents are sent, for which directions.

    `url` and `secret` may hold `${ENV_NAME}` references; neither ever appears in a message."""

    type: SinkType
    #: Checked after `${NAME}` is replaced, as a probe's URL is: one that cannot be sent fails
    #: here, not at the first incident.
    url: Annotated[str, Field(pattern=_URL_PATTERN), FromEnv, AfterValidator(check_probe_url)]
    name: Annotated[str, Field(pattern=r"^[a-z0-9-]+$")] = ""
    secret: Annotated[str, FromEnv] | None = None
    directions: Annotated[tuple[AlertDirection, ...], AfterValidator(_non_empty)] = (
        "unexpected_up",
        "unexpected_down",
    )
    send_resolved: bool = True

    @model_validator(mode="after")
    def _default_name(self) -> AlertSink:
        if not self.name:
            object.__setattr__(self, "name", self.type)
        return self

    @property
    def unset(self) -> tuple[str, ...]:
        """The environment variables its URL or secret still names, unset: such a sink
        cannot send (`run` refuses to start it; the other commands warn)."""
        texts = (self.url, self.secret or "")
        return tuple(dict.fromkeys(n for t in texts for n in _ENV_REFERENCE.findall(t)))

    def __repr__(self) -> str:  # the URL and the secret may hold tokens
        return f"AlertSink(type={self.type!r}, name={self.name!r})"

    __str__ = __repr__

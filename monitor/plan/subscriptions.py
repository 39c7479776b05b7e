"""The `[subscriptions]` table: how citizens' subscriptions are mailed.

Only the plan's own keys live here, validated on their type as every other table of the plan
is (each problem with its key path); what a subscription is and how it is delivered belongs to
`monitor/subscriptions/`. `username` and `password` are read from the environment
(`${SMTP_USER}`), and no message about them ever repeats their value.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from email.headerregistry import Address
from email.utils import parseaddr
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, StrictInt, ValidationInfo

from monitor.fields import _ENV_REFERENCE, PositiveDuration, _Model

#: The SMTP URL schemes and what each means for the connection.
SMTP_SCHEMES = {"smtp": "plain", "smtp+starttls": "starttls", "smtps": "tls"}
DEFAULT_PORTS = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}
_EXAMPLE_FROM = '"湖北人社 <noreply@example.gov.cn>"'
_HOST = re.compile(r"^[A-Za-z0-9.\-\[\]:]+\Z")


def _smtp_url(value: str) -> str:
    """A relay a mail can be sent through: scheme, host and optional port, nothing else (a
    username in the URL would end up in logs; it has keys of its own)."""
    parts = urlsplit(value)
    if parts.scheme not in SMTP_SCHEMES:
        raise ValueError(
            "expected a relay URL starting with smtp://, smtp+starttls:// or smtps://, "
            'e.g. "smtp+starttls://relay.example.gov.cn:587"'
        )
    if parts.username or parts.password:
        raise ValueError(
            "expected no user or password in the URL; use the `username` and `password` keys"
        )
    try:
        port = parts.port
    except ValueError:
        raise ValueError("expected a port from 1 to 65535 after the host") from None
    if not parts.hostname or not _HOST.match(parts.hostname) or port == 0:
        raise ValueError("expected a host name or address after the scheme, and a port 1-65535")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("expected only scheme, host and port (no path or query)")
    return value


def _sender(value: str) -> str:
    """`"湖北人社 <noreply@example.gov.cn>"` or a bare address: what the From header says."""
    _name, address = parseaddr(value)
    try:
        Address(addr_spec=address)
        if "@" not in address:
            raise ValueError
    except (ValueError, IndexError):
        raise ValueError(f"expected an address such as {_EXAMPLE_FROM}") from None
    return value


def _public_url(value: str) -> str:
    """Where the links in mails point: `run`'s own API, reachable by citizens."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError('expected an http:// or https:// URL such as "https://status.example.cn"')
    if parts.query or parts.fragment:
        raise ValueError("expected no query or fragment: the API's paths are added to it")
    return value.rstrip("/")


def _reminders(value: tuple[timedelta, ...]) -> tuple[timedelta, ...]:
    if len(set(value)) != len(value):
        raise ValueError("expected each reminder once")
    return tuple(sorted(value, reverse=True))


def _from_environment(value: object, info: ValidationInfo) -> object:
    """Fill in `${NAME}` from the environment (the validation context's `env`, as for the
    alert sinks); an unset or empty variable is named, its value never shown."""
    if not isinstance(value, str) or "${" not in value:
        return value
    env = (info.context or {}).get("env")
    env = os.environ if env is None else env
    missing = [name for name in _ENV_REFERENCE.findall(value) if not env.get(name)]
    if missing:
        names = ", ".join(f'"{name}"' for name in dict.fromkeys(missing))
        raise ValueError(f"environment variable(s) {names} referenced here not set or empty")
    return _ENV_REFERENCE.sub(lambda m: env[m.group(1)], value)


FromEnv = BeforeValidator(_from_environment)


class SubscriptionSettings(_Model):
    """The `[subscriptions]` table; without it `run` serves no subscription API."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, populate_by_name=True)

    smtp: Annotated[str, FromEnv, AfterValidator(_smtp_url)]
    username: Annotated[str, FromEnv] | None = None
    password: Annotated[str, FromEnv] | None = None
    sender: Annotated[str, Field(alias="from"), AfterValidator(_sender)]
    public_url: Annotated[str, AfterValidator(_public_url)]
    remind_before: Annotated[tuple[PositiveDuration, ...], AfterValidator(_reminders)] = (
        timedelta(days=1),
        timedelta(hours=1),
    )
    #: Mails a second at most, however many sessions are open: the relay's pace.
    rate: StrictInt = Field(default=400, ge=1, le=100_000)
    #: SMTP sessions kept open to the relay at once (each reused for many mails).
    sessions: StrictInt = Field(default=4, ge=1, le=64)

    def __repr__(self) -> str:  # the password stays out of every log line and traceback
        return f"SubscriptionSettings(smtp={self.smtp!r}, public_url={self.public_url!r})"

    __str__ = __repr__

    @property
    def security(self) -> str:
        """`plain`, `starttls` or `tls`: how the session to the relay is protected."""
        return SMTP_SCHEMES[urlsplit(self.smtp).scheme]

    @property
    def host(self) -> str:
        return urlsplit(self.smtp).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.smtp)
        return parts.port or DEFAULT_PORTS[parts.scheme]

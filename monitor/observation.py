"""The one type every kind of observation returns (DESIGN.md's "observation").

It lives apart from every kind so that whatever stores, judges or shows observations (the
store, the judge, the page) can name the type without loading a kind's network code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


class _Unset(Protocol):
    @property
    def unset(self) -> tuple[str, ...]: ...


class Configured(Protocol):
    """What `not_configured` reads of a service reference (`plan.ServiceRef` is one): named
    here, not imported, because the plan's schema imports the kinds that import this module."""

    @property
    def service(self) -> _Unset: ...


@dataclass(frozen=True, slots=True)
class Observation:
    """One probe's outcome. Holds no URL, header or body: it may be stored and published."""

    at: datetime
    #: True serving, False not serving, None when the observation could not tell.
    serving: bool | None
    reason: str
    status_code: int | None = None
    duration_seconds: float = 0.0
    dns_seconds: float | None = None
    connect_seconds: float | None = None
    first_byte_seconds: float | None = None
    tls_expiry: datetime | None = None
    degraded: bool = False


def not_configured(ref: Configured, at: datetime) -> Observation:
    """The observation of a service whose probe or push needs unset environment variables.
    Here rather than in the pipeline so the push receiver and the pipeline share it."""
    return Observation(at, None, f"not configured: set {', '.join(ref.service.unset)}")

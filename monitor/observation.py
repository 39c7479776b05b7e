"""The one type every kind of observation returns (DESIGN.md's "observation").

It lives apart from every kind so that whatever stores, judges or shows observations (the
store, the judge, the page) can name the type without loading a kind's network code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from monitor.plan import ServiceRef


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


def not_configured(ref: ServiceRef, at: datetime) -> Observation:
    """The observation of a service whose probe or push needs unset environment variables.
    Here rather than in the pipeline so a kind (push) can write it without importing the
    pipeline that imports the kinds."""
    return Observation(at, None, f"not configured: set {', '.join(ref.service.unset)}")

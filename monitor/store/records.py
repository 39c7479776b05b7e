"""What the store hands back: incidents, rollups, runs, and the observations waiting to be
written, as plain frozen records.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from monitor.judge import OpenIncident, Verdict
from monitor.observation import Observation


@dataclass(frozen=True, slots=True)
class IncidentRecord:
    """An incident as stored."""

    id: int
    channel: str
    business: str
    direction: str
    opened_at: datetime
    resolved_at: datetime | None
    reason: str
    resolve_reason: str | None
    expected: str
    period: str | None


@dataclass(frozen=True, slots=True)
class Sighting:
    """One stored observation named as evidence: when, and the probe's reason."""

    at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class Rollup:
    """One hour of one service."""

    channel: str
    business: str
    hour: datetime
    probes: int
    serving: int
    expected_up: int
    expected_down: int
    mismatches: int
    duration_sum: float
    duration_max: float


@dataclass(frozen=True, slots=True)
class PendingObservation:
    """An observation waiting in the write buffer, with what the judge made of it."""

    channel: str
    business: str
    observation: Observation
    expected: str
    mismatch: Verdict | None


@dataclass(frozen=True, slots=True)
class RawRun:
    """A stored run: `count` observations alike from `at` to `until` (see SCHEMA_V2)."""

    at: float
    until: float
    count: int
    gap: float
    serving: int
    reason: str
    expected: str
    mismatch: str | None

    def instants(self) -> list[float]:
        """When its observations were made: the first and last exactly, those between at the
        run's even spacing (exact for a steady interval, within half an interval always)."""
        if self.count <= 1:
            return [self.at]
        step = (self.until - self.at) / (self.count - 1)
        return [self.at + k * step for k in range(self.count - 1)] + [self.until]


def _ts(value: datetime) -> float:
    return value.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _incident_record(row: tuple) -> IncidentRecord:
    return IncidentRecord(
        id=row[0],
        channel=row[1],
        business=row[2],
        direction=row[3],
        opened_at=_dt(row[4]),  # type: ignore[arg-type]
        resolved_at=_dt(row[5]),
        reason=row[6],
        resolve_reason=row[7],
        expected=row[8],
        period=row[9],
    )


def as_open_incident(record: IncidentRecord) -> OpenIncident:
    """A stored open incident, in the judge's terms (for resuming after a restart)."""
    return OpenIncident(
        id=record.id,
        direction=Verdict(record.direction),
        opened_at=record.opened_at,
        reason=record.reason,
        expected=record.expected,
        period=record.period,
    )

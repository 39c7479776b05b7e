"""Where "now" comes from: the real clock, the shifted clock of a rehearsal, or the replay
clock of the demo and the tests.

Everything except APScheduler's own timers asks a clock for the time, so the same probe ->
judge -> store path runs on real time in production, on the plan's time shifted and sped up in
a rehearsal, and on simulated time in the demo. A rehearsal runs in real time (probes, pushes
and alerts happen now) but dates everything in the plan's time: `to_real` says when an instant
of the plan comes, for the timers that wait for it (`real_instant`).
"""

from __future__ import annotations

import time as _time
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Protocol


class Clock(Protocol):
    """Anything that tells the current instant (timezone-aware)."""

    def now(self) -> datetime: ...


class RealClock:
    """The wall clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class ShiftedClock:
    """The plan's time in a rehearsal: `origin_plan` at the real instant `origin_real`, then
    `speed` plan seconds per real second (60: a plan hour a real minute).

    Real time is read from `time.monotonic`, so a step of the wall clock (NTP) moves neither
    the rehearsal nor its timers."""

    def __init__(self, origin_real: datetime, origin_plan: datetime, speed: float) -> None:
        if origin_real.tzinfo is None or origin_plan.tzinfo is None:
            raise ValueError("the shifted clock needs timezone-aware origins")
        if not speed > 0:
            raise ValueError("the shifted clock needs a speed above 0")
        self.origin_real = origin_real
        self.origin_plan = origin_plan
        self.speed = speed
        # the monotonic reading that stands for `origin_real`
        self._mono = _time.monotonic() - (datetime.now(UTC) - origin_real).total_seconds()

    def now(self) -> datetime:
        return self.origin_plan + timedelta(seconds=(_time.monotonic() - self._mono) * self.speed)

    def to_real(self, at: datetime) -> datetime:
        """The real (wall clock) instant at which the plan's instant `at` comes."""
        return self.origin_real + (at - self.origin_plan) / self.speed

    def real_seconds(self, at: datetime) -> float:
        """Real seconds from now until the plan's instant `at` (negative when it has passed)."""
        return (at - self.now()).total_seconds() / self.speed


def real_instant(clock: Clock, at: datetime) -> datetime:
    """When an instant of `clock`'s time comes on the wall clock (APScheduler's timers): the
    same instant, except on a shifted clock."""
    to_real = getattr(clock, "to_real", None)
    return at if to_real is None else to_real(at)


def runs_in_real_time(clock: Clock) -> bool:
    """Whether things happen now on `clock` (the real and the shifted one), as opposed to a
    replay that moves its clock itself: only then are alerts sent and silences timed."""
    return isinstance(clock, RealClock | ShiftedClock)


class ReplayClock:
    """A simulated clock that starts at `start` and moves `speed` times faster than real time.

    The discrete-event replay of the demo sets the time itself with `set`; with `speed` 0 the
    clock only moves when told to.
    """

    def __init__(self, start: datetime, speed: float = 0.0) -> None:
        if start.tzinfo is None:
            raise ValueError("the replay clock needs a timezone-aware start")
        self._base = start
        self._speed = speed
        self._origin = _time.monotonic()

    def now(self) -> datetime:
        if not self._speed:
            return self._base
        return self._base + timedelta(seconds=(_time.monotonic() - self._origin) * self._speed)

    def set(self, at: datetime) -> None:
        """Jump to `at` (never backwards: a replay only moves forward)."""
        current = self.now()
        if at < current:
            raise ValueError(f"the replay clock cannot go back from {current} to {at}")
        self._base = at
        self._origin = _time.monotonic()

    def advance(self, step: timedelta) -> datetime:
        """Move forward by `step` and return the new instant."""
        self.set(self.now() + step)
        return self._base


#: The instants the monitor reasons about: from 1900 up to (not including) 9000. The plan looks
#: up to 400 days ahead and a year of grace back, and the page shows weeks around an instant;
#: near year 1 or 9999 that arithmetic leaves what a datetime can hold, so instants outside
#: this range are refused as input instead of failing deep inside.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


#: Says which years are meant, in messages about instants outside them.
SUPPORTED_YEARS = f"the years the monitor works with ({EARLIEST.year} to {LATEST.year - 1})"


def supported(value: date) -> bool:
    """Whether the year of `value` (on its own wall clock, as the user wrote it) is supported."""
    return EARLIEST.year <= value.year < LATEST.year


def parse_instant(text: str, zone: tzinfo) -> datetime:
    """Read an ISO 8601 instant; a naive one is read in the plan's time zone. Instants outside
    the supported years (`supported`) are refused with a sentence, never a traceback."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f'"{text}" is not an ISO 8601 instant such as "2022-07-01T12:00" '
            'or "2022-07-01T12:00:00+08:00"'
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    if not supported(value):
        raise ValueError(
            f'"{text}" is outside {SUPPORTED_YEARS}; expected an instant in that range'
        )
    return value

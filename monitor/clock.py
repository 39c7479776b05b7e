"""Where "now" comes from: the real clock, or the replay clock of the demo and the tests.

Everything except APScheduler's own timers asks a clock for the time, so the same probe ->
judge -> store path runs on real time in production and on simulated time in the demo.
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

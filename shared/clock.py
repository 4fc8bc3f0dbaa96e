"""Clocks: the only place that reads wall time. The domain takes `now=` as an argument."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """Wall-clock time in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A fixed instant (TIERSTREAM_NOW) that tests may advance explicitly."""

    def __init__(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("FixedClock needs a timezone-aware datetime")
        self._at = at

    def now(self) -> datetime:
        return self._at

    def advance(self, delta: timedelta) -> None:
        self._at += delta

    def set(self, at: datetime) -> None:
        self._at = at


def clock_for(now: datetime | None) -> Clock:
    """The clock a service should use: fixed when TIERSTREAM_NOW is set, else the wall clock."""
    return FixedClock(now) if now is not None else SystemClock()

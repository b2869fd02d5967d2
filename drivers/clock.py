"""Clocks that drivers and the agent take as a parameter, so tests never sleep.

``SystemClock`` is the real one; ``ManualClock`` is advanced by the test.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Wall-clock time, timezone-aware, in the station's offset."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary start, never going back (for timeouts and ages)."""


class SystemClock:
    """The machine's clock, reported in a fixed UTC offset (China: +08:00)."""

    def __init__(self, utc_offset: timedelta = timedelta(hours=8)) -> None:
        self._tz = timezone(utc_offset)

    def now(self) -> datetime:
        return datetime.now(self._tz)

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told; thread-safe."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 11, 26, 10, 0, 0, tzinfo=timezone(timedelta(hours=8)))
        if self._now.tzinfo is None:
            self._now = self._now.replace(tzinfo=UTC)
        self._mono = 0.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            self._mono += seconds

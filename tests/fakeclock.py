"""A clock for unit tests: time moves only when advanced, or instantly when someone waits."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta


class FakeClock:
    """A clock that moves only when told to, or when someone waits on it (instantly)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.t = 1000.0
        self.start = start or datetime(2026, 1, 1, tzinfo=UTC)
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self.t

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.t - 1000.0)

    def advance(self, seconds: float) -> None:
        self.t += seconds

    def wait(self, event: threading.Event, timeout: float) -> bool:
        self.waits.append(timeout)
        if event.is_set():
            return True
        self.t += max(0.0, timeout)
        return event.is_set()

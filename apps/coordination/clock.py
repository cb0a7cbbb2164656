"""Time for coordination code, injectable so tests never really sleep.

``monotonic()`` measures durations (lease expiry, renew age). On Linux it reads CLOCK_BOOTTIME,
which keeps counting while the machine or VM is suspended, where CLOCK_MONOTONIC stops: a process
frozen with its VM must still find its lease old when it wakes. ``now()`` is the wall clock, used
only for timestamps that humans read (acquireTime, renewTime), never to judge expiry.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def now(self) -> datetime: ...

    def wait(self, event: threading.Event, timeout: float) -> bool:
        """Wait until ``event`` is set or ``timeout`` seconds pass; True when it was set."""
        ...


class SystemClock:
    def __init__(self) -> None:
        self._clock_id = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)

    def monotonic(self) -> float:
        return time.clock_gettime(self._clock_id)

    def now(self) -> datetime:
        return datetime.now(UTC)

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return event.wait(max(0.0, timeout))


SYSTEM_CLOCK = SystemClock()

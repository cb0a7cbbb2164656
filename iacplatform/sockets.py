"""Isolation between WebSocket clients of one web replica: a token bucket per connection and caps
on concurrent connections per key (a user, a pool token, a source address).

Guarantees: :meth:`TokenBucket.take` admits at most ``burst`` frames at once and ``rate`` per
second on average, in O(1) with no I/O, so refusing a flood costs less than serving it; a
consumer that sees it refused sends an error and closes (``CLOSE_RATE_LIMITED``), so a flooding
client is cut off after ``burst`` frames instead of stalling the replica's event loop.
:class:`ConnectionCaps` counts this process's open sockets per key: :meth:`acquire` refuses past
the limit, :meth:`release` gives the slot back (consumers release in ``disconnect``).
:class:`ConnectRate` bounds how fast one source address may open sockets, so a client cut off
with 4429 cannot turn into a reconnect storm (each handshake costs a token lookup).
Does NOT: count across replicas (each replica has its own caps; a client spread over N replicas
gets N times the cap, which still bounds what it costs each one), or survive a restart (the
count starts at zero with the process, like its sockets).
"""

from __future__ import annotations

import time
from collections.abc import Callable

# 4429: "too many requests" in the private close-code range (the HTTP status + 4000 convention
# the project's other codes follow: 4400, 4401, 4403, 4404, 4408, 4410).
CLOSE_RATE_LIMITED = 4429


class TokenBucket:
    def __init__(self, *, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = burst
        self.updated = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class ConnectionCaps:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def acquire(self, keys: dict[str, int]) -> str | None:
        """Take a slot under every key (key -> its limit), or none: the key that is full, or None."""
        for key, limit in keys.items():
            if self.counts.get(key, 0) >= limit:
                return key
        for key in keys:
            self.counts[key] = self.counts.get(key, 0) + 1
        return None

    def release(self, keys: list[str]) -> None:
        for key in keys:
            left = self.counts.get(key, 0) - 1
            if left > 0:
                self.counts[key] = left
            else:
                self.counts.pop(key, None)


class ConnectRate:
    """New connections per source address: a token bucket each (at most ``max_sources`` kept; the
    oldest are forgotten first, which only ever errs towards admitting)."""

    def __init__(self, *, max_sources: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.buckets: dict[str, TokenBucket] = {}
        self.max_sources = max_sources
        self.clock = clock

    def allow(self, source: str, *, rate: float, burst: float) -> bool:
        bucket = self.buckets.pop(source, None)
        if bucket is None:
            bucket = TokenBucket(rate=rate, burst=burst, clock=self.clock)
            while len(self.buckets) >= self.max_sources:
                del self.buckets[next(iter(self.buckets))]
        self.buckets[source] = bucket  # most recently seen last
        return bucket.take()


# One per process: every consumer of this replica runs on daphne's one event loop, so the
# counters need no lock.
caps = ConnectionCaps()
connect_rate = ConnectRate()


def client_address(scope: dict[str, object]) -> str:
    client = scope.get("client")
    if isinstance(client, (list, tuple)) and client:
        return str(client[0])
    return "unknown"

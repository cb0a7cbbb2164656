"""The sockets' token bucket and connect rate (time injected, no sleeping); the connection caps,
which need the database, are tested in tests/sockets/test_slots.py."""

from __future__ import annotations

from iacplatform.sockets import ConnectRate, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_bucket_admits_a_burst_then_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=5, clock=clock)
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]
    clock.now += 0.15
    assert bucket.take() and not bucket.take()
    clock.now += 60
    assert sum(bucket.take() for _ in range(100)) == 5  # never more than the burst after a pause


def test_connect_rate_is_per_source_and_bounded_in_memory() -> None:
    clock = Clock()
    rate = ConnectRate(max_sources=2, clock=clock)
    assert [rate.allow("a", rate=1, burst=2) for _ in range(3)] == [True, True, False]
    assert rate.allow("b", rate=1, burst=2)
    assert rate.allow("c", rate=1, burst=2)  # forgets "a", the least recently seen
    assert set(rate.buckets) == {"b", "c"}
    clock.now += 1.5
    assert rate.allow("c", rate=1, burst=2) and rate.allow("c", rate=1, burst=2)

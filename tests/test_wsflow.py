"""The consumers' pacing (iacplatform/wsflow.Pacer): time injected, no sleeping. The flow control
inside daphne is proven against a real replica in tests/integration/test_socket_flow.py."""

from __future__ import annotations

import asyncio

from iacplatform.sockets import TokenBucket
from iacplatform.wsflow import Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def pacer(clock: Clock, *, rate: float, burst: float, grace: float) -> Pacer:
    return Pacer(TokenBucket(rate=rate, burst=burst, clock=clock), grace=grace, clock=clock, sleep=clock.sleep)


def test_frames_over_the_rate_wait_for_their_token_instead_of_being_refused() -> None:
    clock = Clock()
    paced = pacer(clock, rate=10, burst=3, grace=5)
    assert [asyncio.run(paced.admit()) for _ in range(3)] == [True] * 3
    assert clock.slept == []
    assert asyncio.run(paced.admit())
    assert clock.slept[0] == 0.1 and sum(clock.slept) < 0.11  # one token's time at 10 per second


def test_a_client_kept_over_the_rate_past_the_grace_period_is_refused() -> None:
    clock = Clock()
    paced = pacer(clock, rate=10, burst=1, grace=1.05)
    admitted = 0
    while asyncio.run(paced.admit()):
        admitted += 1
        assert admitted < 100
    # The burst, then a second's worth at the rate; the refusal comes without waiting.
    assert admitted == 1 + 10
    assert sum(clock.slept) <= 1.05


def test_a_next_token_further_away_than_the_grace_is_refused_at_once() -> None:
    clock = Clock()
    paced = pacer(clock, rate=0.001, burst=2, grace=10)
    assert asyncio.run(paced.admit()) and asyncio.run(paced.admit())
    assert not asyncio.run(paced.admit())
    assert clock.slept == []


def test_a_client_back_within_its_rate_starts_a_new_grace_period() -> None:
    clock = Clock()
    paced = pacer(clock, rate=10, burst=2, grace=1)
    for _ in range(10):
        assert asyncio.run(paced.admit())  # over the rate for 0.8 s
    clock.now += 5  # quiet: the bucket refills
    assert asyncio.run(paced.admit())
    assert paced.throttled_since is None
    for _ in range(10):
        assert asyncio.run(paced.admit())  # another 0.8 s over the rate: still within the grace

"""runleader's /healthz watchdog and its address parsing."""

from __future__ import annotations

import random

import pytest

from apps.coordination.elector import ElectionConfig, LeaderElector
from apps.coordination.health import health, parse_addr
from apps.coordination.leaselock.postgres import PostgresLeaseLock
from tests.fakeclock import FakeClock

pytestmark = pytest.mark.django_db


def make(clock: FakeClock) -> LeaderElector:
    return LeaderElector(
        lock=PostgresLeaseLock(name="lease"),
        identity="a",
        config=ElectionConfig(lease_duration=15, renew_deadline=10, retry_period=2),
        clock=clock,
        rng=random.Random(1),
    )


def test_a_standby_is_healthy() -> None:
    ok, body = health(make(FakeClock()), tolerance=2, failed=lambda: False)
    assert ok and body["leading"] is False


def test_a_leader_that_stopped_renewing_past_the_lease_duration_is_unhealthy() -> None:
    clock = FakeClock()
    elector = make(clock)
    assert elector.try_acquire_or_renew()
    elector.state.leading = True
    clock.advance(16.9)
    assert health(elector, tolerance=2, failed=lambda: False)[0]
    clock.advance(0.2)
    ok, body = health(elector, tolerance=2, failed=lambda: False)
    assert not ok and "not renewed" in str(body["error"])


def test_jobs_stuck_after_a_term_make_it_unhealthy() -> None:
    ok, body = health(make(FakeClock()), tolerance=2, failed=lambda: True)
    assert not ok and body["status"] == "unhealthy"


@pytest.mark.parametrize(
    ("addr", "expected"),
    [(":9090", ("0.0.0.0", 9090)), ("127.0.0.1:1", ("127.0.0.1", 1)), ("[::1]:80", ("::1", 80))],  # noqa: S104
)
def test_addresses_parse(addr: str, expected: tuple[str, int]) -> None:
    assert parse_addr(addr) == expected


@pytest.mark.parametrize("addr", ["9090", "host:", "host:port", "h:70000", ""])
def test_bad_addresses_are_refused(addr: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_addr(addr)

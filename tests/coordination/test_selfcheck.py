"""A leader candidate's own sessions in /healthz: a NOTIFY round trip over its lease listener, and
its job locks held by its own session (the failing cases run behind PgBouncer in
tests/integration/test_pgbouncer.py)."""

from __future__ import annotations

import random

import pytest

from apps.coordination.elector import ElectionConfig, LeaderElector
from apps.coordination.health import health
from apps.coordination.joblocks import JobLocks
from apps.coordination.leaselock.postgres import PostgresLeaseLock
from apps.coordination.lockkeys import job_key
from apps.coordination.selfcheck import session_problems
from tests.fakeclock import FakeClock

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_lease_listener_hears_its_own_notify_and_held_job_locks_are_its_sessions() -> None:
    lock, locks = PostgresLeaseLock(name="selfcheck"), JobLocks()
    try:
        lock.watch(lambda: None)
        assert lock._listener is not None and lock._listener.connected.wait(10)
        assert 0 < lock.notify_round_trip(2.0) < 2.0
        assert locks.try_lock(job_key("selfcheck"))
        assert session_problems(lock, locks) == []
        locks.unlock(job_key("selfcheck"))
    finally:
        lock.close()
        locks.close()


def test_a_lock_not_listening_yet_is_not_judged() -> None:
    assert session_problems(PostgresLeaseLock(name="not-watched"), JobLocks()) == []


def test_session_problems_make_healthz_fail_with_their_message() -> None:
    elector = LeaderElector(
        lock=PostgresLeaseLock(name="lease"),
        identity="a",
        config=ElectionConfig(lease_duration=15, renew_deadline=10, retry_period=2),
        clock=FakeClock(),
        rng=random.Random(1),
    )
    ok, body = health(elector, tolerance=2, failed=lambda: False, problems=lambda: ["a NOTIFY did not come back"])
    assert not ok and body["error"] == "a NOTIFY did not come back"
    assert health(elector, tolerance=2, failed=lambda: False, problems=list)[0]

"""The Postgres lease backend: compare-and-set, bounded statements, NOTIFY to standbys."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import psycopg
import pytest
from django.db import connection

from apps.coordination.leaselock.base import Conflict, LeaderElectionRecord, LockError
from apps.coordination.leaselock.postgres import PostgresLeaseLock

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def record(holder: str, transitions: int = 0) -> LeaderElectionRecord:
    return LeaderElectionRecord(
        holder_identity=holder,
        lease_duration_seconds=15,
        acquire_time=NOW,
        renew_time=NOW,
        lease_transitions=transitions,
    )


def raw_connection() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(**connection.get_connection_params(), autocommit=True)


@pytest.mark.django_db
def test_get_of_a_missing_lease_is_none_and_create_makes_version_1() -> None:
    lock = PostgresLeaseLock(name="x")
    assert lock.get(timeout=1) is None
    created = lock.create(record("a"), timeout=1)
    assert created.resource_version == "1"
    assert lock.get(timeout=1) == created


@pytest.mark.django_db
def test_a_second_create_conflicts() -> None:
    lock = PostgresLeaseLock(name="x")
    lock.create(record("a"), timeout=1)
    with pytest.raises(Conflict):
        lock.create(record("b"), timeout=1)
    assert lock.get(timeout=1).record.holder_identity == "a"  # type: ignore[union-attr]


@pytest.mark.django_db
def test_only_one_update_from_the_same_version_wins() -> None:
    lock = PostgresLeaseLock(name="x")
    seen = lock.create(record("a"), timeout=1)
    lock.update(record("b", 1), resource_version=seen.resource_version, timeout=1)
    with pytest.raises(Conflict):
        lock.update(record("c", 1), resource_version=seen.resource_version, timeout=1)
    with pytest.raises(Conflict):
        lock.update(record("c", 1), resource_version="not-a-number", timeout=1)
    current = lock.get(timeout=1)
    assert current is not None
    assert (current.record.holder_identity, current.resource_version) == ("b", "2")


@pytest.mark.django_db(transaction=True)
def test_a_statement_blocked_past_its_timeout_fails_instead_of_hanging() -> None:
    lock = PostgresLeaseLock(name="x")
    seen = lock.create(record("a"), timeout=1)
    with raw_connection() as other:
        other.execute("BEGIN")
        other.execute("SELECT * FROM coordination_lease WHERE name = 'x' FOR UPDATE")
        with pytest.raises(LockError) as excinfo:
            lock.update(record("a"), resource_version=seen.resource_version, timeout=0.2)
        assert not isinstance(excinfo.value, Conflict)
        other.execute("ROLLBACK")
    # The connection is usable again afterwards.
    assert lock.update(record("a"), resource_version=seen.resource_version, timeout=1).resource_version == "2"


@pytest.mark.django_db(transaction=True)
def test_writes_wake_watchers_of_that_lease_only() -> None:
    watched, other = PostgresLeaseLock(name="x"), PostgresLeaseLock(name="y")
    woken = threading.Event()
    watched.watch(woken.set)
    try:
        # The listener connects in its own thread; wait until it LISTENs.
        with raw_connection() as probe:
            for _ in range(200):
                row = probe.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%%' AND datname = current_database()"
                ).fetchone()
                if row and row[0]:
                    break
                threading.Event().wait(0.02)
        # Once listening it wakes the elector once (whatever changed before is read now) ...
        assert woken.wait(5)
        woken.clear()
        # ... and then only for writes to its own lease.
        other.create(record("a"), timeout=1)
        assert not woken.wait(0.3)
        watched.create(record("a"), timeout=1)
        assert woken.wait(5)
    finally:
        watched.close()

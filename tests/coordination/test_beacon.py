"""The liveness beacon on the real database: a leader's session ending wakes the standbys at once;
a cut beacon fences its term's transactions in the database itself."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from django.db import connection

from apps.coordination.beacon import Beacon, BeaconWatch
from apps.coordination.elector import Callbacks, ElectionConfig, LeaderElector, Leadership
from apps.coordination.fencing import BeaconLost, Tick, raise_epoch
from apps.coordination.leaselock.base import LockError
from apps.coordination.leaselock.postgres import PostgresLeaseLock
from apps.coordination.lockkeys import Namespace
from apps.coordination.models import Fence, JobRun
from apps.coordination.registry import JobSpec
from apps.coordination.scheduler import TermContext, run_tick
from tests.fakeclock import FakeClock

pytestmark = pytest.mark.django_db(transaction=True)

DEFAULTS = ElectionConfig(lease_duration=15, renew_deadline=10, retry_period=2)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))


def beacon_pids() -> list[int]:
    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND granted"
            " AND mode = 'ExclusiveLock'",
            [int(Namespace.LEADER_BEACON)],
        ).fetchall()
    return [int(row[0]) for row in rows]


def beacon_waiters() -> int:
    """Standbys blocked on a beacon right now (a shared lock request not granted)."""
    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND NOT granted",
            [int(Namespace.LEADER_BEACON)],
        ).fetchone()
    return int(row[0]) if row else 0


def terminate(pid: int) -> None:
    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", [pid])


class Mortal(PostgresLeaseLock):
    """The real lock; after ``die()`` every call fails, as for a process that no longer exists."""

    dead = False

    def _execute(self, sql: str, params: list[Any], timeout: float, *, notify: bool = False) -> Any:
        if self.dead:
            raise LockError("dead")
        return super()._execute(sql, params, timeout, notify=notify)


class Candidate:
    """One elector with a beacon and a beacon watch, running in threads as runleader runs it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started: list[tuple[float, Leadership]] = []
        self.lock = Mortal(name="lease")
        self.elector = LeaderElector(
            lock=self.lock,
            identity=name,
            config=DEFAULTS,
            callbacks=Callbacks(on_started_leading=self._started),
            beacon=Beacon(lease="lease", identity=name, on_lost=lambda: None),
            beacon_watch=BeaconWatch(lease="lease", on_ended=lambda epoch: None),
        )
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _started(self, leadership: Leadership) -> None:
        self.started.append((time.monotonic(), leadership))

    def _run(self) -> None:
        try:
            self.elector.run()
        finally:
            connection.close()

    def start(self) -> Candidate:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.elector.stop(release=False)
        self.thread.join(10)


@pytest.fixture
def candidates() -> Iterator[list[Candidate]]:
    made: list[Candidate] = []
    yield made
    for candidate in made:
        candidate.stop()


def test_a_leader_whose_session_dies_is_replaced_in_well_under_a_second_at_default_timings(
    candidates: list[Candidate],
) -> None:
    a = Candidate("a").start()
    candidates.append(a)
    wait_for(lambda: a.started, 10, "a leading")
    b = Candidate("b").start()
    candidates.append(b)
    wait_for(beacon_waiters, 10, "b blocked on a's beacon")
    [pid] = beacon_pids()
    assert a.started[0][1].beacon is not None and a.started[0][1].beacon[0] == pid
    # a's process dies: it writes nothing any more, and PostgreSQL ends its sessions.
    killed = time.monotonic()
    a.lock.dead = True
    terminate(pid)
    wait_for(lambda: b.started, 5, "b leading")
    took_over = b.started[0][0] - killed
    assert took_over < 1.0, took_over
    assert b.started[0][1].epoch > a.started[0][1].epoch
    assert not a.elector.is_leader()


def test_a_beacon_found_free_is_no_reason_to_take_over(candidates: list[Candidate]) -> None:
    """A term without a beacon (its session could not take it) expires by the lease only."""
    a = Candidate("a")
    a.elector.beacon = None  # this leader lights no beacon
    a.start()
    candidates.append(a)
    wait_for(lambda: a.started, 10, "a leading")
    b = Candidate("b").start()
    candidates.append(b)
    wait_for(lambda: b.elector.holder() == "a", 10, "b watching a")
    time.sleep(1.0)
    assert not b.started
    assert a.elector.is_leader()


def test_fenced_transactions_of_a_term_whose_beacon_session_ended_commit_nothing() -> None:
    lost: list[bool] = []
    beacon = Beacon(lease="lease", identity="me", on_lost=lambda: lost.append(True))
    try:
        pid = beacon.hold(7)
        assert pid is not None
        key = beacon.key(7)
        assert key is not None
        raise_epoch(name="lease", epoch=7, holder="me")
        tick = Tick(job="j", holder="me", lease="lease", epoch=7, beacon=(pid, key))
        with tick.fenced():
            Fence.objects.filter(name="lease").update(holder_identity="while lit")
        terminate(pid)
        wait_for(lambda: lost, 5, "the beacon's owner to notice")
        with pytest.raises(BeaconLost), tick.fenced():
            Fence.objects.filter(name="lease").update(holder_identity="after the beacon ended")
        assert Fence.objects.get(name="lease").holder_identity == "while lit"

        # A tick of that term records nothing at all: it was never attempted.
        renewed: list[bool] = []
        ctx = TermContext(
            lease="lease",
            holder="me",
            epoch=7,
            is_leader=lambda: True,
            stop=threading.Event(),
            renew_term=lambda: renewed.append(True),
            beacon=(pid, key),
        )
        assert run_tick(JobSpec(name="j", every=1, func=lambda t: None), ctx) is None
        assert not JobRun.objects.exists()
        assert renewed == [True]
    finally:
        beacon.close()


def test_a_leader_whose_beacon_is_cut_stops_leading_at_once_and_starts_a_fresh_term(
    candidates: list[Candidate],
) -> None:
    a = Candidate("a").start()
    candidates.append(a)
    wait_for(lambda: a.started, 10, "a leading")
    first = a.started[0][1]
    [pid] = beacon_pids()
    terminate(pid)
    wait_for(lambda: not a.elector.is_leader(), 2, "a to stop counting itself leader")
    assert first.stop.wait(3)  # its jobs are told to stop
    # Alone, it takes a fresh term in place at once instead of waiting out its own lease.
    wait_for(lambda: len(a.started) == 2, 5, "a's next term")
    second = a.started[1][1]
    assert second.epoch > first.epoch
    assert second.beacon is not None and second.beacon[0] != pid


def test_a_standbys_acquiring_write_that_did_not_land_leaves_no_beacon_lit() -> None:
    """Chaos seed 18 (FAILOVER=1: a restart right after a failover left standbys' beacons held by
    idle sessions). A standby lights its beacon before its acquiring write; the write fails without
    an answer (here: cancelled by its statement_timeout while the leader's renew holds the row, in
    chaos: the connection lost to a restart), so it may have landed. The next read shows the record
    is the leader's: the standby must put that beacon out, not keep it for as long as it stands by."""
    clock = FakeClock()
    fast = ElectionConfig(lease_duration=3, renew_deadline=2, retry_period=0.5)  # 0.5 s per statement
    beacon = Beacon(lease="lease", identity="b", on_lost=lambda: None)
    standby = LeaderElector(lock=PostgresLeaseLock(name="lease"), identity="b", config=fast, clock=clock, beacon=beacon)
    leader = LeaderElector(lock=PostgresLeaseLock(name="lease"), identity="a", config=fast)
    try:
        assert leader.try_acquire_or_renew()
        assert not standby.try_acquire_or_renew()  # observes a's term
        clock.advance(fast.lease_duration + 1)  # a's renews are not seen: expired for b
        with psycopg.connect(**connection.get_connection_params()) as renewing:
            renewing.execute("SELECT 1 FROM coordination_lease WHERE name = 'lease' FOR UPDATE")
            assert not standby.try_acquire_or_renew()  # its UPDATE waits on the row, then is cancelled
            assert standby.state.last_error is not None and standby.state.last_error.applied_unknown
            assert len(beacon_pids()) == 1  # lit before the write, kept: the write may have landed
        assert leader.try_acquire_or_renew()  # a's renew goes through: the record stays a's
        assert not standby.try_acquire_or_renew()
        assert standby.holder() == "a"
        assert beacon_pids() == [], "b stands by with the beacon of a term that never began"
    finally:
        beacon.close()

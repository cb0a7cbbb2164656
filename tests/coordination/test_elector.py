"""The elector's client-go semantics, on the real Postgres backend with an injected clock."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime

import pytest
from django.db import connection

from apps.coordination.elector import Callbacks, ConfigError, ElectionConfig, LeaderElector, Leadership
from apps.coordination.leaselock.base import LeaderElectionRecord, LeaseLock, LockError, Observed, OnChange
from apps.coordination.leaselock.postgres import PostgresLeaseLock
from apps.coordination.models import Lease
from tests.fakeclock import FakeClock

pytestmark = pytest.mark.django_db

CONFIG = ElectionConfig(lease_duration=15, renew_deadline=10, retry_period=2)


class FlakyLock(LeaseLock):
    """The real lock, with every call failing while ``failing`` is set (a network outage)."""

    def __init__(self, inner: LeaseLock) -> None:
        super().__init__(name=inner.name, namespace=inner.namespace)
        self.inner = inner
        self.backend = inner.backend
        self.failing = False
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if self.failing:
            raise LockError("injected outage")

    def get(self, *, timeout: float) -> Observed | None:
        self._check()
        return self.inner.get(timeout=timeout)

    def create(self, record: LeaderElectionRecord, *, timeout: float) -> Observed:
        self._check()
        return self.inner.create(record, timeout=timeout)

    def update(self, record: LeaderElectionRecord, *, resource_version: str, timeout: float) -> Observed:
        self._check()
        return self.inner.update(record, resource_version=resource_version, timeout=timeout)

    def watch(self, on_change: OnChange) -> None:
        self.inner.watch(on_change)


def elector(identity: str, clock: FakeClock, *, config: ElectionConfig = CONFIG, **kwargs: object) -> LeaderElector:
    lock = kwargs.pop("lock", None) or PostgresLeaseLock(name="lease")
    return LeaderElector(
        lock=lock,  # type: ignore[arg-type]
        identity=identity,
        config=config,
        clock=clock,
        rng=random.Random(1),
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("duration", "deadline", "retry"),
    [(10, 10, 2), (10, 12, 2), (15, 2.4, 2), (15, 10, 0), (0, 10, 2), (-1, -2, -3)],
)
def test_config_rejects_unsafe_timings(duration: float, deadline: float, retry: float) -> None:
    with pytest.raises(ConfigError):
        ElectionConfig(lease_duration=duration, renew_deadline=deadline, retry_period=retry)


def test_an_empty_identity_is_rejected() -> None:
    with pytest.raises(ConfigError):
        elector("", FakeClock())


def test_first_candidate_creates_the_lease_and_leads() -> None:
    clock = FakeClock()
    a = elector("a", clock)
    assert a.try_acquire_or_renew()
    assert a.is_leader()
    assert a.epoch == 0
    lease = Lease.objects.get(name="lease")
    assert (lease.holder_identity, lease.lease_transitions, lease.lease_duration_seconds) == ("a", 0, 15)


def test_a_created_lease_starts_from_the_epoch_floor() -> None:
    a = elector("a", FakeClock(), epoch_floor=lambda: 7)
    assert a.try_acquire_or_renew()
    assert a.epoch == 7
    assert Lease.objects.get(name="lease").epoch == 7


def test_a_takeover_epoch_is_above_both_the_previous_term_and_the_floor() -> None:
    clock = FakeClock()
    floor = {"value": 0}
    a = elector("a", clock)
    b = elector("b", clock, epoch_floor=lambda: floor["value"])
    assert a.try_acquire_or_renew()
    a.release()
    assert b.try_acquire_or_renew()
    assert b.epoch == 1  # previous + 1
    b.release()
    floor["value"] = 1 << 33  # e.g. a promoted database on timeline 2
    assert b.try_acquire_or_renew()
    assert b.epoch == 1 << 33


def test_an_epoch_floor_that_cannot_be_read_starts_no_term() -> None:
    def unavailable() -> int:
        raise OSError("database is down")

    a = elector("a", FakeClock(), epoch_floor=unavailable)
    assert not a.try_acquire_or_renew()
    assert not a.is_leader()
    assert not Lease.objects.exists()
    assert a.state.last_error is not None and "epoch floor" in str(a.state.last_error)


def test_a_standby_waits_lease_duration_from_when_it_saw_the_last_change() -> None:
    clock = FakeClock()
    a, b = elector("a", clock), elector("b", clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()  # b sees the record now
    clock.advance(14.9)
    assert not b.try_acquire_or_renew()
    clock.advance(0.2)
    assert b.try_acquire_or_renew()
    assert b.epoch == 1
    assert Lease.objects.get(name="lease").lease_transitions == 1


def test_expiry_ignores_the_records_timestamps() -> None:
    """A record whose renewTime is years old is still valid for a full LeaseDuration from first sight."""
    Lease.objects.create(
        name="lease",
        holder_identity="ghost",
        lease_duration_seconds=15,
        renew_time=datetime(2001, 1, 1, tzinfo=UTC),
        acquire_time=datetime(2001, 1, 1, tzinfo=UTC),
        lease_transitions=4,
    )
    clock = FakeClock()
    b = elector("b", clock)
    assert not b.try_acquire_or_renew()
    clock.advance(14)
    assert not b.try_acquire_or_renew()
    clock.advance(1.5)
    assert b.try_acquire_or_renew()
    assert b.epoch == 5


def test_each_change_seen_restarts_the_standbys_expiry_clock() -> None:
    clock = FakeClock()
    a, b = elector("a", clock), elector("b", clock)
    a.try_acquire_or_renew()
    b.try_acquire_or_renew()
    for _ in range(10):
        clock.advance(10)
        assert a.try_acquire_or_renew()  # renewed: the record changed
        assert not b.try_acquire_or_renew()
    assert a.epoch == 0
    assert Lease.objects.get(name="lease").lease_transitions == 0


def test_is_leader_ends_when_the_last_renew_is_renew_deadline_old() -> None:
    """What a process woken from SIGSTOP sees: no longer leader before it talks to anyone."""
    clock = FakeClock()
    a = elector("a", clock)
    a.try_acquire_or_renew()
    clock.advance(9.99)
    assert a.is_leader()
    clock.advance(0.02)
    assert not a.is_leader()


def test_renew_age_is_measured_from_the_start_of_the_request() -> None:
    clock = FakeClock()

    class SlowLock(FlakyLock):
        def update(self, record: LeaderElectionRecord, *, resource_version: str, timeout: float) -> Observed:
            clock.advance(3)  # the write lands late; others saw it late, we count from before it
            return super().update(record, resource_version=resource_version, timeout=timeout)

    a = elector("a", clock, lock=SlowLock(PostgresLeaseLock(name="lease")))
    Lease.objects.create(name="lease", holder_identity="", lease_transitions=0)
    assert a.try_acquire_or_renew()
    assert a.renew_age() == pytest.approx(3)


def test_a_released_lease_is_taken_at_once_with_a_new_epoch() -> None:
    clock = FakeClock()
    a, b = elector("a", clock), elector("b", clock)
    a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    assert a.release()
    assert not a.is_leader()
    lease = Lease.objects.get(name="lease")
    assert lease.holder_identity == ""
    assert lease.lease_transitions == 0
    assert b.try_acquire_or_renew()
    assert b.epoch == 1


def test_a_leader_whose_record_was_overwritten_loses_even_under_its_own_identity() -> None:
    clock = FakeClock()
    a, twin = elector("a", clock), elector("a", clock)
    a.try_acquire_or_renew()
    twin.try_acquire_or_renew()
    clock.advance(16)
    assert twin.try_acquire_or_renew()
    assert not a.try_acquire_or_renew()
    assert not a.is_leader()
    assert twin.epoch == 1


def test_a_lost_term_is_followed_by_a_new_epoch_even_for_the_same_process() -> None:
    clock = FakeClock()
    flaky = FlakyLock(PostgresLeaseLock(name="lease"))
    stopped: list[bool] = []
    a = elector("a", clock, lock=flaky, callbacks=Callbacks(on_stopped_leading=lambda: stopped.append(True)))
    assert a.acquire_step()
    flaky.failing = True
    a._start_term()
    assert not a.renew_step()
    a._end_term()
    assert stopped == [True]
    flaky.failing = False
    clock.advance(15)
    assert a.acquire_step()
    assert a.epoch == 1


def test_renew_failures_shorter_than_the_deadline_keep_leadership() -> None:
    clock = FakeClock()
    flaky = FlakyLock(PostgresLeaseLock(name="lease"))
    a = elector("a", clock, lock=flaky)
    a.try_acquire_or_renew()
    flaky.failing = True
    failures_started = clock.monotonic()

    original_wait = clock.wait

    def recover_after_8s(event: threading.Event, timeout: float) -> bool:
        result = original_wait(event, timeout)
        if clock.monotonic() - failures_started >= 8:
            flaky.failing = False
        return result

    clock.wait = recover_after_8s  # type: ignore[method-assign]
    assert a.renew_step()
    assert a.is_leader()
    assert a.epoch == 0


def test_renew_failures_longer_than_the_deadline_lose_leadership_and_stop_the_term() -> None:
    clock = FakeClock()
    flaky = FlakyLock(PostgresLeaseLock(name="lease"))
    started, stopped = [], []

    def on_started(leadership: Leadership) -> None:
        started.append(leadership.stop)

    a = elector(
        "a",
        clock,
        lock=flaky,
        callbacks=Callbacks(on_started_leading=on_started, on_stopped_leading=lambda: stopped.append(1)),
    )
    assert a.acquire_step()
    flaky.failing = True
    began = clock.monotonic()
    a.lead()
    assert stopped == [1]
    assert not a.is_leader()
    assert a.term_thread is not None
    a.term_thread.join(1)
    assert started[0].is_set()
    # It gave up no later than RenewDeadline after its last successful renew.
    assert clock.monotonic() - began <= CONFIG.renew_deadline + CONFIG.retry_period
    assert Lease.objects.get(name="lease").holder_identity == "a"  # not released: it could not write


def test_three_candidates_never_have_two_leaders() -> None:
    """Random schedules with pauses: at every instant at most one is_leader(), and one leads mostly."""
    config = ElectionConfig(lease_duration=3, renew_deadline=2, retry_period=0.5)
    clock = FakeClock()
    rng = random.Random(42)
    candidates = [elector(name, clock, config=config) for name in ("a", "b", "c")]
    paused_until = dict.fromkeys(range(3), 0.0)
    led = 0
    steps = 3000
    for _ in range(steps):
        clock.advance(rng.uniform(0.01, 0.3))
        i = rng.randrange(3)
        if rng.random() < 0.01:
            paused_until[i] = clock.monotonic() + rng.uniform(0.5, 6)  # SIGSTOP, GC, VM freeze
        if clock.monotonic() >= paused_until[i]:
            candidates[i].try_acquire_or_renew()
        leaders = [c.identity for c in candidates if c.is_leader()]
        assert len(leaders) <= 1, leaders
        led += len(leaders)
    assert led > steps * 0.6
    transitions = Lease.objects.get(name="lease").lease_transitions
    assert transitions == sum(c.state.terms for c in candidates) - 1


def test_a_standby_waits_no_longer_than_until_the_observed_lease_expires() -> None:
    clock = FakeClock()
    config = ElectionConfig(lease_duration=3, renew_deadline=2, retry_period=1.5)
    a, b = elector("a", clock, config=config), elector("b", clock, config=config)
    a.try_acquire_or_renew()
    b.try_acquire_or_renew()
    clock.advance(2.5)
    assert b.standby_wait() <= 0.5 + 0.05


def test_client_go_polling_waits_a_jittered_retry_period() -> None:
    clock = FakeClock()
    config = ElectionConfig(lease_duration=3, renew_deadline=2, retry_period=1.5, client_go_polling=True)
    b = elector("b", clock, config=config)
    waits = [b.standby_wait() for _ in range(200)]
    assert min(waits) >= 1.5
    assert max(waits) <= 1.5 * 2.2
    assert max(waits) - min(waits) > 1


def test_on_new_leader_reports_each_holder_change() -> None:
    clock = FakeClock()
    seen: list[str] = []
    a = elector("a", clock)
    b = elector("b", clock, callbacks=Callbacks(on_new_leader=seen.append))
    a.try_acquire_or_renew()
    b.try_acquire_or_renew()
    a.release()
    b.try_acquire_or_renew()
    assert seen == ["a", "", "b"]


@pytest.mark.django_db(transaction=True)
def test_run_stops_the_term_then_releases() -> None:
    clock = FakeClock()
    events: list[str] = []
    a = elector("a", clock)

    def on_started(leadership: Leadership) -> None:
        events.append("started")
        a.stop()

    def on_stopped() -> None:
        events.append("stopped holder=%s" % Lease.objects.get(name="lease").holder_identity)

    a.callbacks = Callbacks(on_started_leading=on_started, on_stopped_leading=on_stopped)
    a.config = ElectionConfig(lease_duration=15, renew_deadline=10, retry_period=2, client_go_polling=True)

    def run() -> None:
        try:
            a.run()
        finally:
            connection.close()

    runner = threading.Thread(target=run)
    runner.start()
    runner.join(10)
    assert not runner.is_alive()
    assert events[0] == "started"
    assert events[1] == "stopped holder=a"  # jobs stopped before the release
    assert Lease.objects.get(name="lease").holder_identity == ""

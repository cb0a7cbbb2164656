"""The elector through the API server's failure modes (issue #15), against harness/fakekube.py.

Each test reproduces one failure seen against a real API server: retries during an outage, a renew
whose response was lost, a foreign metadata write, a Lease recreated with fewer transitions,
labels wiped by renewals, and the diagnosis of a candidate that can never acquire.
"""

from __future__ import annotations

import logging
import random
import threading
import time

import pytest
from kubernetes import client

from apps.coordination.elector import Callbacks, ElectionConfig, LeaderElector, Leadership
from apps.coordination.health import health
from apps.coordination.leaselock.base import LeaderElectionRecord, Observed
from apps.coordination.leaselock.kubernetes import KubernetesLeaseLock
from apps.coordination.metrics import ElectorCollector
from harness.fakekube import FakeKube
from tests.fakeclock import FakeClock

CONFIG = ElectionConfig(lease_duration=15, renew_deadline=10, retry_period=2)


def lock(fake: FakeKube) -> KubernetesLeaseLock:
    return KubernetesLeaseLock(name="leader", namespace="default", api_client=fake.api_client())


def elector(
    fake: FakeKube, identity: str, clock: FakeClock, config: ElectionConfig = CONFIG, **kw: object
) -> LeaderElector:
    return LeaderElector(
        lock=kw.pop("lock", None) or lock(fake),  # type: ignore[arg-type]
        identity=identity,
        config=config,
        clock=clock,
        rng=random.Random(11),
        **kw,  # type: ignore[arg-type]
    )


def expired_lease(fake: FakeKube, clock: FakeClock) -> None:
    """A lease held by a candidate that died, already expired for whoever watched it."""
    ghost = elector(fake, "ghost", clock)
    assert ghost.try_acquire_or_renew()


def lease_writes(fake: FakeKube) -> list[str]:
    return [method for _, method, path in fake.log if method in ("POST", "PUT") and "/leases" in path]


def standby_loop(candidate: LeaderElector, clock: FakeClock, seconds: float) -> int:
    """The standby half of ``run()`` for ``seconds`` of fake time; returns the attempts made."""
    attempts = 0
    end = clock.monotonic() + seconds
    while clock.monotonic() < end and attempts < 1000:
        attempts += 1
        if candidate.acquire_step():
            return attempts
        clock.wait(threading.Event(), candidate.standby_wait())
    return attempts


# ---- 1. no hot retry loop ---------------------------------------------------------------------


def test_a_forbidden_update_is_retried_once_per_retry_period_not_in_a_hot_loop(fakekube: FakeKube) -> None:
    clock = FakeClock()
    expired_lease(fakekube, clock)
    b = elector(fakekube, "b", clock)
    assert not b.try_acquire_or_renew()
    clock.advance(16)  # the ghost's lease has expired for b
    fakekube.forbid("update")
    before = len(lease_writes(fakekube))
    attempts = standby_loop(b, clock, 30)
    puts = len(lease_writes(fakekube)) - before
    # A full jittered RetryPeriod (2-4.4 s) after each failure: 30 s allow at most 16 attempts.
    assert attempts <= 30 / CONFIG.retry_period + 1
    assert 30 / (CONFIG.retry_period * 2.2) - 1 <= puts <= 30 / CONFIG.retry_period + 1
    assert min(clock.waits) >= CONFIG.retry_period


@pytest.mark.parametrize("status", [403, 429, 500, 503])
def test_sustained_api_errors_are_retried_once_per_retry_period(fakekube: FakeKube, status: int) -> None:
    clock = FakeClock()
    expired_lease(fakekube, clock)
    b = elector(fakekube, "b", clock)
    b.try_acquire_or_renew()
    clock.advance(16)
    with fakekube.outage(status):
        started = len(fakekube.log)
        attempts = standby_loop(b, clock, 30)
        requests = len(fakekube.log) - started
    assert attempts <= 30 / CONFIG.retry_period + 1
    assert requests <= 30 / CONFIG.retry_period + 1


def test_refused_connections_during_a_real_outage_are_retried_about_once_per_retry_period(
    fakekube: FakeKube,
) -> None:
    """Real time, real watch: neither the elector nor the broken watch spins while the server is down."""
    config = ElectionConfig(lease_duration=1, renew_deadline=0.8, retry_period=0.3)
    attempts: list[float] = []

    class Counting(KubernetesLeaseLock):
        def get(self, *, timeout: float) -> Observed | None:
            attempts.append(time.monotonic())
            return super().get(timeout=timeout)

    ghost = LeaderElector(lock=lock(fakekube), identity="ghost", config=config)
    assert ghost.try_acquire_or_renew()
    b = LeaderElector(
        lock=Counting(name="leader", namespace="default", api_client=fakekube.api_client()),
        identity="b",
        config=config,
        callbacks=Callbacks(on_started_leading=lambda leadership: None),
    )
    fakekube.forbid("update")  # b keeps failing before the outage too: the lease stays expired
    runner = threading.Thread(target=b.run, daemon=True)
    runner.start()
    try:
        time.sleep(1.5)
        with fakekube.down():
            began = time.monotonic()
            time.sleep(3.0)
            ended = time.monotonic()
        during = [t for t in attempts if began <= t < ended]
        # One attempt per jittered RetryPeriod (0.3-0.66 s): at most ~10 in 3 s, never hundreds.
        assert 3.0 / (0.3 * 2.2) - 1 <= len(during) <= 3.0 / 0.3 + 1, len(during)
    finally:
        b.stop()
        runner.join(5)


# ---- 2. a leader recognises its own write -----------------------------------------------------


def test_a_renew_whose_response_was_lost_keeps_the_term(fakekube: FakeKube) -> None:
    clock = FakeClock()
    a, b = elector(fakekube, "a", clock), elector(fakekube, "b", clock)
    assert a.acquire_step()
    epoch = a.epoch
    assert not b.try_acquire_or_renew()
    fakekube.drop_response(method="PUT")  # the server applies the renew; the answer is lost
    assert a.renew_step()
    assert a.is_leader() and a.epoch == epoch
    assert a.state.terms == 1
    for _ in range(10):  # and it keeps renewing: b never finds the lease expired
        clock.advance(2)
        assert a.try_acquire_or_renew()
        assert not b.try_acquire_or_renew()
    assert fakekube.lease("leader")["spec"]["holderIdentity"] == "a"  # type: ignore[index]


def test_an_acquire_whose_response_was_lost_starts_the_term_on_the_next_attempt(fakekube: FakeKube) -> None:
    clock = FakeClock()
    a = elector(fakekube, "a", clock)
    fakekube.drop_response(method="POST")
    assert not a.try_acquire_or_renew()
    assert fakekube.lease("leader")["spec"]["holderIdentity"] == "a"  # type: ignore[index]
    assert a.try_acquire_or_renew()  # no LeaseDuration of nobody leading
    assert a.is_leader() and a.state.terms == 1


def test_a_foreign_label_change_does_not_end_the_term_and_survives_renewals(fakekube: FakeKube) -> None:
    clock = FakeClock()
    a = elector(fakekube, "a", clock)
    assert a.acquire_step()
    epoch = a.epoch
    api = client.CoordinationV1Api(fakekube.api_client())
    # What `kubectl label lease leader team=platform` and `kubectl annotate` send.
    api.patch_namespaced_lease(
        "leader", "default", {"metadata": {"labels": {"team": "platform"}, "annotations": {"note": "hi"}}}
    )
    for _ in range(3):
        clock.advance(2)
        assert a.try_acquire_or_renew()
    assert a.is_leader() and a.epoch == epoch and a.state.terms == 1
    lease = fakekube.lease("leader")
    assert lease is not None
    assert lease["metadata"]["labels"] == {"team": "platform"}
    assert lease["metadata"]["annotations"]["note"] == "hi"


def test_a_metadata_change_does_not_restart_a_standbys_expiry_clock(fakekube: FakeKube) -> None:
    clock = FakeClock()
    a, b = elector(fakekube, "a", clock), elector(fakekube, "b", clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    clock.advance(10)
    client.CoordinationV1Api(fakekube.api_client()).patch_namespaced_lease(
        "leader", "default", {"metadata": {"labels": {"x": "y"}}}
    )
    assert not b.try_acquire_or_renew()
    clock.advance(5.1)  # LeaseDuration since b saw the last renew, not since the label
    assert b.try_acquire_or_renew()


def test_a_twin_writing_under_our_identity_still_ends_our_term(fakekube: FakeKube) -> None:
    clock = FakeClock()
    a, twin = elector(fakekube, "a", clock), elector(fakekube, "a", clock)
    assert a.try_acquire_or_renew()
    assert not twin.try_acquire_or_renew()
    clock.advance(16)
    assert twin.try_acquire_or_renew()
    assert not a.try_acquire_or_renew()
    assert not a.is_leader()


# ---- 3. a new term's epoch is above the fence --------------------------------------------------


def test_a_lease_recreated_with_fewer_transitions_gets_an_epoch_above_the_floor(fakekube: FakeKube) -> None:
    clock = FakeClock()
    fence = {"epoch": 0}
    a = elector(fakekube, "a", clock, epoch_floor=lambda: fence["epoch"] + 1)
    for _ in range(4):  # four terms: the fence is at the last one's epoch
        assert a.try_acquire_or_renew()
        fence["epoch"] = a.epoch  # type: ignore[assignment]
        assert a.release()
    assert fence["epoch"] >= 4
    fakekube.recreate_lease("leader", transitions=0)  # a namespace restored from backup
    b = elector(fakekube, "b", clock, epoch_floor=lambda: fence["epoch"] + 1)
    assert b.try_acquire_or_renew()
    assert b.epoch is not None and b.epoch > fence["epoch"]
    lease = fakekube.lease("leader")
    assert lease is not None
    assert int(lease["metadata"]["annotations"]["coordination.iacplatform.io/epoch"]) == b.epoch


def test_a_leader_asked_for_a_new_term_takes_one_in_place_with_a_higher_epoch(fakekube: FakeKube) -> None:
    clock = FakeClock()
    floor = {"value": 0}
    terms: list[Leadership] = []
    a = elector(
        fakekube,
        "a",
        clock,
        epoch_floor=lambda: floor["value"],
        callbacks=Callbacks(on_started_leading=terms.append),
    )
    b = elector(fakekube, "b", clock)
    assert a.acquire_step()
    a._start_term()
    assert not b.try_acquire_or_renew()
    first = a.epoch
    assert first is not None
    floor["value"] = first + 100  # the fence moved ahead (someone else's installation, a restore)
    terms[0].renew_term()
    assert not a.renew_step()  # this term is over ...
    a._end_term()
    assert terms[0].stop.is_set()
    assert a.acquire_step()  # ... and the next one starts at once, without waiting for expiry
    assert a.epoch is not None and a.epoch >= first + 100
    assert not b.try_acquire_or_renew()


# ---- 4/5. diagnosis ---------------------------------------------------------------------------


def test_a_forbidden_create_is_an_error_with_the_servers_explanation(
    fakekube: FakeKube, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    a = elector(fakekube, "a", clock)
    fakekube.forbid("create")
    with caplog.at_level(logging.INFO, logger="apps.coordination.elector"):
        assert not a.try_acquire_or_renew()
    [entry] = [r for r in caplog.records if "create" in r.getMessage()]
    assert entry.levelno == logging.ERROR
    assert 'cannot create resource "leases"' in entry.getMessage()
    assert "system:serviceaccount" in entry.getMessage()


def test_a_candidate_that_can_never_acquire_says_so_and_fails_healthz_after_the_documented_time(
    fakekube: FakeKube,
) -> None:
    clock = FakeClock()
    a = elector(fakekube, "a", clock)
    fakekube.forbid("create")
    assert not a.try_acquire_or_renew()
    ok, body = health(a, tolerance=2, failed=lambda: False)
    assert ok  # one failure is not yet a verdict
    assert "cannot create" in str(body["last_error"])
    metrics = {m.name: m for m in ElectorCollector(a).collect()}
    [sample] = metrics["iacplatform_leader_last_error"].samples
    assert sample.value == 1 and sample.labels["reason"] == "Forbidden"
    clock.advance(CONFIG.unhealthy_after - 1)
    assert not a.try_acquire_or_renew()
    assert health(a, tolerance=2, failed=lambda: False)[0]
    clock.advance(2)
    assert not a.try_acquire_or_renew()
    ok, body = health(a, tolerance=2, failed=lambda: False)
    assert not ok and "failing for" in str(body["error"])
    fakekube.allow("create")
    assert a.try_acquire_or_renew()
    ok, body = health(a, tolerance=2, failed=lambda: False)
    assert ok and body["last_error"] is None
    [sample] = {m.name: m for m in ElectorCollector(a).collect()}["iacplatform_leader_last_error"].samples
    assert sample.value == 0


def test_an_api_outage_alone_never_fails_healthz(fakekube: FakeKube) -> None:
    """Restarting every replica because the API server is down would help nobody."""
    clock = FakeClock()
    a = elector(fakekube, "a", clock)
    with fakekube.outage(503):
        for _ in range(100):
            a.try_acquire_or_renew()
            clock.advance(5)
    ok, body = health(a, tolerance=2, failed=lambda: False)
    assert ok and "503" in str(body["last_error"])


def test_records_carry_the_epoch(fakekube: FakeKube) -> None:
    clock = FakeClock()
    a = elector(fakekube, "a", clock, epoch_floor=lambda: 7)
    assert a.try_acquire_or_renew()
    observed = a.lock.get(timeout=1)
    assert observed is not None
    assert observed.record == LeaderElectionRecord(
        holder_identity="a",
        lease_duration_seconds=15,
        acquire_time=observed.record.acquire_time,
        renew_time=observed.record.renew_time,
        lease_transitions=0,
        epoch=7,
    )

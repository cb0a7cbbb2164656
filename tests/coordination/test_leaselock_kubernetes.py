"""The Kubernetes lease backend and the elector on it, against the fake API server."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.test import override_settings

from apps.coordination.elector import ElectionConfig, LeaderElector
from apps.coordination.kube import KubeConfigError, load_configuration
from apps.coordination.leaselock import make_lock, resolve_backend
from apps.coordination.leaselock.base import Conflict, LeaderElectionRecord, LockError
from apps.coordination.leaselock.kubernetes import KubernetesLeaseLock
from apps.coordination.leaselock.postgres import PostgresLeaseLock
from harness.fakekube import FakeKube
from tests.fakeclock import FakeClock

WHOLE_SECOND = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def record(holder: str = "a", transitions: int = 0, at: datetime = WHOLE_SECOND) -> LeaderElectionRecord:
    return LeaderElectionRecord(
        holder_identity=holder, lease_duration_seconds=15, acquire_time=at, renew_time=at, lease_transitions=transitions
    )


def lock(fake: FakeKube, name: str = "leader") -> KubernetesLeaseLock:
    return KubernetesLeaseLock(name=name, namespace="default", api_client=fake.api_client())


def elector(fake: FakeKube, identity: str, clock: FakeClock, config: ElectionConfig | None = None) -> LeaderElector:
    return LeaderElector(
        lock=lock(fake),
        identity=identity,
        config=config or ElectionConfig(lease_duration=15, renew_deadline=10, retry_period=2),
        clock=clock,
        rng=random.Random(7),
    )


def test_create_read_and_compare_and_set(fakekube: FakeKube) -> None:
    a = lock(fakekube)
    assert a.get(timeout=1) is None
    created = a.create(record(), timeout=1)
    with pytest.raises(Conflict):
        a.create(record("b"), timeout=1)
    updated = a.update(record("b", 1), resource_version=created.resource_version, timeout=1)
    assert updated.record.holder_identity == "b"
    with pytest.raises(Conflict):
        a.update(record("c", 1), resource_version=created.resource_version, timeout=1)
    assert a.get(timeout=1) == updated


def test_an_update_of_a_deleted_lease_is_a_conflict(fakekube: FakeKube) -> None:
    a = lock(fakekube)
    created = a.create(record(), timeout=1)
    fakekube.leases.objects.clear()
    with pytest.raises(Conflict):
        a.update(record(), resource_version=created.resource_version, timeout=1)


def test_a_renew_at_microsecond_zero_goes_out_with_six_digits_and_is_accepted(fakekube: FakeKube) -> None:
    clock = FakeClock(start=WHOLE_SECOND)
    a = elector(fakekube, "a", clock)
    assert a.try_acquire_or_renew()
    clock.advance(2.0)  # still a whole second
    assert a.try_acquire_or_renew()
    writes = [body for method, _, body in fakekube.requests if method in ("POST", "PUT")]
    assert [w["spec"]["renewTime"] for w in writes] == ["2026-01-01T12:00:00.000000Z", "2026-01-01T12:00:02.000000Z"]
    assert fakekube.lease("leader")["spec"]["renewTime"] == "2026-01-01T12:00:02.000000Z"  # type: ignore[index]


@pytest.mark.parametrize(("status", "method"), [(403, "GET"), (500, "PUT"), (503, None), (429, None)])
def test_server_errors_are_lock_errors_not_conflicts(fakekube: FakeKube, status: int, method: str | None) -> None:
    a = lock(fakekube)
    created = a.create(record(), timeout=1)
    fakekube.inject(status, method=method)
    with pytest.raises(LockError) as excinfo:
        a.get(timeout=1) if method in (None, "GET") else a.update(
            record(), resource_version=created.resource_version, timeout=1
        )
    assert not isinstance(excinfo.value, Conflict)
    assert "HTTP %d" % status in str(excinfo.value)


def test_a_slow_server_fails_the_request_at_its_timeout(fakekube: FakeKube) -> None:
    import time

    a = lock(fakekube)
    fakekube.latency = 0.5
    began = time.monotonic()
    with pytest.raises(LockError):
        a.get(timeout=0.1)
    assert time.monotonic() - began < 0.4


def test_an_unreachable_server_is_a_lock_error(fakekube: FakeKube) -> None:
    a = lock(fakekube)
    fakekube.stop()
    with pytest.raises(LockError):
        a.get(timeout=0.5)


def test_three_candidates_never_have_two_leaders(fakekube: FakeKube) -> None:
    config = ElectionConfig(lease_duration=3, renew_deadline=2, retry_period=0.5)
    clock = FakeClock()
    rng = random.Random(3)
    candidates = [elector(fakekube, name, clock, config) for name in ("a", "b", "c")]
    paused_until = dict.fromkeys(range(3), 0.0)
    led = 0
    steps = 1000
    for _ in range(steps):
        clock.advance(rng.uniform(0.01, 0.3))
        i = rng.randrange(3)
        if rng.random() < 0.05:
            paused_until[i] = clock.monotonic() + rng.uniform(0.5, 6)
        if rng.random() < 0.02:
            fakekube.inject(rng.choice([409, 500, 503, 403]))
        if clock.monotonic() >= paused_until[i]:
            candidates[i].try_acquire_or_renew()
        leaders = [c.identity for c in candidates if c.is_leader()]
        assert len(leaders) <= 1, leaders
        led += len(leaders)
    assert led > steps * 0.5
    assert sum(c.state.terms for c in candidates) > 3


def test_renew_failures_shorter_than_the_deadline_keep_leadership(fakekube: FakeKube) -> None:
    clock = FakeClock()
    a = elector(fakekube, "a", clock)
    assert a.acquire_step()
    fakekube.inject(503, times=3)  # three failed attempts, 2 s apart: 6 s < 10 s
    assert a.renew_step()
    assert a.is_leader()
    assert a.epoch == 0


def test_renew_failures_longer_than_the_deadline_lose_leadership(fakekube: FakeKube) -> None:
    clock = FakeClock()
    stopped: list[int] = []
    a = elector(fakekube, "a", clock)
    a.callbacks.on_stopped_leading = lambda: stopped.append(1)
    assert a.acquire_step()
    with fakekube.outage(500):
        a.lead()
    assert stopped == [1]
    assert not a.is_leader()


def test_a_standby_is_woken_by_the_watch_when_the_leader_releases(fakekube: FakeKube) -> None:
    clock = FakeClock()
    a, b = elector(fakekube, "a", clock), elector(fakekube, "b", clock)
    assert a.try_acquire_or_renew()
    woken = threading.Event()
    b.lock.watch(woken.set)
    try:
        assert woken.wait(5)  # the initial ADDED event
        woken.clear()
        assert not b.try_acquire_or_renew()
        assert a.release()
        assert woken.wait(5)
        assert b.try_acquire_or_renew()
        assert b.epoch == 1
    finally:
        b.lock.close()


def test_auto_backend_is_kubernetes_in_a_cluster_or_with_kubeconfig() -> None:
    with override_settings(KUBERNETES_SERVICE_HOST="", KUBECONFIG=""):
        assert resolve_backend("auto") == "postgres"
    with override_settings(KUBERNETES_SERVICE_HOST="10.0.0.1", KUBECONFIG=""):
        assert resolve_backend("auto") == "kubernetes"
    with override_settings(KUBERNETES_SERVICE_HOST="", KUBECONFIG="/some/kubeconfig"):
        assert resolve_backend("auto") == "kubernetes"
        assert resolve_backend("postgres") == "postgres"
    with pytest.raises(ValueError, match="everyone"):
        resolve_backend("everyone")


def test_make_lock_uses_kubeconfig(fakekube: FakeKube, tmp_path: Path) -> None:
    kubeconfig = fakekube.write_kubeconfig(tmp_path / "config")
    with override_settings(KUBERNETES_SERVICE_HOST="", KUBECONFIG=str(kubeconfig)):
        made = make_lock(backend="auto", name="leader", namespace="default")
    assert isinstance(made, KubernetesLeaseLock)
    made.create(record(), timeout=1)
    assert fakekube.lease("leader") is not None
    with override_settings(KUBERNETES_SERVICE_HOST="", KUBECONFIG=""):
        assert isinstance(make_lock(backend="auto", name="leader", namespace="default"), PostgresLeaseLock)


def test_missing_or_broken_kubernetes_configuration_is_a_clear_error(tmp_path: Path) -> None:
    with override_settings(KUBERNETES_SERVICE_HOST="", KUBECONFIG=""), pytest.raises(KubeConfigError):
        load_configuration()
    broken = tmp_path / "config"
    broken.write_text("clusters: []\n")
    with override_settings(KUBERNETES_SERVICE_HOST="", KUBECONFIG=str(broken)), pytest.raises(KubeConfigError):
        load_configuration()

"""LeaderProcess in this process (elector, scheduler, jobs) on the Kubernetes backend: a fence
ahead of the Lease never leaves a leader that runs nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from apps.coordination.elector import ElectionConfig, LeaderElector
from apps.coordination.fencing import current_epoch, raise_epoch
from apps.coordination.health import health
from apps.coordination.leader import LeaderOptions, LeaderProcess
from apps.coordination.leaselock.kubernetes import EPOCH_ANNOTATION
from apps.coordination.leaselock.postgres import PostgresLeaseLock
from apps.coordination.models import JobRun
from harness.fakekube import FakeKube
from tests.fakeclock import FakeClock

pytestmark = pytest.mark.django_db(transaction=True)

JOB = "test_heartbeat"
LEASE = "iacplatform-leader"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))


@pytest.fixture
def leader(fakekube: FakeKube, tmp_path: Path, settings: Any) -> Iterator[LeaderProcess]:
    settings.KUBECONFIG = str(fakekube.write_kubeconfig(tmp_path / "kubeconfig"))
    process = LeaderProcess(
        LeaderOptions(
            identity="me",
            backend="kubernetes",
            lease_name=LEASE,
            namespace="default",
            config=ElectionConfig(lease_duration=1, renew_deadline=0.8, retry_period=0.2),
            grace=2,
            http_addr=None,
            extra_job_modules=("tests.coordination.testjobs",),
        )
    )
    stopping = threading.Event()
    runner = threading.Thread(target=process.run, args=(stopping,), daemon=True)
    runner.start()
    yield process
    stopping.set()
    runner.join(10)


def ticking_epoch(above: int = -1) -> int:
    run = wait_for(
        lambda: JobRun.objects.filter(job=JOB, outcome="ok", epoch__gt=above).order_by("-started_at").first(),
        10,
        "a tick of an epoch above %d" % above,
    )
    return int(run.epoch)


def test_jobs_run_again_after_the_lease_is_recreated_with_fewer_transitions(
    leader: LeaderProcess, fakekube: FakeKube
) -> None:
    epoch = ticking_epoch()
    assert current_epoch(LEASE) == epoch
    fakekube.recreate_lease(LEASE, transitions=0)  # a namespace restored from an old backup
    new = ticking_epoch(above=epoch)
    lease = fakekube.lease(LEASE)
    assert lease is not None
    assert int(lease["metadata"]["annotations"][EPOCH_ANNOTATION]) == new
    assert current_epoch(LEASE) == new


def test_a_fence_raised_past_the_term_by_someone_else_leads_to_a_new_term_that_runs(leader: LeaderProcess) -> None:
    epoch = ticking_epoch()
    assert raise_epoch(name=LEASE, epoch=epoch + 1000, holder="another installation")
    new = ticking_epoch(above=epoch + 1000)
    assert new > epoch + 1000
    ok, body = health(leader.elector, tolerance=0.2, failed=leader.failed.is_set, jobs_blocked=leader.jobs_blocked)
    assert ok, body


def test_a_leader_running_no_jobs_for_longer_than_a_lease_fails_healthz() -> None:
    clock = FakeClock()
    elector = LeaderElector(
        lock=PostgresLeaseLock(name="lease"),
        identity="a",
        config=ElectionConfig(lease_duration=15, renew_deadline=10, retry_period=2),
        clock=clock,
    )
    assert elector.try_acquire_or_renew()
    assert health(elector, tolerance=2, failed=lambda: False, jobs_blocked=lambda: 14.0)[0]
    ok, body = health(elector, tolerance=2, failed=lambda: False, jobs_blocked=lambda: 16.0)
    assert not ok and "running no jobs" in str(body["error"])

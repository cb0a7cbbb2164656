"""Real runleader processes on the Kubernetes backend, against the fake API server (KUBECONFIG)."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from apps.coordination.leaselock.kubernetes import EPOCH_ANNOTATION
from apps.coordination.models import JobRun
from apps.coordination.overlaps import overlapping_ticks
from harness.fakekube import FakeKube
from harness.processes import Proc, ProcessGroup
from tests.integration.test_runleader import (
    DEADLINE,
    JOB,
    LEASE,
    RETRY,
    first_tick_after,
    sigterm_and_first_successor_tick,
    start_leaders,
    wait_for,
)

pytestmark = pytest.mark.slow


def leaders(processes: ProcessGroup, fakekube: FakeKube, tmp_path: Path, count: int) -> list[Proc]:
    kubeconfig = fakekube.write_kubeconfig(tmp_path / "kubeconfig")
    # backend "auto" must pick kubernetes because KUBECONFIG is set.
    return start_leaders(processes, count, backend="auto", env={"KUBECONFIG": str(kubeconfig)})


def k8s_leader(fakekube: FakeKube, procs: list[Proc]) -> Proc:
    def holder() -> str:
        lease = fakekube.lease("iacplatform-leader")
        return lease["spec"]["holderIdentity"] if lease else ""

    names = {p.name: p for p in procs}
    wait_for(
        lambda: holder() in names and JobRun.objects.filter(job=JOB, holder=holder(), outcome="ok").exists(),
        20,
        "a leader",
    )
    return names[holder()]


def test_sigterm_hands_over_through_the_watch_within_one_second(
    processes: ProcessGroup, fakekube: FakeKube, tmp_path: Path
) -> None:
    procs = leaders(processes, fakekube, tmp_path, 3)
    leader = k8s_leader(fakekube, procs)
    assert "kubernetes lease default/iacplatform-leader" in leader.log()
    successor = sigterm_and_first_successor_tick(leader)
    assert leader.wait(10) == 0
    lease = fakekube.lease("iacplatform-leader")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == successor.holder
    assert int(lease["metadata"]["annotations"][EPOCH_ANNOTATION]) == successor.epoch
    assert overlapping_ticks() == 0


def test_sigkill_is_taken_over_within_lease_duration_plus_retry_period(
    processes: ProcessGroup, fakekube: FakeKube, tmp_path: Path
) -> None:
    procs = leaders(processes, fakekube, tmp_path, 2)
    leader = k8s_leader(fakekube, procs)
    sent = datetime.now(UTC)
    leader.signal(signal.SIGKILL)
    successor = wait_for(lambda: first_tick_after(sent, exclude=leader.name), LEASE + RETRY + 5, "a standby's tick")
    assert isinstance(successor, JobRun)
    assert (successor.started_at - sent).total_seconds() < LEASE + RETRY
    assert overlapping_ticks() == 0


def test_api_outages_shorter_than_the_renew_deadline_keep_the_term_longer_ones_stop_the_jobs(
    processes: ProcessGroup, fakekube: FakeKube, tmp_path: Path
) -> None:
    (leader,) = leaders(processes, fakekube, tmp_path, 1)
    assert k8s_leader(fakekube, [leader]) is leader
    epoch = JobRun.objects.filter(holder=leader.name, job=JOB).latest("started_at").epoch

    with fakekube.outage(503):
        time.sleep(DEADLINE / 4)
    time.sleep(RETRY * 2)
    assert "lost" not in leader.log()
    assert JobRun.objects.filter(job=JOB, outcome="ok").latest("started_at").epoch == epoch

    began = datetime.now(UTC)
    with fakekube.outage(503):
        time.sleep(DEADLINE + RETRY + 0.5)
        ended = datetime.now(UTC)
        assert "lost" in leader.log()
    # The term ended at RenewDeadline after the last renew: no tick of it started later.
    cutoff = began + timedelta(seconds=DEADLINE + 0.5)
    assert not JobRun.objects.filter(job=JOB, epoch=epoch, started_at__gt=cutoff).exists()
    assert not JobRun.objects.filter(job=JOB, started_at__gt=cutoff, started_at__lt=ended).exclude(outcome="skipped")
    # When the API is back, the lease is taken again as a new term.
    tick = wait_for(
        lambda: JobRun.objects.filter(job=JOB, outcome="ok", epoch__gt=epoch).first(), LEASE + RETRY * 3, "a new term"
    )
    assert isinstance(tick, JobRun)
    assert leader.alive()
    assert overlapping_ticks() == 0

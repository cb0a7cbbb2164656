"""Real runleader processes on the Postgres backend: handover, crash, pause, and no overlap."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from apps.coordination.models import JobRun, Lease
from apps.coordination.overlaps import overlapping_tick_pairs, overlapping_ticks
from harness.processes import Proc, ProcessGroup, free_port, wait_http

pytestmark = pytest.mark.slow

LEASE = 3.0
DEADLINE = 2.0
RETRY = 0.5
JOB = "test_heartbeat"


def start_leaders(
    processes: ProcessGroup, count: int, backend: str = "postgres", env: dict[str, str] | None = None
) -> list[Proc]:
    """Start ``count`` runleader processes at once and wait until each serves /healthz."""
    procs = [start_leader(processes, "leader-%d" % i, backend, env, ready=False) for i in range(count)]
    for proc in procs:
        wait_http(proc, "/healthz")
    return procs


def start_leader(
    processes: ProcessGroup,
    name: str,
    backend: str = "postgres",
    env: dict[str, str] | None = None,
    *,
    ready: bool = True,
) -> Proc:
    port = free_port()
    proc = processes.manage(
        name,
        [
            "runleader",
            "--backend=%s" % backend,
            "--lease-duration=%s" % LEASE,
            "--renew-deadline=%s" % DEADLINE,
            "--retry-period=%s" % RETRY,
            "--grace=2",
            "--http-addr=127.0.0.1:%d" % port,
        ],
        role="leader",
        port=port,
        env={"LEADER_EXTRA_JOB_MODULES": "tests.coordination.testjobs", **(env or {})},
    )
    if ready:
        wait_http(proc, "/healthz")
    return proc


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))


def holder() -> str:
    return Lease.objects.filter(name="iacplatform-leader").values_list("holder_identity", flat=True).first() or ""


def first_tick_after(when: datetime, *, exclude: str) -> JobRun | None:
    return (
        JobRun.objects.filter(job=JOB, outcome="ok", started_at__gt=when)
        .exclude(holder=exclude)
        .order_by("started_at")
        .first()
    )


def sigterm_and_first_successor_tick(leader: Proc) -> JobRun:
    """SIGTERM the leader; a standby's first tick must start within one second of the signal."""
    sent = datetime.now(UTC)
    leader.signal(signal.SIGTERM)
    successor = wait_for(lambda: first_tick_after(sent, exclude=leader.name), 5, "a standby's tick")
    assert isinstance(successor, JobRun)
    assert (successor.started_at - sent).total_seconds() < 1.0
    return successor


def leader_running_jobs(procs: list[Proc]) -> Proc:
    names = {p.name: p for p in procs}
    name = wait_for(
        lambda: holder() in names and JobRun.objects.filter(job=JOB, holder=holder(), outcome="ok").exists(),
        20,
        "a leader",
    )
    assert name
    return names[holder()]


def get_json(proc: Proc, path: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(proc.url + path, timeout=5) as response:  # noqa: S310 - local test URL
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_sigterm_hands_over_within_one_second_and_exits_zero(processes: ProcessGroup) -> None:
    procs = start_leaders(processes, 3)
    leader = leader_running_jobs(procs)
    status, body = get_json(leader, "/healthz")
    assert status == 200 and body["leading"] is True

    def metrics() -> str:
        with urllib.request.urlopen(leader.url + "/metrics", timeout=5) as response:  # noqa: S310
            text = response.read().decode()
        return text if 'iacplatform_job_ticks_total{job="test_heartbeat",outcome="ok"}' in text else ""

    text = wait_for(metrics, 5, "tick metrics")
    assert isinstance(text, str)
    assert 'iacplatform_leader_is_leader{backend="postgres",lease="iacplatform-leader"} 1.0' in text

    successor = sigterm_and_first_successor_tick(leader)
    assert leader.wait(10) == 0
    assert "released" in leader.log()
    assert successor.epoch > JobRun.objects.filter(holder=leader.name).latest("started_at").epoch
    assert not JobRun.objects.filter(holder=leader.name, started_at__gt=successor.started_at).exclude(outcome="skipped")
    assert overlapping_ticks() == 0


def test_sigkill_is_taken_over_within_lease_duration_plus_retry_period(processes: ProcessGroup) -> None:
    procs = start_leaders(processes, 2)
    leader = leader_running_jobs(procs)
    sent = datetime.now(UTC)
    leader.signal(signal.SIGKILL)
    successor = wait_for(lambda: first_tick_after(sent, exclude=leader.name), LEASE + RETRY + 5, "a standby's tick")
    assert isinstance(successor, JobRun)
    assert (successor.started_at - sent).total_seconds() < LEASE + RETRY
    assert overlapping_ticks() == 0


def test_a_leader_paused_past_its_lease_runs_no_tick_after_waking(processes: ProcessGroup) -> None:
    procs = start_leaders(processes, 2)
    leader = leader_running_jobs(procs)
    standby = next(p for p in procs if p is not leader)
    paused = datetime.now(UTC)
    leader.signal(signal.SIGSTOP)
    try:
        wait_for(lambda: first_tick_after(paused, exclude=leader.name), LEASE + RETRY + 5, "takeover")
        time.sleep(0.5)  # the new leader keeps ticking while the old one sleeps
    finally:
        woke = datetime.now(UTC)
        leader.signal(signal.SIGCONT)
    # Give the old leader time to notice it lost, and to do anything wrong it might do.
    time.sleep(DEADLINE)
    assert leader.alive()
    assert holder() == standby.name
    late = JobRun.objects.filter(holder=leader.name, started_at__gte=woke).exclude(outcome="skipped")
    assert list(late.values_list("outcome", "started_at")) == []
    assert overlapping_ticks() == 0, [
        [
            (r.job, r.holder, r.epoch, r.outcome, r.started_at.time(), r.finished_at and r.finished_at.time())
            for r in pair
        ]
        for pair in overlapping_tick_pairs()
    ]
    status, body = get_json(leader, "/healthz")
    assert status == 200 and body["leading"] is False
    assert "lost" in leader.log()


def test_sigterm_during_a_long_tick_still_hands_over_within_one_second(processes: ProcessGroup) -> None:
    """Under load a tick is in flight when SIGTERM comes: it stops at its next batch."""
    env = {"LEADER_EXTRA_JOB_MODULES": "tests.coordination.testjobs,tests.coordination.longjobs"}
    procs = start_leaders(processes, 2, env=env)
    leader = leader_running_jobs(procs)
    # The long tick in flight, and every other job past its first tick (a first tick may load
    # something that no stop event can interrupt, e.g. the embedding model).
    wait_for(
        lambda: (
            JobRun.objects.filter(job="test_batches", holder=leader.name, outcome="running").exists()
            and not JobRun.objects.filter(holder=leader.name, outcome="running")
            .exclude(job__in=["test_batches", JOB])
            .exists()
        ),
        30,
        "a long tick in flight and the other jobs idle",
    )
    sigterm_and_first_successor_tick(leader)
    assert leader.wait(10) == 0
    stopped = (
        JobRun.objects.filter(job="test_batches", holder=leader.name).exclude(outcome="running").latest("started_at")
    )
    assert stopped.outcome == "ok" and "stopped early" in stopped.error
    assert overlapping_ticks() == 0


def test_jobs_that_outlive_the_grace_period_make_the_process_exit_non_zero(processes: ProcessGroup) -> None:
    (leader,) = [start_leader(processes, "leader-0", env={"LEADER_EXTRA_JOB_MODULES": "tests.coordination.stuckjobs"})]
    wait_for(lambda: JobRun.objects.filter(job="test_stuck", outcome="running").exists(), 20, "the stuck tick")
    leader.signal(signal.SIGTERM)
    assert leader.wait(10) == 1
    assert "did not stop" in leader.log()
    # It kept the lease (a stuck job may still act outside the database): it expires normally.
    assert holder() == "leader-0"


def test_bad_options_are_refused_with_a_clear_error(processes: ProcessGroup) -> None:
    bad = processes.manage("bad", ["runleader", "--renew-deadline=20"], role="leader")
    assert bad.wait(30) == 1
    assert "renew deadline" in bad.log()
    bad = processes.manage("bad-addr", ["runleader", "--http-addr=nowhere"], role="leader")
    assert bad.wait(30) == 1
    assert "HOST:PORT" in bad.log()

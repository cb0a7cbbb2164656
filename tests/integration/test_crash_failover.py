"""Crash failover through the beacon (issue #15): real runleader processes at the DEFAULT timings
(15/10/2), both lease backends. A SIGKILLed leader is replaced within one second; a beacon cut
while its leader lives (pg_terminate_backend) never lets two terms' ticks overlap."""

from __future__ import annotations

import functools
import signal
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from apps.coordination.lockkeys import Namespace
from apps.coordination.models import JobRun
from apps.coordination.overlaps import overlapping_tick_pairs, overlapping_ticks
from harness.fakekube import FakeKube
from harness.processes import Proc, ProcessGroup, free_port, wait_http
from tests.coordination.test_beacon import beacon_waiters
from tests.integration.test_runleader import JOB, first_tick_after, wait_for

pytestmark = pytest.mark.slow


def leader(processes: ProcessGroup, name: str, env: dict[str, str], *, ready: bool = True) -> Proc:
    port = free_port()
    proc = processes.manage(
        name,
        [
            "runleader",
            "--lease-duration=15",
            "--renew-deadline=10",
            "--retry-period=2",
            "--grace=2",
            "--http-addr=127.0.0.1:%d" % port,
        ],
        role="leader",
        port=port,
        env={"LEADER_EXTRA_JOB_MODULES": "tests.coordination.testjobs", **env},
    )
    if ready:
        wait_http(proc, "/healthz")
    return proc


def backend_env(backend: str, fakekube: FakeKube, tmp_path: Path) -> dict[str, str]:
    if backend == "kubernetes":
        return {"LEADER_ELECTION_BACKEND": "kubernetes", "KUBECONFIG": str(fakekube.write_kubeconfig(tmp_path / "kc"))}
    return {"LEADER_ELECTION_BACKEND": "postgres"}


def ticking(procs: list[Proc]) -> Proc:
    names = {p.name: p for p in procs}

    def current() -> str:
        run = JobRun.objects.filter(job=JOB, outcome="ok").order_by("-started_at").first()
        return run.holder if run is not None and run.holder in names else ""

    name = wait_for(current, 30, "a leader ticking")
    assert isinstance(name, str)
    return names[name]


def beacon_holders() -> list[tuple[int, str]]:
    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT l.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.classid = %s AND l.granted AND l.mode = 'ExclusiveLock'",
            [int(Namespace.LEADER_BEACON)],
        ).fetchall()
    return [(int(pid), str(name)) for pid, name in rows]


def first_ok_after(when: datetime) -> JobRun | None:
    return JobRun.objects.filter(job=JOB, outcome="ok", started_at__gt=when).order_by("started_at").first()


def overlaps_explained() -> list[object]:
    return [
        [(r.holder, r.epoch, r.outcome, r.started_at.time(), r.finished_at and r.finished_at.time()) for r in pair]
        for pair in overlapping_tick_pairs()
    ]


@pytest.mark.parametrize("backend", ["postgres", "kubernetes"])
def test_a_sigkilled_leader_is_replaced_within_one_second_at_default_timings(
    processes: ProcessGroup, fakekube: FakeKube, tmp_path: Path, backend: str
) -> None:
    env = backend_env(backend, fakekube, tmp_path)
    procs = [leader(processes, "leader-%d" % i, env, ready=False) for i in range(2)]
    for proc in procs:
        wait_http(proc, "/healthz")
    first = ticking(procs)
    wait_for(beacon_waiters, 10, "the standby blocked on the leader's beacon")
    sent = datetime.now(UTC)
    first.signal(signal.SIGKILL)
    successor = wait_for(lambda: first_tick_after(sent, exclude=first.name), 10, "the standby's first tick")
    assert isinstance(successor, JobRun)
    took = (successor.started_at - sent).total_seconds()
    assert took < 1.0, "took %.3fs (the lease is 15 s)" % took
    assert overlapping_ticks() == 0, overlaps_explained()


@pytest.mark.parametrize("backend", ["postgres", "kubernetes"])
def test_a_beacon_cut_while_its_leader_lives_never_overlaps_two_terms(
    processes: ProcessGroup, fakekube: FakeKube, tmp_path: Path, backend: str
) -> None:
    env = backend_env(backend, fakekube, tmp_path)
    procs = [leader(processes, "leader-%d" % i, env, ready=False) for i in range(2)]
    for proc in procs:
        wait_http(proc, "/healthz")
    ticking(procs)
    gaps = []
    for _ in range(3):
        wait_for(beacon_waiters, 10, "the standby blocked on the leader's beacon")
        [(pid, _name)] = beacon_holders()
        cut = datetime.now(UTC)
        with psycopg.connect(**connection.get_connection_params(), autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", [pid])
        # Someone leads again soon (the standby woken by the beacon, or the leader's fresh term).
        tick = wait_for(functools.partial(first_ok_after, cut), 10, "a tick after the cut")
        assert isinstance(tick, JobRun)
        gaps.append((tick.started_at - cut).total_seconds())
    assert all(p.alive() for p in procs)
    assert overlapping_ticks() == 0, overlaps_explained()
    assert max(gaps) < 2.0, gaps

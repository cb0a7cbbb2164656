"""Job ticks: only while leading, under the job's advisory lock, fenced, each recorded."""

from __future__ import annotations

import threading
from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from apps.coordination.fencing import Tick, raise_epoch
from apps.coordination.lockkeys import job_key
from apps.coordination.models import Fence, JobRun
from apps.coordination.overlaps import overlapping_ticks
from apps.coordination.registry import JobSpec
from apps.coordination.scheduler import Term, TermContext, close_abandoned_runs, run_tick
from tests.fakeclock import FakeClock

pytestmark = pytest.mark.django_db

writes: list[str] = []


def write_holder(tick: Tick) -> None:
    with tick.fenced():
        Fence.objects.filter(name=tick.lease).update(holder_identity="written by %s" % tick.holder)


def fail(tick: Tick) -> None:
    raise RuntimeError("boom")


def ctx(epoch: int = 1, *, leader: bool = True) -> TermContext:
    return TermContext(
        lease="lease", holder="me", epoch=epoch, is_leader=lambda: leader, stop=threading.Event(), clock=FakeClock()
    )


def test_a_tick_runs_and_is_recorded() -> None:
    raise_epoch(name="lease", epoch=1, holder="me")
    assert run_tick(JobSpec(name="j", every=1, func=write_holder), ctx()) == "ok"
    run = JobRun.objects.get()
    assert (run.job, run.holder, run.epoch, run.outcome) == ("j", "me", 1, "ok")
    assert run.finished_at is not None and run.finished_at >= run.started_at
    assert Fence.objects.get(name="lease").holder_identity == "written by me"


def test_no_tick_and_no_record_when_not_leader() -> None:
    raise_epoch(name="lease", epoch=1, holder="me")
    assert run_tick(JobSpec(name="j", every=1, func=write_holder), ctx(leader=False)) is None
    assert not JobRun.objects.exists()
    assert Fence.objects.get(name="lease").holder_identity == "me"


def test_a_tick_with_a_stale_epoch_writes_nothing_and_is_recorded_as_fenced() -> None:
    raise_epoch(name="lease", epoch=2, holder="successor")
    assert run_tick(JobSpec(name="j", every=1, func=write_holder), ctx(epoch=1)) == "fenced"
    assert Fence.objects.get(name="lease").holder_identity == "successor"
    assert list(JobRun.objects.values_list("outcome", flat=True)) == ["fenced"]


def test_a_leader_paused_before_its_first_write_and_woken_past_its_lease_records_no_tick() -> None:
    # CI (PostgreSQL 18): a job thread passed its leader check, the process was stopped, and on
    # waking the fence refused the tick before the elector noticed the lost lease. A 'fenced' row
    # stamped now would read as a tick inside the successor's running one.
    raise_epoch(name="lease", epoch=2, holder="successor")
    successor = JobRun.objects.create(job="j", holder="successor", epoch=2, started_at=timezone.now())
    checks = iter([True, True])  # true while the tick begins; the lease is past after the pause
    context = ctx(epoch=1)
    context.is_leader = lambda: next(checks, False)
    assert run_tick(JobSpec(name="j", every=1, func=write_holder), context) is None
    assert list(JobRun.objects.values_list("holder", "outcome")) == [("successor", "running")]
    assert overlapping_ticks() == 0
    successor.refresh_from_db()
    assert not successor.overlapped


def test_a_failing_job_is_recorded_as_error() -> None:
    raise_epoch(name="lease", epoch=1, holder="me")
    assert run_tick(JobSpec(name="j", every=1, func=fail), ctx()) == "error"
    assert JobRun.objects.get().error == "RuntimeError: boom"


@pytest.mark.django_db(transaction=True)
def test_a_tick_whose_lock_is_held_elsewhere_is_skipped() -> None:
    raise_epoch(name="lease", epoch=1, holder="me")
    namespace, key = job_key("j")
    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s, %s)", [int(namespace), key])
        assert run_tick(JobSpec(name="j", every=1, func=write_holder), ctx()) == "skipped"
        # Unlocked explicitly: a closed session's backend lets go of its locks asynchronously.
        other.execute("SELECT pg_advisory_unlock(%s, %s)", [int(namespace), key])
    assert Fence.objects.get(name="lease").holder_identity == "me"
    assert list(JobRun.objects.values_list("outcome", flat=True)) == ["skipped"]
    # Released by the other session: the next tick runs.
    assert run_tick(JobSpec(name="j", every=1, func=write_holder), ctx()) == "ok"


def test_overlapping_ticks_of_different_holders_are_counted_skipped_ones_are_not() -> None:
    t0 = timezone.now()
    s = timedelta(seconds=1)
    JobRun.objects.create(job="j", holder="a", epoch=1, started_at=t0, finished_at=t0 + 2 * s, outcome="ok")
    JobRun.objects.create(job="j", holder="b", epoch=2, started_at=t0 + 3 * s, finished_at=t0 + 4 * s, outcome="ok")
    JobRun.objects.create(job="j", holder="b", epoch=2, started_at=t0 + s, finished_at=t0 + s, outcome="skipped")
    JobRun.objects.create(job="k", holder="b", epoch=2, started_at=t0 + s, finished_at=t0 + s, outcome="ok")
    assert overlapping_ticks() == 0
    JobRun.objects.create(job="j", holder="c", epoch=3, started_at=t0 + s, outcome="running")
    assert overlapping_ticks() == 2
    assert overlapping_ticks("k") == 0


def test_a_new_term_closes_running_ticks_of_older_terms() -> None:
    raise_epoch(name="lease", epoch=5, holder="me")
    old = JobRun.objects.create(job="j", holder="dead", epoch=4, started_at=timezone.now())
    ours = JobRun.objects.create(job="j", holder="me", epoch=5, started_at=timezone.now())
    assert close_abandoned_runs(ctx(epoch=5)) == 1
    old.refresh_from_db()
    ours.refresh_from_db()
    assert old.outcome == "error" and old.finished_at is not None
    assert ours.outcome == "running"


def test_a_term_whose_fence_is_ahead_runs_no_job() -> None:
    raise_epoch(name="lease", epoch=9, holder="other")
    context = ctx(epoch=3)
    ran: list[str] = []
    term = Term(ctx=context, jobs=[JobSpec(name="j", every=1, func=lambda t: ran.append("j"))], recovery=[], grace=1)
    term.run()
    assert ran == []
    assert term.threads == []


@pytest.mark.django_db(transaction=True)
def test_a_term_runs_recovery_first_then_jobs_and_reports_jobs_that_outlive_the_grace() -> None:
    order: list[str] = []
    release = threading.Event()
    started = threading.Event()

    def recovery(tick: Tick) -> None:
        order.append("recovery epoch %d" % tick.epoch)

    def stuck(tick: Tick) -> None:
        order.append("job")
        started.set()
        release.wait(10)

    context = ctx(epoch=1)
    term = Term(ctx=context, jobs=[JobSpec(name="stuck", every=1, func=stuck)], recovery=[recovery], grace=0.05)
    runner = threading.Thread(target=term.run)
    runner.start()
    assert started.wait(10)
    context.stop.set()
    runner.join(10)
    assert order == ["recovery epoch 1", "job"]
    assert term.stuck == ["job:stuck"]
    release.set()
    term.threads[0].join(10)
    assert JobRun.objects.get().outcome == "ok"


@pytest.mark.django_db(transaction=True)
def test_a_new_term_evicts_sessions_of_older_terms_that_still_hold_job_locks() -> None:
    """A frozen old leader holding a job lock outside a transaction would block that job forever."""
    namespace, key = job_key("j")
    ran: list[int] = []
    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as stale:
        stale.execute("SELECT pg_advisory_lock(%s, %s)", [int(namespace), key])
        context = ctx(epoch=1)

        def once(tick: Tick) -> None:
            ran.append(1)
            context.stop.set()

        term = Term(ctx=context, jobs=[JobSpec(name="j", every=60, func=once)], recovery=[], grace=5)
        runner = threading.Thread(target=term.run)
        runner.start()
        for _ in range(500):
            if ran:
                break
            threading.Event().wait(0.01)
        context.stop.set()
        runner.join(10)
        assert ran == [1]
        with pytest.raises(psycopg.OperationalError):
            stale.execute("SELECT 1")
    assert list(JobRun.objects.values_list("outcome", flat=True)) == ["ok"]


def test_a_tick_closed_as_abandoned_by_a_successor_keeps_that_end_when_it_finishes() -> None:
    raise_epoch(name="lease", epoch=1, holder="me")

    def successor_takes_over_meanwhile(tick: Tick) -> None:
        raise_epoch(name="lease", epoch=2, holder="successor")
        close_abandoned_runs(ctx(epoch=2))

    assert run_tick(JobSpec(name="j", every=1, func=successor_takes_over_meanwhile), ctx(epoch=1)) == "ok"
    run = JobRun.objects.get()
    assert (run.outcome, run.error) == ("error", "abandoned: its holder lost the lease")


def test_a_long_tick_stops_at_its_next_fenced_batch_when_the_term_ends() -> None:
    """SIGTERM under load: the release must not wait for a tick of many batches to run to its end."""
    raise_epoch(name="lease", epoch=1, holder="me")
    context = ctx(epoch=1)
    batches: list[int] = []

    def many_batches(tick: Tick) -> None:
        for n in range(100):
            with tick.fenced():
                Fence.objects.filter(name="lease").update(holder_identity="batch %d" % n)
            batches.append(n)
            if n == 2:
                context.stop.set()  # the term ends while the tick is in its third batch

    assert run_tick(JobSpec(name="j", every=1, func=many_batches), context) == "ok"
    assert batches == [0, 1, 2]
    assert Fence.objects.get(name="lease").holder_identity == "batch 2"
    run = JobRun.objects.get()
    assert run.outcome == "ok" and "stopped" in run.error


def test_a_tick_sees_its_terms_stop_event() -> None:
    context = ctx(epoch=1)
    tick = context.tick("j")
    assert not tick.stopping()
    context.stop.set()
    assert tick.stopping()

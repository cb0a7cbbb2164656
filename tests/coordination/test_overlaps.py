"""The database flags an overlapping tick as it is written or closed, and the flags agree with the
exact walk; clusterstatus and /metrics count flags, so their cost does not grow with history."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection, connections, transaction

from apps.coordination.models import JobRun, JobRunDay
from apps.coordination.overlaps import (
    COUNTS_SQL,
    backfill_flags,
    overlap_counts,
    overlapping_tick_pairs,
    overlapping_ticks,
)
from apps.coordination.retention import prune
from tests import plans

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
S = timedelta(seconds=1)


def tick(job: str, start: datetime, seconds: float | None = 1, *, outcome: str = "ok", holder: str = "a") -> JobRun:
    end = None if seconds is None else start + timedelta(seconds=seconds)
    if end is None:
        outcome = "running"
    return JobRun.objects.create(job=job, holder=holder, epoch=1, started_at=start, finished_at=end, outcome=outcome)


def flagged() -> set[int]:
    return set(JobRun.objects.filter(overlapped=True).values_list("pk", flat=True))


def test_back_to_back_ticks_are_not_flagged_and_one_inside_another_is() -> None:
    a = tick("j", T0, 2)
    b = tick("j", T0 + 2 * S, 1)  # starts exactly as the previous one ends: no overlap
    tick("k", T0 + S, 1)  # another job
    assert flagged() == set()
    c = tick("j", T0 + 2.5 * S, 1, holder="intruder")
    assert flagged() == {c.pk}
    assert overlapping_ticks() == 1 and overlap_counts().window == 1
    assert [(e.pk, later.pk) for e, later in overlapping_tick_pairs()] == [(b.pk, c.pk)]
    assert a.pk not in flagged()


def test_a_tick_started_while_an_earlier_one_runs_is_flagged_and_a_skipped_one_is_not() -> None:
    tick("j", T0, None)  # still running
    skipped = tick("j", T0 + S, 0, outcome="skipped")
    later = tick("j", T0 + 2 * S, 1, holder="b")
    assert flagged() == {later.pk}
    assert skipped.pk not in flagged()


def test_the_latest_end_is_carried_past_ticks_that_ended_earlier() -> None:
    # A long tick, a short one inside it (flagged), then one after the short one but before the
    # long one ended: flagged too, although its immediate predecessor had ended.
    tick("j", T0, 10)
    inside = tick("j", T0 + S, 1, holder="b")
    after = tick("j", T0 + 3 * S, 1, holder="b")
    clear = tick("j", T0 + 11 * S, 1)
    assert flagged() == {inside.pk, after.pk}
    clear.refresh_from_db()
    assert clear.prior_end == T0 + 10 * S
    assert overlapping_ticks() == 2


def test_a_back_dated_tick_flags_the_later_ticks_it_overlaps() -> None:
    first = tick("j", T0, 1)
    second = tick("j", T0 + 5 * S, 1)
    third = tick("j", T0 + 20 * S, 1)
    # Written late (clock skew, a restored row): it ran from 0.5 s to 6 s.
    late = tick("j", T0 + 0.5 * S, 5.5, holder="skewed")
    assert flagged() == {late.pk, second.pk}
    assert overlapping_ticks() == 2
    assert first.pk not in flagged() and third.pk not in flagged()
    # The next tick still compares with the whole history.
    assert tick("j", T0 + 21.5 * S, 1).pk not in flagged()
    assert tick("j", T0 + 22 * S, 1, holder="b").pk in flagged()


def test_ticks_written_while_an_earlier_one_ran_stay_flagged_when_it_closes_late() -> None:
    running = tick("j", T0, None)
    successor = tick("j", T0 + 5 * S, 1, holder="b")
    assert flagged() == {successor.pk}
    JobRun.objects.filter(pk=running.pk).update(finished_at=T0 + 30 * S, outcome="ok")
    # Written after the close: the long tick's end reaches it through the chain.
    after_close = tick("j", T0 + 20 * S, 1, holder="b")
    assert flagged() == {successor.pk, after_close.pk}
    assert overlapping_ticks() == 2


@pytest.mark.django_db(transaction=True)
def test_two_leaders_writing_ticks_of_one_job_at_once_see_each_other() -> None:
    """Without the trigger's lock, each insert would miss the other's uncommitted row."""
    a_inserted = threading.Event()
    errors: list[BaseException] = []

    def leader_a() -> None:
        try:
            with transaction.atomic():
                JobRun.objects.create(job="j", holder="a", epoch=1, started_at=T0, outcome="running")
                a_inserted.set()
                # Commit only once b's insert is waiting for the check's lock.
                with connection.cursor() as cursor:
                    for _ in range(200):
                        cursor.execute(
                            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 7105"
                            " AND NOT granted"
                        )
                        if cursor.fetchone()[0]:
                            break
                        threading.Event().wait(0.02)
                    else:
                        raise AssertionError("b never waited for the lock")
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    def leader_b() -> None:
        try:
            a_inserted.wait(10)
            with transaction.atomic():
                JobRun.objects.create(job="j", holder="b", epoch=2, started_at=T0 + S, outcome="running")
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=leader_a), threading.Thread(target=leader_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert list(JobRun.objects.filter(overlapped=True).values_list("holder", flat=True)) == ["b"]
    assert overlapping_ticks() == 1


def test_the_backfill_flags_history_written_before_the_trigger_and_continues_the_chain() -> None:
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE coordination_jobrun DISABLE TRIGGER USER")
        tick("j", T0, 10)
        inside = tick("j", T0 + S, 1, holder="b")
        tick("j", T0 + 2 * S, 0, outcome="skipped")
        cursor.execute("ALTER TABLE coordination_jobrun ENABLE TRIGGER USER")
    assert flagged() == set()
    backfill_flags()
    assert flagged() == {inside.pk}
    assert backfill_flags() >= 1 and flagged() == {inside.pk}  # again: nothing new
    # The long tick's end, 10 s, carries into the next tick's check.
    assert tick("j", T0 + 5 * S, 1, holder="c").pk in flagged()


def test_pruned_ticks_carry_their_flags_into_the_aggregates_counted_once() -> None:
    old = T0 - timedelta(days=8)
    tick("j", old, 10)
    overlapping = tick("j", old + S, 1, holder="b")
    kept = tick("j", T0, 1)
    assert overlap_counts().window == 1 and overlap_counts().ever == 1
    assert prune(retention=timedelta(days=7), now=T0 + S).ticks == 2
    assert list(JobRun.objects.values_list("pk", flat=True)) == [kept.pk]
    assert JobRunDay.objects.get().overlapped == 1
    counts = overlap_counts()
    assert (counts.window, counts.ever) == (0, 1)
    assert overlapping.pk not in flagged()


# A week of ticks, seeded by SQL: ten jobs every minute (100,800 ticks), one in a hundred skipped,
# and a handful flagged as overlapping, as the trigger would have.
JOBS = 10
WEEK = 7 * 24 * 60
FLAGGED = 5

# What counting may touch: the partial index's pages and the flagged ticks' heap pages. A scan
# reads the whole table (1,146 pages here; counting touches 6 on PostgreSQL 18).
COUNT_BUFFERS = 20


@pytest.fixture
def a_week_of_ticks(db: None) -> None:
    """Committed, as in production: the flush that ends the test (transaction=True) truncates the
    table, so no later test plans over these rows."""
    seed: dict[str, Any] = {"jobs": JOBS, "week": WEEK, "now": T0, "every": JOBS * WEEK // FLAGGED}
    # One transaction: if the insert fails, the trigger is not left disabled for later tests.
    with transaction.atomic(), connection.cursor() as cursor:
        # The flags are written as the trigger would have (it would check 100,800 rows one by one).
        cursor.execute("ALTER TABLE coordination_jobrun DISABLE TRIGGER USER")
        cursor.execute(
            "INSERT INTO coordination_jobrun (job, holder, epoch, started_at, finished_at, outcome, error,"
            " overlapped)"
            " SELECT 'job-' || j, 'leader-' || (i / 1440 %% 2), 1 + i / 1440,"
            " %(now)s::timestamptz - make_interval(mins => %(week)s - i, secs => j),"
            " %(now)s::timestamptz - make_interval(mins => %(week)s - i, secs => j - 2),"
            " CASE WHEN i %% 100 = 0 THEN 'skipped' ELSE 'ok' END, '',"
            " (i * %(jobs)s + j) %% %(every)s = 17"
            " FROM generate_series(0, %(week)s - 1) AS i, generate_series(0, %(jobs)s - 1) AS j",
            seed,
        )
        cursor.execute("ALTER TABLE coordination_jobrun ENABLE TRIGGER USER")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE coordination_jobrun")
    assert overlap_counts().window == FLAGGED


@pytest.mark.django_db(transaction=True)
def test_counting_flags_reads_the_partial_index_not_the_history(a_week_of_ticks: None) -> None:
    """Without enable_seqscan = off, on an ANALYZEd week of ticks, clusterstatus's and /metrics'
    count reads jobrun_overlapped and touches the flagged ticks' pages, not the week's. (On a tiny
    table the planner's choice follows whatever statistics earlier tests left.)"""
    plans.assert_indexed(COUNTS_SQL, [], "jobrun_overlapped", table="coordination_jobrun")
    ran = plans.plan(COUNTS_SQL, [], analyze=True)
    found = [n["Actual Rows"] for n in plans.nodes(ran) if n.get("Index Name") == "jobrun_overlapped"]
    assert found == [FLAGGED], found  # the flagged ticks, read from the index
    assert plans.buffers(ran) <= COUNT_BUFFERS, plans.buffers(ran)

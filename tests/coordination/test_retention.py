"""JobRun retention: ticks past the window fold into daily aggregates, each counted exactly once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import transaction

from apps.coordination.fencing import Tick, raise_epoch
from apps.coordination.jobs import jobrun_retention
from apps.coordination.models import JobRun, JobRunDay
from apps.coordination.overlaps import backfill_flags, overlap_counts, overlapping_ticks
from apps.coordination.retention import prune, prune_batch

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
WEEK = timedelta(days=7)
S = timedelta(seconds=1)


def tick(job: str, start: datetime, seconds: float = 1, *, outcome: str = "ok", holder: str = "a") -> JobRun:
    end = None if outcome == "running" else start + timedelta(seconds=seconds)
    return JobRun.objects.create(job=job, holder=holder, epoch=1, started_at=start, finished_at=end, outcome=outcome)


def test_a_tick_older_than_the_window_is_pruned_and_counted_once_in_its_day() -> None:
    old = NOW - WEEK - timedelta(hours=1)
    tick("j", old, 2)
    tick("j", old + 10 * S, 5, outcome="error")
    tick("j", old + 20 * S, 0, outcome="skipped")
    kept = tick("j", NOW - timedelta(days=6))
    assert prune(retention=WEEK, now=NOW).ticks == 3
    assert list(JobRun.objects.values_list("pk", flat=True)) == [kept.pk]
    day = JobRunDay.objects.get()
    assert (day.job, day.day) == ("j", old.date())
    assert (day.ticks, day.ok, day.error, day.fenced, day.skipped, day.overlapped) == (3, 1, 1, 0, 1, 0)
    assert day.total_duration_seconds == pytest.approx(7.0)
    assert day.max_duration_seconds == pytest.approx(5.0)
    assert day.last_end == old + 15 * S
    # Again: nothing left to prune, nothing counted twice.
    assert prune(retention=WEEK, now=NOW).ticks == 0
    assert JobRunDay.objects.get().ticks == 3


def test_batches_add_to_the_same_day_and_an_interrupted_batch_counts_nothing() -> None:
    old = NOW - WEEK - timedelta(days=1)
    for i in range(5):
        tick("j", old + i * 10 * S)
    assert prune_batch(job="j", cutoff=NOW - WEEK, batch=2) == 2

    def interrupted() -> None:
        with transaction.atomic():
            prune_batch(job="j", cutoff=NOW - WEEK, batch=2)
            raise RuntimeError("the leader died mid-batch")

    with pytest.raises(RuntimeError):
        interrupted()
    assert JobRun.objects.count() == 3
    assert JobRunDay.objects.get().ticks == 2
    assert prune(retention=WEEK, now=NOW, batch=2).batches == 2
    assert not JobRun.objects.exists()
    day = JobRunDay.objects.get()
    assert (day.ticks, day.ok, day.first_started_at, day.last_started_at) == (5, 5, old, old + 40 * S)


def test_ticks_are_split_by_utc_day_and_job_and_a_batch_limit_bounds_one_prune() -> None:
    midnight = datetime(2026, 11, 10, tzinfo=UTC)
    tick("j", midnight - S)
    tick("j", midnight + S)
    tick("k", midnight + S)
    done = prune(retention=WEEK, now=NOW, batch=1, max_batches=2)
    assert (done.ticks, done.batches) == (2, 2)
    assert JobRun.objects.count() == 1
    prune(retention=WEEK, now=NOW)
    days = {(d.job, d.day.isoformat()): d.ticks for d in JobRunDay.objects.all()}
    assert days == {("j", "2026-11-09"): 1, ("j", "2026-11-10"): 1, ("k", "2026-11-10"): 1}


def test_nothing_at_or_after_a_running_tick_is_pruned() -> None:
    old = NOW - WEEK - timedelta(days=1)
    tick("j", old)
    tick("j", old + 10 * S, outcome="running")
    tick("j", old + 20 * S)
    assert prune(retention=WEEK, now=NOW).ticks == 1
    assert list(JobRun.objects.order_by("started_at").values_list("outcome", flat=True)) == ["running", "ok"]


def test_an_overlap_is_counted_once_whether_its_ticks_are_kept_pruned_or_across_the_edge() -> None:
    old = NOW - WEEK - timedelta(hours=1)
    tick("j", old, 30, holder="a")
    tick("j", old + 10 * S, 1, holder="b")  # started while a's tick ran
    tick("j", old + 100 * S, 10_000, holder="a")  # runs past the window's edge
    tick("j", NOW - WEEK + S, 1, holder="b")  # kept: started while the previous one ran
    tick("j", NOW - timedelta(days=1), 1, holder="a")
    tick("k", old, 1)
    assert overlapping_ticks() == 2
    assert overlap_counts().ever == 2
    prune(retention=WEEK, now=NOW)
    assert JobRun.objects.filter(job="j").count() == 2
    assert JobRunDay.objects.get(job="j").overlapped == 1
    assert overlapping_ticks() == 1  # the kept tick is still found: the walk starts at last_end
    counts = overlap_counts()
    assert (counts.window, counts.ever) == (1, 2)
    prune(retention=WEEK, now=NOW + timedelta(days=3))
    counts = overlap_counts()
    assert (counts.window, counts.ever) == (0, 2)


def test_the_job_prunes_in_fenced_batches_and_a_stale_term_prunes_nothing() -> None:
    old = datetime.now(UTC) - WEEK - timedelta(days=1)
    tick("j", old)
    raise_epoch(name="lease", epoch=2, holder="new")
    jobrun_retention(Tick(job="jobrun_retention", holder="me", lease="lease", epoch=2))
    assert not JobRun.objects.exists() and JobRunDay.objects.get().ticks == 1
    tick("j", old + S)
    raise_epoch(name="lease", epoch=3, holder="newer")
    from apps.coordination.fencing import StaleEpoch

    with pytest.raises(StaleEpoch):
        jobrun_retention(Tick(job="jobrun_retention", holder="me", lease="lease", epoch=2))
    assert JobRun.objects.count() == 1 and JobRunDay.objects.get().ticks == 1


# The ticks of 30 days at the default intervals, 8 jobs (about 1 million rows), one tick per
# interval each lasting a tenth of it: bench/bench_scale.py seeds JobRun the same way.
SEED_MONTH = """
    INSERT INTO coordination_jobrun (job, holder, epoch, started_at, finished_at, outcome, error)
    SELECT j.name, 'leader-' || (i / 100000), 1 + i / 100000,
           %(start)s::timestamptz + make_interval(secs => i * j.every),
           %(start)s::timestamptz + make_interval(secs => i * j.every + j.every / 10), 'ok', ''
    FROM (VALUES ('agent_autoscaler', 5), ('pending_tasks', 10), ('task_timeout', 30), ('drift_check', 60),
                 ('agent_cleanup', 60), ('cmdb_sync', 60), ('lock_draft_cleanup', 60), ('channel_layer_gc', 60))
         AS j(name, every),
         generate_series(0, (30 * 86400 / j.every)::int - 1) AS i
"""


def test_a_planted_overlap_in_a_million_ticks_is_found_and_nothing_else_is() -> None:
    from django.db import connection

    start = NOW - timedelta(days=30)
    with connection.cursor() as cursor:
        # Without the indexes the table fills three times faster, and the check must not need
        # them to be right (they make it fast: bench_scale times it). The test's transaction
        # rolls back and brings them back.
        cursor.execute(
            "SELECT string_agg(quote_ident(indexname), ', ') FROM pg_indexes"
            " WHERE tablename = 'coordination_jobrun' AND indexname NOT LIKE '%%pkey'"
        )
        (indexes,) = cursor.fetchone() or ("",)
        cursor.execute("DROP INDEX " + indexes)
        # A month written before the overlap trigger existed (an upgrade): the backfill flags it.
        cursor.execute("ALTER TABLE coordination_jobrun DISABLE TRIGGER USER")
        cursor.execute(SEED_MONTH, {"start": start})
        assert cursor.rowcount > 1_000_000
        cursor.execute("ALTER TABLE coordination_jobrun ENABLE TRIGGER USER")
        cursor.execute("ANALYZE coordination_jobrun")
    assert overlapping_ticks() == 0
    backfill_flags()
    assert overlap_counts().window == 0
    # One tick of cmdb_sync on day 17 started by another holder while the one before it ran.
    planted = start + timedelta(days=17, seconds=3)
    tick("cmdb_sync", planted, 1, holder="intruder")
    assert overlapping_ticks() == 1
    assert overlapping_ticks("cmdb_sync") == 1 and overlapping_ticks("pending_tasks") == 0
    # The database flagged it as it was written: the count does not walk the month.
    assert overlap_counts().window == 1
    assert JobRun.objects.get(overlapped=True).holder == "intruder"


def test_the_overlap_metrics_count_kept_and_aggregated_overlaps_at_most_once_a_minute() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from apps.coordination.overlaps import OverlapCollector

    now = [0.0]
    collector = OverlapCollector(min_interval=60, clock=lambda: now[0])
    registry = CollectorRegistry()
    registry.register(collector)
    JobRunDay.objects.create(job="j", day=NOW.date(), ticks=10, overlapped=3)
    tick("j", NOW, 10, holder="a")
    tick("j", NOW + S, 1, holder="b")

    def sample(scope: str) -> str:
        line = 'iacplatform_job_overlapping_ticks{scope="%s"}' % scope
        return next(x for x in generate_latest(registry).decode().splitlines() if x.startswith(line)).split()[-1]

    assert (sample("kept"), sample("ever")) == ("1.0", "4.0")
    tick("j", NOW + 2 * S, 1, holder="c")
    assert sample("kept") == "1.0"  # cached within the minute
    now[0] = 61.0
    assert sample("kept") == "2.0"

"""JobRun retention: ticks are kept for a window, then folded into daily aggregates (``JobRunDay``).

``prune_batch`` is one statement: it deletes up to ``batch`` of one job's oldest ticks that started
before the cutoff (in start order) and adds them to their days' aggregates, so an interrupted or
repeated prune counts every tick exactly once (the delete and the counting commit together, or
neither does). A day's ``overlapped`` adds the flags the database set on its ticks (overlaps.py);
``last_end`` (the latest end among them) seeds the exact walk of the ticks kept.

Guarantees: no tick younger than the window is pruned; no tick is pruned while an earlier-started
tick of its job is still running (its end is not known yet, and a running tick of an old term is
closed by the next term); aggregates are the exact sums of the ticks they replaced.
Does NOT: prune concurrently with itself (the job's advisory lock serialises it), or shrink the
aggregates (one row per job and day).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone

logger = logging.getLogger(__name__)

BATCH = 5000

_PRUNE = """
    WITH stop AS (
        SELECT LEAST(%(cutoff)s::timestamptz, COALESCE(min(started_at), 'infinity'::timestamptz)) AS before
        FROM coordination_jobrun WHERE job = %(job)s AND outcome = 'running'
    ), doomed AS (
        SELECT id FROM coordination_jobrun
        WHERE job = %(job)s AND started_at < (SELECT before FROM stop)
        ORDER BY started_at, id LIMIT %(batch)s
        FOR UPDATE
    ), gone AS (
        -- = ANY(ARRAY(...)): a probe of the primary key per tick, never a hash join over the table.
        DELETE FROM coordination_jobrun r WHERE r.id = ANY(ARRAY(SELECT id FROM doomed))
        RETURNING r.id, r.started_at, r.finished_at, r.outcome, r.overlapped
    ), walked AS (
        SELECT g.*,
               EXTRACT(EPOCH FROM g.finished_at - g.started_at)::float8 AS duration,
               (g.started_at AT TIME ZONE 'UTC')::date AS day
        FROM gone g
    ), counted AS (
        INSERT INTO coordination_jobrunday AS d (
            job, day, ticks, ok, error, fenced, skipped, total_duration_seconds, max_duration_seconds, overlapped,
            first_started_at, last_started_at, last_end
        )
        SELECT %(job)s, w.day, count(*),
           count(*) FILTER (WHERE w.outcome = 'ok'),
           count(*) FILTER (WHERE w.outcome = 'error'),
           count(*) FILTER (WHERE w.outcome = 'fenced'),
           count(*) FILTER (WHERE w.outcome = 'skipped'),
           COALESCE(sum(w.duration), 0), COALESCE(max(w.duration), 0),
           count(*) FILTER (WHERE w.overlapped),
           min(w.started_at), max(w.started_at),
           max(w.finished_at) FILTER (WHERE w.outcome <> 'skipped')
    FROM walked w GROUP BY w.day
    ON CONFLICT (job, day) DO UPDATE SET
        ticks = d.ticks + EXCLUDED.ticks,
        ok = d.ok + EXCLUDED.ok,
        error = d.error + EXCLUDED.error,
        fenced = d.fenced + EXCLUDED.fenced,
        skipped = d.skipped + EXCLUDED.skipped,
        total_duration_seconds = d.total_duration_seconds + EXCLUDED.total_duration_seconds,
        max_duration_seconds = GREATEST(d.max_duration_seconds, EXCLUDED.max_duration_seconds),
        overlapped = d.overlapped + EXCLUDED.overlapped,
        first_started_at = LEAST(d.first_started_at, EXCLUDED.first_started_at),
        last_started_at = GREATEST(d.last_started_at, EXCLUDED.last_started_at),
        last_end = GREATEST(d.last_end, EXCLUDED.last_end)
    )
    SELECT count(*) FROM gone
"""


@dataclass
class Pruned:
    ticks: int = 0
    batches: int = 0


def prune_batch(*, job: str, cutoff: datetime, batch: int = BATCH) -> int:
    """Fold up to ``batch`` of ``job``'s ticks started before ``cutoff`` into aggregates; how many."""
    with connection.cursor() as cursor:
        cursor.execute(_PRUNE, {"job": job, "cutoff": cutoff, "batch": batch})
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def kept_jobs() -> list[str]:
    """The jobs with ticks in JobRun: a skip scan over the start-order index (one probe per job)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH RECURSIVE jobs(job) AS (
                (SELECT job FROM coordination_jobrun ORDER BY job LIMIT 1)
                UNION ALL
                SELECT (SELECT r.job FROM coordination_jobrun r WHERE r.job > jobs.job ORDER BY r.job LIMIT 1)
                FROM jobs WHERE jobs.job IS NOT NULL
            )
            SELECT job FROM jobs WHERE job IS NOT NULL
            """
        )
        return [row[0] for row in cursor.fetchall()]


def jobs_with_old_ticks(cutoff: datetime) -> list[str]:
    """Jobs with a tick started before ``cutoff``: the first entry of each job in the start-order
    index (a ``LIMIT 1`` probe would be planned as a scan of the table behind many dead rows)."""
    old = []
    with connection.cursor() as cursor:
        for job in kept_jobs():
            cursor.execute("SELECT min(started_at) FROM coordination_jobrun WHERE job = %s", [job])
            row = cursor.fetchone()
            if row and row[0] is not None and row[0] < cutoff:
                old.append(job)
    return old


def prune(
    *,
    retention: timedelta,
    now: datetime | None = None,
    batch: int = BATCH,
    max_batches: int = 20,
    atomic: Callable[[], AbstractContextManager[object]] = transaction.atomic,
    should_stop: Callable[[], bool] = lambda: False,
) -> Pruned:
    """Fold ticks older than ``retention`` into aggregates: at most ``max_batches`` batches of
    ``batch`` ticks, one ``atomic()`` transaction each (the job passes ``tick.fenced``), so one
    tick's work stays bounded and a long backlog is worked off over several ticks."""
    cutoff = (now or timezone.now()) - retention
    done = Pruned()
    for job in jobs_with_old_ticks(cutoff):
        while done.batches < max_batches and not should_stop():
            with atomic():
                count = prune_batch(job=job, cutoff=cutoff, batch=batch)
            done.batches += 1
            done.ticks += count
            if count < batch:
                break
    return done

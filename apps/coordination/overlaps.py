"""Checking JobRun for overlapping ticks: two ticks of one job running at once (must never happen).

A tick *overlaps* when it started before some earlier-started tick of the same job had ended
(a tick still running counts as never ending). Skipped ticks never ran (their lock was held
elsewhere) and take no part. Fenced ticks do: they held the job's lock when they found the epoch
stale, so one overlapping a tick of another session means two sessions held the lock at once.

The check is made by the database as each tick is written and closed (``TRIGGERS``, installed by
migration 0007), so it costs O(1) index probes per tick and nothing per look: a new tick compares
its start with one row, the previous closed tick of its job, whose ``prior_end`` carries the
latest end of every tick before it, and with the job's running ticks (a partial index); a tick
written or closed late (a back-dated start, clock skew) marks the later ticks that started while
it ran. The result is the ``overlapped`` flag, so clusterstatus and /metrics count flags through a
partial index: O(overlaps), whatever the history. A trigger rather than the scheduler's own
insert, so that every writer is checked (a second installation on the same database, a restored
backup, a hand-written row). Ticks of one job are checked one after another under a transaction
advisory lock (``Namespace.JOBRUN_CHECK``): two written at once by two leaders see each other.
Retention (retention.py) adds the flags of the ticks it folds into ``JobRunDay.overlapped``, so
"ever" = the flags kept + the aggregates' counts, each tick counted once.

``overlapping_ticks`` is the exact check from scratch: one window walk in start order over the
index ``jobrun_job_start_order`` (O(n)), seeded with the aggregates' ``last_end``; tests and
chaos cross-check the flags with it, and ``BACKFILL`` uses it once to flag the ticks written
before the trigger existed.

Guarantees: a tick is flagged iff it started before the latest end (a running tick: infinity) of
the ticks of its job that started before it, as known when it or any of them was written or
closed; flags are never cleared.
Does NOT: correct for clock skew between the machines that wrote ``started_at`` and
``finished_at`` (each by its own wall clock); unflag a tick if an earlier running tick is later
closed with an end before its start (the scheduler closes an abandoned tick before its successor
starts, so this does not happen in operation); look at ticks pruned before the aggregates held
``last_end``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from django.db import connection
from django.db.models import Q
from django.db.utils import Error as DatabaseError
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from apps.coordination.models import JobRun

logger = logging.getLogger(__name__)

# One row per tick that ran, with the latest end of the earlier ticks of its job (aggregated
# ones included through the seed).
_FLAGGED = """
    WITH seed AS (
        SELECT job, max(last_end) AS last_end FROM coordination_jobrunday GROUP BY job
    ), walked AS (
        SELECT r.id, r.job, r.started_at,
               max(COALESCE(r.finished_at, 'infinity'::timestamptz)) OVER (
                   PARTITION BY r.job ORDER BY r.started_at, r.id
                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
               ) AS prior_end
        FROM coordination_jobrun r
        WHERE r.outcome <> 'skipped'
          AND (%(job)s::text IS NULL OR r.job = %(job)s::text)
          AND (%(since)s::timestamptz IS NULL OR r.started_at >= %(since)s::timestamptz)
    )
    SELECT w.id FROM walked w LEFT JOIN seed s ON s.job = w.job AND %(since)s::timestamptz IS NULL
    WHERE w.started_at < GREATEST(w.prior_end, s.last_end)
"""


# Installed by migration 0007 (a later change needs a migration that runs the new text).
TRIGGERS = """
    CREATE OR REPLACE FUNCTION coordination_jobrun_check_start() RETURNS trigger
    LANGUAGE plpgsql AS $$
    DECLARE
        earlier_end timestamptz;
    BEGIN
        IF NEW.outcome = 'skipped' THEN
            NEW.overlapped := false;
            NEW.prior_end := NULL;
            RETURN NEW;
        END IF;
        PERFORM pg_advisory_xact_lock(7105, hashtext(NEW.job));
        -- The previous closed tick in start order: its prior_end already holds the ends before it.
        SELECT GREATEST(p.prior_end, p.finished_at) INTO earlier_end
        FROM coordination_jobrun p
        WHERE p.job = NEW.job AND p.outcome NOT IN ('skipped', 'running')
          AND (p.started_at, p.id) < (NEW.started_at, NEW.id)
        ORDER BY p.started_at DESC, p.id DESC
        LIMIT 1;
        NEW.prior_end := earlier_end;
        NEW.overlapped := NEW.overlapped OR COALESCE(NEW.started_at < earlier_end, false) OR EXISTS (
            SELECT 1 FROM coordination_jobrun r
            WHERE r.job = NEW.job AND r.outcome = 'running' AND (r.started_at, r.id) < (NEW.started_at, NEW.id)
        );
        RETURN NEW;
    END $$;

    CREATE OR REPLACE FUNCTION coordination_jobrun_check_later() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.outcome = 'skipped' THEN
            RETURN NULL;
        END IF;
        PERFORM pg_advisory_xact_lock(7105, hashtext(NEW.job));
        -- Ticks that started after this one while it ran: written before it (a late, back-dated
        -- row) or before it closed. Normally none: one probe of the start-order index.
        UPDATE coordination_jobrun l
        SET overlapped = true, prior_end = GREATEST(l.prior_end, NEW.finished_at)
        WHERE l.job = NEW.job AND l.outcome <> 'skipped'
          AND (l.started_at, l.id) > (NEW.started_at, NEW.id)
          AND l.started_at < COALESCE(NEW.finished_at, 'infinity'::timestamptz)
          AND (NOT l.overlapped OR l.prior_end IS DISTINCT FROM GREATEST(l.prior_end, NEW.finished_at));
        RETURN NULL;
    END $$;

    DROP TRIGGER IF EXISTS jobrun_check_start ON coordination_jobrun;
    CREATE TRIGGER jobrun_check_start BEFORE INSERT ON coordination_jobrun
        FOR EACH ROW EXECUTE FUNCTION coordination_jobrun_check_start();
    DROP TRIGGER IF EXISTS jobrun_check_later ON coordination_jobrun;
    -- UPDATE OF: the trigger's own UPDATE sets neither column, so it does not fire again.
    CREATE TRIGGER jobrun_check_later AFTER INSERT OR UPDATE OF finished_at, outcome ON coordination_jobrun
        FOR EACH ROW EXECUTE FUNCTION coordination_jobrun_check_later();
"""

DROP_TRIGGERS = """
    DROP TRIGGER IF EXISTS jobrun_check_later ON coordination_jobrun;
    DROP TRIGGER IF EXISTS jobrun_check_start ON coordination_jobrun;
    DROP FUNCTION IF EXISTS coordination_jobrun_check_later();
    DROP FUNCTION IF EXISTS coordination_jobrun_check_start();
"""

# Ticks written before the trigger existed: flagged by one exact walk, and the latest closed tick of
# each job given its prior_end so the trigger's chain continues from the whole history.
BACKFILL = """
    WITH seed AS (
        SELECT job, max(last_end) AS last_end FROM coordination_jobrunday GROUP BY job
    ), walked AS (
        SELECT r.id, r.job, r.started_at, r.outcome,
               max(COALESCE(r.finished_at, 'infinity'::timestamptz)) OVER w AS prior_end,
               max(r.finished_at) FILTER (WHERE r.outcome <> 'running') OVER w AS closed_prior_end,
               row_number() OVER (
                   PARTITION BY r.job, r.outcome = 'running' ORDER BY r.started_at DESC, r.id DESC
               ) AS from_last
        FROM coordination_jobrun r
        WHERE r.outcome <> 'skipped'
        WINDOW w AS (PARTITION BY r.job ORDER BY r.started_at, r.id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
    ), marked AS (
        SELECT w.id,
               w.started_at < GREATEST(w.prior_end, s.last_end) AS flag,
               w.outcome <> 'running' AND w.from_last = 1 AS last,
               GREATEST(w.closed_prior_end, s.last_end) AS chain
        FROM walked w LEFT JOIN seed s ON s.job = w.job
    )
    UPDATE coordination_jobrun r
    SET overlapped = r.overlapped OR COALESCE(m.flag, false),
        prior_end = CASE WHEN m.last THEN m.chain ELSE r.prior_end END
    FROM marked m
    WHERE r.id = m.id AND (m.flag OR m.last)
"""


def backfill_flags() -> int:
    """Flag the overlapping ticks written before the trigger (migration 0007, once; bench_scale
    times it on a month of raw history); returns the rows it touched."""
    with connection.cursor() as cursor:
        cursor.execute(BACKFILL)
        return cursor.rowcount


@dataclass(frozen=True)
class OverlapCounts:
    window: int  # among the ticks kept (the retention window)
    ever: int  # window + those counted in the daily aggregates


def overlapping_ticks(job: str | None = None, *, since: datetime | None = None) -> int:
    """Ticks kept in JobRun that overlap an earlier tick of their job (must be 0), checked from
    scratch by the exact walk: O(ticks kept). clusterstatus and /metrics count the flags instead.

    With ``since``, only ticks started from then on are walked, and nothing before them counts.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM (" + _FLAGGED + ") flagged", {"job": job, "since": since})
        row = cursor.fetchone()
    return int(row[0]) if row else 0


COUNTS_SQL = (
    "SELECT (SELECT count(*) FROM coordination_jobrun WHERE overlapped),"
    " (SELECT COALESCE(sum(overlapped), 0) FROM coordination_jobrunday)"
)


def overlap_counts() -> OverlapCounts:
    """Overlaps among the ticks kept and ever since (the aggregates' counts added), one snapshot:
    the flags, through the partial index ``jobrun_overlapped`` (O(overlaps), not O(history))."""
    with connection.cursor() as cursor:
        cursor.execute(COUNTS_SQL)
        row = cursor.fetchone()
    window, aggregated = (int(row[0]), int(row[1])) if row else (0, 0)
    return OverlapCounts(window=window, ever=window + aggregated)


def overlapping_tick_pairs(limit: int = 20) -> list[tuple[JobRun, JobRun]]:
    """Up to ``limit`` overlapping ticks, each with one earlier tick of its job still open at its start."""
    pairs = []
    for later in JobRun.objects.filter(overlapped=True).order_by("pk")[:limit]:
        earlier = (
            JobRun.objects.filter(job=later.job, started_at__lte=later.started_at)
            .exclude(pk=later.pk)
            .exclude(outcome=JobRun.Outcome.SKIPPED)
            .filter(Q(finished_at__isnull=True) | Q(finished_at__gt=later.started_at))
            .order_by("started_at", "pk")
            .first()
        )
        if earlier is not None:
            pairs.append((earlier, later))
    return pairs


class OverlapCollector(Collector):
    """``iacplatform_job_overlapping_ticks{scope="kept"|"ever"}`` for runleader's /metrics.

    The count reads the flags (cheap), and is still recomputed at most every ``min_interval``
    seconds however often Prometheus scrapes; a database that cannot be reached
    leaves the family out of that scrape rather than failing it.
    """

    def __init__(self, *, min_interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.min_interval = min_interval
        self.clock = clock
        self.lock = threading.Lock()
        self.cached: OverlapCounts | None = None
        self.computed_at = 0.0

    def counts(self) -> OverlapCounts | None:
        with self.lock:
            now = self.clock()
            if self.cached is None or now - self.computed_at >= self.min_interval:
                try:
                    self.cached = overlap_counts()
                    self.computed_at = now
                except DatabaseError as exc:
                    logger.warning("overlap metrics: %s", exc)
                finally:
                    if not connection.in_atomic_block:  # the scrape's thread ends; so must its connection
                        connection.close()
            return self.cached

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self.counts()
        if counts is None:
            return
        family = GaugeMetricFamily(
            "iacplatform_job_overlapping_ticks",
            "Ticks that started while an earlier tick of the same job ran (must be 0): among the ticks"
            " kept, and ever (with the daily aggregates).",
            labels=["scope"],
        )
        family.add_metric(["kept"], counts.window)
        family.add_metric(["ever"], counts.ever)
        yield family

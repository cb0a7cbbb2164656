"""Checking JobRun for overlapping ticks: two ticks of one job running at once (must never happen).

A tick *overlaps* when it started before some earlier-started tick of the same job had ended
(a tick still running counts as never ending). Ticks are walked per job in start order (ties by
id) with a running maximum of the ends seen so far, one window function over the index
``jobrun_job_start_order``: O(n) after an index scan, O(n log n) at worst, instead of the
quadratic self-join this replaced. The running maximum starts from the ``last_end`` of the job's
daily aggregates (``JobRunDay``), so an overlap across the edge of the retention window is still
found, and the ticks already folded into aggregates contribute their own count (``overlapped``).

Skipped ticks never ran (their lock was held elsewhere) and take no part. Fenced ticks do: they
held the job's lock when they found the epoch stale, so one overlapping a tick of another session
means two sessions held the lock at once.

Guarantees: counts every tick that overlaps any earlier one of its job, whatever the holders (the
advisory lock promises one session per job, and one process runs one thread per job).
Does NOT: correct for clock skew between the machines that wrote ``started_at`` and
``finished_at`` (each by its own wall clock), or look at ticks pruned before the aggregates held
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


@dataclass(frozen=True)
class OverlapCounts:
    window: int  # among the ticks kept (the retention window)
    ever: int  # window + those counted in the daily aggregates


def overlapping_ticks(job: str | None = None, *, since: datetime | None = None) -> int:
    """Ticks kept in JobRun that overlap an earlier tick of their job (must be 0).

    With ``since``, only ticks started from then on are walked, and nothing before them counts.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM (" + _FLAGGED + ") flagged", {"job": job, "since": since})
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def overlap_counts() -> OverlapCounts:
    """Overlaps among the ticks kept and ever since (the aggregates' counts added), one snapshot."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT count(*) FROM (" + _FLAGGED + ") flagged),"
            " (SELECT COALESCE(sum(overlapped), 0) FROM coordination_jobrunday)",
            {"job": None, "since": None},
        )
        row = cursor.fetchone()
    window, aggregated = (int(row[0]), int(row[1])) if row else (0, 0)
    return OverlapCounts(window=window, ever=window + aggregated)


def overlapping_tick_pairs(limit: int = 20) -> list[tuple[JobRun, JobRun]]:
    """Up to ``limit`` overlapping ticks, each with one earlier tick of its job still open at its start."""
    with connection.cursor() as cursor:
        cursor.execute(_FLAGGED + " ORDER BY w.id LIMIT %(limit)s", {"job": None, "since": None, "limit": limit})
        ids = [row[0] for row in cursor.fetchall()]
    pairs = []
    for later in JobRun.objects.filter(pk__in=ids).order_by("pk"):
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

    The count walks the ticks kept (the retention window), so it is recomputed at most every
    ``min_interval`` seconds however often Prometheus scrapes; a database that cannot be reached
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

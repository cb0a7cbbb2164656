"""What ``clusterstatus`` and the admin show: the lease, locks held, ticks, and the apps' sections.

The coordination core knows nothing of the domain: agents, tasks and the rest come from the
sections apps register in ``apps/<app>/status.py`` (sections.py).

Read-only and best effort: a backend that cannot be reached is reported as an error in the
result, never raised. Ages come from the wall clocks of the writer and the reader (there is no
shared monotonic clock between machines): they are for humans, not for deciding anything.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count, F, Max, Min, Sum
from django.utils import timezone

from apps.coordination import sections
from apps.coordination.fencing import current_epoch
from apps.coordination.leaselock import make_lock, resolve_backend
from apps.coordination.leaselock.base import LockError
from apps.coordination.lockkeys import Namespace
from apps.coordination.models import AdvisoryLock, JobRun, JobRunDay
from apps.coordination.overlaps import overlap_counts
from apps.coordination.registry import registered_jobs
from apps.coordination.retention import kept_jobs


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def lease_status(
    *, backend: str | None = None, name: str | None = None, namespace: str | None = None
) -> dict[str, Any]:
    name = name or settings.LEADER_ELECTION_LEASE_NAME
    namespace = namespace or settings.LEADER_ELECTION_NAMESPACE
    status: dict[str, Any] = {"name": name, "namespace": namespace, "fence_epoch": current_epoch(name)}
    try:
        resolved = resolve_backend(backend or settings.LEADER_ELECTION_BACKEND)
        status["backend"] = resolved
        lock = make_lock(backend=resolved, name=name, namespace=namespace)
        observed = lock.get(timeout=5)
    except (LockError, ValueError, RuntimeError) as exc:
        status["error"] = str(exc)
        return status
    if observed is None:
        status["exists"] = False
        return status
    record = observed.record
    renew_age = (timezone.now() - record.renew_time).total_seconds() if record.renew_time else None
    status.update(
        exists=True,
        holder=record.holder_identity,
        epoch=record.lease_transitions,
        transitions=record.lease_transitions,
        lease_duration_seconds=record.lease_duration_seconds,
        acquire_time=_iso(record.acquire_time),
        renew_time=_iso(record.renew_time),
        renew_age_seconds=None if renew_age is None else round(renew_age, 3),
        resource_version=observed.resource_version,
    )
    return status


def advisory_locks() -> list[dict[str, Any]]:
    running = {
        r["job"]: r["started"]
        for r in JobRun.objects.filter(outcome=JobRun.Outcome.RUNNING).values("job").annotate(started=Max("started_at"))
    }
    job_names = {spec.lock_key[1]: spec.name for spec in registered_jobs()}
    locks = []
    for lock in AdvisoryLock.objects.all():
        since = lock.waiting_since if not lock.granted else None
        if lock.granted and lock.namespace == Namespace.JOB and lock.key in job_names:
            since = running.get(job_names[lock.key])
        locks.append(
            {
                "name": lock.name,
                "namespace": lock.namespace,
                "key": lock.key,
                "granted": lock.granted,
                "mode": lock.mode,
                "pid": lock.pid,
                "application_name": lock.application_name,
                "state": lock.state,
                "since": _iso(since or lock.xact_start or lock.backend_start),
            }
        )
    return locks


def latest_ticks() -> list[dict[str, Any]]:
    names = sorted({spec.name for spec in registered_jobs()} | set(kept_jobs()))
    ticks: list[dict[str, Any]] = []
    for name in names:
        run = JobRun.objects.filter(job=name).exclude(outcome=JobRun.Outcome.SKIPPED).first()
        if run is None:
            ticks.append({"job": name, "outcome": None})
            continue
        duration = (run.finished_at - run.started_at).total_seconds() if run.finished_at else None
        ticks.append(
            {
                "job": name,
                "holder": run.holder,
                "epoch": run.epoch,
                "outcome": run.outcome,
                "started_at": _iso(run.started_at),
                "duration_seconds": None if duration is None else round(duration, 3),
                "error": run.error[:200],
            }
        )
    return ticks


def tick_history() -> dict[str, dict[str, Any]]:
    """Per job, every tick ever: those kept in JobRun (the retention window) plus the aggregates.

    Costs one pass over the window (bounded by the retention setting, not by history) and one over
    the aggregates (a row per job and day).
    """
    history: dict[str, dict[str, Any]] = {}

    def entry(job: str) -> dict[str, Any]:
        return history.setdefault(
            job,
            {
                "ticks": 0,
                "ok": 0,
                "error": 0,
                "fenced": 0,
                "skipped": 0,
                "running": 0,
                "max_duration_seconds": 0.0,
                "kept_since": None,
                "aggregated_days": 0,
                "first_day": None,
            },
        )

    kept = (
        JobRun.objects.values("job", "outcome")
        .annotate(count=Count("id"), first=Min("started_at"), longest=Max(F("finished_at") - F("started_at")))
        .order_by()
    )
    for row in kept:
        e = entry(row["job"])
        e["ticks"] += row["count"]
        e[row["outcome"]] = e.get(row["outcome"], 0) + row["count"]
        if row["longest"] is not None:
            e["max_duration_seconds"] = max(e["max_duration_seconds"], row["longest"].total_seconds())
        first = _iso(row["first"])
        e["kept_since"] = first if e["kept_since"] is None else min(e["kept_since"], first)
    days = (
        JobRunDay.objects.values("job")
        .annotate(
            days=Count("id"),
            first_day=Min("day"),
            ticks=Sum("ticks"),
            ok=Sum("ok"),
            error=Sum("error"),
            fenced=Sum("fenced"),
            skipped=Sum("skipped"),
            longest=Max("max_duration_seconds"),
        )
        .order_by()
    )
    for day in days:
        e = entry(day["job"])
        for key in ("ticks", "ok", "error", "fenced", "skipped"):
            e[key] += day[key]
        e["max_duration_seconds"] = round(max(e["max_duration_seconds"], day["longest"]), 3)
        e["aggregated_days"] = day["days"]
        e["first_day"] = day["first_day"].isoformat()
    return dict(sorted(history.items()))


def recent_terms(limit: int = 10) -> list[dict[str, Any]]:
    """Terms seen in the ticks kept (the lease itself keeps no history): epoch, holder, first and
    last tick. A skip scan finds the ``limit`` newest epochs on the ``jobrun_term`` index, so the
    cost is that of those terms' ticks, not of the whole table."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH RECURSIVE epochs(epoch, n) AS (
                (SELECT epoch, 1 FROM coordination_jobrun ORDER BY epoch DESC LIMIT 1)
                UNION ALL
                SELECT (SELECT r.epoch FROM coordination_jobrun r WHERE r.epoch < e.epoch
                        ORDER BY r.epoch DESC LIMIT 1), e.n + 1
                FROM epochs e WHERE e.epoch IS NOT NULL AND e.n < %(limit)s
            )
            SELECT r.epoch, r.holder, min(r.started_at), max(r.started_at), count(*)
            FROM coordination_jobrun r
            WHERE r.epoch IN (SELECT epoch FROM epochs WHERE epoch IS NOT NULL)
            GROUP BY r.epoch, r.holder
            ORDER BY r.epoch DESC, min(r.started_at) DESC
            LIMIT %(limit)s
            """,
            {"limit": limit},
        )
        rows = cursor.fetchall()
    return [
        {"epoch": epoch, "holder": holder, "first_tick": _iso(first), "last_tick": _iso(last), "ticks": ticks}
        for epoch, holder, first, last, ticks in rows
    ]


def cluster_status() -> dict[str, Any]:
    """Everything ``clusterstatus --json`` prints: the core's keys, then one key per app section."""
    sections.autodiscover()
    overlaps = overlap_counts()
    return {
        "lease": lease_status(),
        "advisory_locks": advisory_locks(),
        "latest_ticks": latest_ticks(),
        "overlapping_ticks": overlaps.window,
        "overlapping_ticks_ever": overlaps.ever,
        "recent_terms": recent_terms(),
        "tick_history": tick_history(),
        **sections.collect_sections(),
    }

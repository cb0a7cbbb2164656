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
from django.db.models import Count, Max, Min
from django.utils import timezone

from apps.coordination import sections
from apps.coordination.fencing import current_epoch
from apps.coordination.leaselock import make_lock, resolve_backend
from apps.coordination.leaselock.base import LockError
from apps.coordination.lockkeys import Namespace
from apps.coordination.models import AdvisoryLock, JobRun
from apps.coordination.registry import registered_jobs
from apps.coordination.scheduler import overlapping_ticks


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
    names = sorted(
        {spec.name for spec in registered_jobs()} | set(JobRun.objects.values_list("job", flat=True).distinct())
    )
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


def recent_terms(limit: int = 10) -> list[dict[str, Any]]:
    """Terms seen in JobRun (the lease itself keeps no history): epoch, holder, first and last tick."""
    rows = (
        JobRun.objects.values("epoch", "holder")
        .annotate(first=Min("started_at"), last=Max("started_at"), ticks=Count("id"))
        .order_by("-epoch", "-first")[:limit]
    )
    return [
        {
            "epoch": r["epoch"],
            "holder": r["holder"],
            "first_tick": _iso(r["first"]),
            "last_tick": _iso(r["last"]),
            "ticks": r["ticks"],
        }
        for r in rows
    ]


def cluster_status() -> dict[str, Any]:
    """Everything ``clusterstatus --json`` prints: the core's keys, then one key per app section."""
    sections.autodiscover()
    return {
        "lease": lease_status(),
        "advisory_locks": advisory_locks(),
        "latest_ticks": latest_ticks(),
        "overlapping_ticks": overlapping_ticks(),
        "recent_terms": recent_terms(),
        **sections.collect_sections(),
    }

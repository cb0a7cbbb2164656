"""Background jobs of the task queue, run by the leader (apps/coordination/registry.py).

Each job makes its repairs inside ``tick.fenced()`` so a deposed leader's tick commits nothing.
Kicks (``schedule_workspace``) run after the fenced transaction: they are the queue's ordinary
operation, safe from any process at any time (advisory lock + unique index), exactly as a web
replica runs them on enqueue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from apps.coordination.fencing import Tick
from apps.coordination.registry import job, on_leadership_acquired
from apps.workspaces import actions, cmdb, retention
from apps.workspaces.models import StateLock

logger = logging.getLogger(__name__)


def kick_pending(*, stopping: Callable[[], bool] = lambda: False) -> int:
    """Dispatch what can run now, one workspace at a time; returns early when ``stopping()``."""
    kicked = 0
    for workspace_id in actions.workspaces_to_kick():
        if stopping():
            break  # the term is ending: the next leader's tick (or recovery pass) kicks the rest
        if actions.schedule_workspace(workspace_id) is not None:
            kicked += 1
    return kicked


# Intervals come from settings (read when runleader discovers this module, after setup) so that
# tests and small clusters can run the repairs faster than production does.
@job(name="pending_tasks", every=settings.JOB_PENDING_TASKS_EVERY)
def pending_tasks(tick: Tick) -> None:
    """Re-dispatch tasks dispatched but not accepted in time; kick pending ones whose kick was lost."""
    with tick.fenced():
        requeued = actions.requeue_unaccepted(older_than=timedelta(seconds=settings.TASK_DISPATCH_ACCEPT_TIMEOUT))
    kicked = kick_pending(stopping=tick.stopping)
    if requeued or kicked:
        logger.info("pending_tasks: %d re-queued, %d dispatched", requeued, kicked)


@job(name="task_timeout", every=settings.JOB_TASK_TIMEOUT_EVERY)
def task_timeout(tick: Tick) -> None:
    """Running tasks past their timeout end timed_out; their agent is told to stop Terraform."""
    with tick.fenced():
        timed_out = actions.time_out_tasks()
    if timed_out:
        logger.info("task_timeout: %d tasks timed out", timed_out)


@job(name="drift_check", every=settings.JOB_DRIFT_CHECK_EVERY)
def drift_check(tick: Tick) -> None:
    """Queue a drift_check task for each workspace whose check is due and that is idle."""
    with tick.fenced():
        queued = actions.enqueue_due_drift_checks()
    if queued:
        logger.info("drift_check: %d drift checks queued", queued)


@on_leadership_acquired
def recover_tasks(tick: Tick) -> None:
    """At the start of a term: settle tasks of agents that are gone, re-queue lost dispatches, kick."""
    offline_for = timedelta(seconds=settings.AGENT_OFFLINE_THRESHOLD)
    with tick.fenced():
        settled = actions.settle_orphaned_tasks(offline_for=offline_for)
        requeued = actions.requeue_unaccepted(older_than=timedelta(seconds=settings.TASK_DISPATCH_ACCEPT_TIMEOUT))
    kicked = kick_pending(stopping=tick.stopping)
    logger.info("recovery pass: %d tasks settled, %d re-queued, %d dispatched", settled, requeued, kicked)


class CmdbSyncError(Exception):
    """Some workspaces' states could not be indexed; the others were."""


@job(name="cmdb_sync", every=settings.JOB_CMDB_SYNC_EVERY)
def cmdb_sync(tick: Tick) -> None:
    """Index each workspace's newest state into the CMDB: one fenced transaction per workspace."""
    failures: list[str] = []
    synced = 0
    # Past the last workspace read, so one that stays due (a bad state) is not read again this tick.
    after = 0
    while due := cmdb.workspaces_to_sync(after=after):
        after = due[-1]
        for workspace_id in due:
            try:
                result = cmdb.sync_workspace(workspace_id, atomic=tick.fenced)
            except cmdb.StateFormatError as exc:
                # That workspace keeps its rows; the others are still indexed; the tick reports it.
                failures.append("workspace %d: %s" % (workspace_id, exc))
                continue
            if result is not None:
                synced += 1
                logger.info(
                    "cmdb_sync: workspace %d at serial %s: %d created, %d updated, %d deleted",
                    workspace_id,
                    result.serial,
                    result.created,
                    result.updated,
                    result.deleted,
                )
    if failures:
        raise CmdbSyncError("; ".join(failures))


STATE_LOCK_BATCH = 5000


@job(name="state_lock_retention", every=settings.JOB_STATE_LOCK_RETENTION_EVERY)
def state_lock_retention(tick: Tick) -> None:
    """Delete Terraform state locks released more than STATE_LOCK_RETENTION_DAYS ago, one fenced
    batch at a time (a held lock is never touched: it has no released_at)."""
    cutoff = timezone.now() - timedelta(days=settings.STATE_LOCK_RETENTION_DAYS)
    deleted = 0
    while True:
        with tick.fenced():
            pruned = StateLock.objects.prune(released_before=cutoff, batch=STATE_LOCK_BATCH)
        deleted += pruned
        if pruned < STATE_LOCK_BATCH:
            break
    if deleted:
        logger.info("state_lock_retention: %d released locks deleted", deleted)


@job(name="task_log_retention", every=settings.JOB_TASK_LOG_RETENTION_EVERY)
def task_log_retention(tick: Tick) -> None:
    """Delete the logs of tasks finished more than TASK_LOG_RETENTION_DAYS ago (the task keeps a
    marker), in fenced batches of chunks (apps/workspaces/retention.py)."""
    cutoff = timezone.now() - timedelta(days=settings.TASK_LOG_RETENTION_DAYS)
    done = retention.prune_task_logs(cutoff=cutoff, atomic=tick.fenced, should_stop=tick.stopping)
    _report_pruned(tick, done, "log chunks of %d tasks" % done.items)


@job(name="state_version_retention", every=settings.JOB_STATE_VERSION_RETENTION_EVERY)
def state_version_retention(tick: Tick) -> None:
    """Delete state versions older than STATE_VERSION_RETENTION_DAYS beyond each workspace's
    newest STATE_VERSIONS_KEEP (never the current state or a conflict), in fenced batches."""
    done = retention.prune_state_versions(
        keep=settings.STATE_VERSIONS_KEEP,
        window=timedelta(days=settings.STATE_VERSION_RETENTION_DAYS),
        atomic=tick.fenced,
        should_stop=tick.stopping,
    )
    _report_pruned(tick, done, "state versions of %d workspaces" % done.items)


@job(name="state_transition_retention", every=settings.JOB_STATE_TRANSITION_RETENTION_EVERY)
def state_transition_retention(tick: Tick) -> None:
    """Delete state transitions (audit rows) older than STATE_TRANSITION_RETENTION_DAYS, in fenced batches."""
    cutoff = timezone.now() - timedelta(days=settings.STATE_TRANSITION_RETENTION_DAYS)
    done = retention.prune_state_transitions(cutoff=cutoff, atomic=tick.fenced, should_stop=tick.stopping)
    _report_pruned(tick, done, "transitions")


def _report_pruned(tick: Tick, done: retention.Pruned, what: str) -> None:
    if done.rows:
        logger.info(
            "%s (%s, epoch %d): %d %s deleted in %d batches",
            tick.job,
            tick.holder,
            tick.epoch,
            done.rows,
            what,
            done.batches,
        )

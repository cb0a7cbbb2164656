"""The task queue: one active task per workspace, dispatched to agents on any web replica.

Guarantees: at most one task per workspace is dispatched or running (choosing and dispatching the
next task runs under the advisory lock ``lockkeys.workspace_key(id)``, and the partial unique index
``one_active_task_per_workspace`` refuses any bug in that); an agent is never given more tasks than
its capacity (its row is locked ``FOR UPDATE SKIP LOCKED`` and its load recounted while locked);
a task is run only by the agent whose conditional ``dispatched -> running`` update won; every state
change commits before its message is sent (``on_commit``).
Does NOT: guarantee that a message arrives. A lost dispatch or kick leaves the database consistent
and ``pending_tasks`` (jobs.py) repairs it: messages are hints, the database is the truth.
Agent reports (accept, log, result) are in reports.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Exists, F, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from apps.access import policy
from apps.access.actions import do_grant_role
from apps.access.models import Role
from apps.agents.models import Agent
from apps.agents.protocol import agent_group, task_group
from apps.coordination.fencing import LOCAL_TIMEOUTS, local_timeouts
from apps.coordination.lockkeys import workspace_key
from apps.workspaces.models import StateLock, StateVersion, Task, Workspace

logger = logging.getLogger(__name__)

AGENT_PICK_ROUNDS = 8
AGENT_CANDIDATES = 10


def send_after_commit(group: str, message: dict[str, Any]) -> None:
    """group_send once the current transaction commits (at once outside one)."""

    def send() -> None:
        try:
            async_to_sync(get_channel_layer().group_send)(group, message)
        except Exception:
            # A lost message is repaired by the jobs; the state change it announces is committed.
            logger.warning("group_send to %s failed; the jobs will repair what it announced", group, exc_info=True)

    transaction.on_commit(send)


def notify_status(task_id: int, status: str) -> None:
    send_after_commit(task_group(task_id), {"type": "task.status", "task_id": task_id, "status": status})


def kick_after_commit(workspace_id: int) -> None:
    transaction.on_commit(lambda: schedule_workspace(workspace_id))


def enqueue_task(
    *, workspace: Workspace, type: str, created_by: Any = None, timeout_seconds: int | None = None
) -> Task:
    """Queue a task; the workspace is scheduled once the task is committed."""
    with transaction.atomic():
        task = Task.objects.create(
            workspace=workspace,
            type=type,
            created_by=created_by,
            **({"timeout_seconds": timeout_seconds} if timeout_seconds else {}),
        )
        notify_status(task.pk, task.status)
        kick_after_commit(workspace.pk)
    return task


def schedule_workspace(workspace_id: int) -> Task | None:
    """Dispatch the workspace's oldest pending task if nothing is active; the dispatched task or None."""
    # Non-blocking: whoever holds the lock is dispatching this workspace right now. If our task was
    # committed after its look, the result of the running task or pending_tasks kicks it again.
    # A transaction-level lock, released by the commit: a session lock would stay on whichever
    # server connection a transaction pooler (DATABASE_URL through PgBouncer) ran the statement on.
    # Bounded by the server: a process stopped while it holds the lock (SIGSTOP, a long pause)
    # has its transaction ended after JOB_STATEMENT_TIMEOUT idle, instead of keeping the workspace
    # from every dispatcher for as long as it is stopped (chaos showed one held for over 15 s).
    with transaction.atomic():
        if not _lock_workspace(workspace_id, wait=False, bound=settings.JOB_STATEMENT_TIMEOUT):
            return None
        return _dispatch_next(workspace_id)


def _lock_workspace(workspace_id: int, *, wait: bool, bound: float | None = None) -> bool:
    """The workspace's advisory lock until the current transaction ends (True once held). With
    ``bound`` (seconds), the same statement bounds the rest of the transaction: its statements and
    its idle time (fencing.LOCAL_TIMEOUTS)."""
    timeouts, params = (
        ("", [])
        if bound is None
        else (LOCAL_TIMEOUTS + ", ", local_timeouts(statement_timeout=bound, idle_in_transaction_timeout=bound))
    )
    lock = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + timeouts + lock + "(%s, %s)", [*params, *workspace_key(workspace_id)])
        row = cursor.fetchone()
    # pg_advisory_xact_lock returns void (None): it returned because the lock is held.
    return wait or bool(row and row[-1])


def _dispatch_next(workspace_id: int) -> Task | None:
    workspace = Workspace.objects.filter(pk=workspace_id).only("pk", "locked", "pool_id").first()
    if workspace is None or workspace.locked:
        return None
    if Task.objects.active().filter(workspace_id=workspace_id).exists():
        return None
    pending = Task.objects.filter(workspace_id=workspace_id, status=Task.Status.PENDING)
    if StateVersion.objects.filter(workspace_id=workspace_id, status=StateVersion.Status.CONFLICT).exists():
        # Held until an operator resolves the conflict (states.py): an apply would start from a
        # state that may not describe what a settled attempt built. Plans only read; they run.
        pending = pending.exclude(type=Task.Type.APPLY)
    task = pending.order_by("created_at", "pk").select_for_update(skip_locked=True).first()
    if task is None:
        return None
    agent = pick_agent(workspace.pool_id)
    if agent is None:
        return None
    now = timezone.now()
    try:
        with transaction.atomic():
            updated = Task.objects.filter(pk=task.pk, status=Task.Status.PENDING).update(
                status=Task.Status.DISPATCHED, agent=agent, dispatched_at=now
            )
    except IntegrityError:
        # Only reachable when called inside an outer transaction that another scheduler raced:
        # the unique index refused a second active task, which is its job.
        logger.warning("workspace %d already has an active task; not dispatching task %d", workspace_id, task.pk)
        return None
    if updated != 1:
        return None
    task.status, task.agent, task.dispatched_at = Task.Status.DISPATCHED, agent, now
    notify_status(task.pk, task.status)
    send_after_commit(agent_group(agent.agent_id), {"type": "task.dispatch", "task_id": task.pk})
    logger.info("dispatched task %d (workspace %d) to agent %s", task.pk, workspace_id, agent.agent_id)
    return task


def _active_count() -> Coalesce:
    active = (
        Task.objects.active()
        .filter(agent=OuterRef("pk"))
        .order_by()
        .values("agent")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Coalesce(Subquery(active), 0)


def pick_agent(pool_id: int) -> Agent | None:
    """An online, connected agent of the pool with free capacity, least busy first, row-locked."""
    fresh = timezone.now() - timedelta(seconds=settings.AGENT_OFFLINE_THRESHOLD)
    rejected: list[int] = []
    # Under a burst, every dispatcher's snapshot ranks the same few agents least busy; once those
    # are taken (the recount below sees it), ask again without them: each statement takes a new
    # snapshot. Giving up after one batch left tasks pending until pending_tasks, seconds later.
    for _ in range(AGENT_PICK_ROUNDS):
        candidates = list(
            Agent.objects.online()
            .filter(pool_id=pool_id, connected_pod__isnull=False, capacity__gt=0, last_heartbeat__gte=fresh)
            .exclude(pk__in=rejected)
            .annotate(active=_active_count())
            .filter(active__lt=F("capacity"))
            .order_by("active", "last_heartbeat", "pk")
            .select_for_update(skip_locked=True, of=("self",))[:AGENT_CANDIDATES]
        )
        if not candidates:
            return None
        for agent in candidates:
            # The count above is from the statement's snapshot; a dispatcher that held this row may
            # have committed since. Recounting now, while we hold the row, sees every committed dispatch.
            if Task.objects.active().filter(agent=agent).count() < agent.capacity:
                return agent
            rejected.append(agent.pk)
    return None


def cancel_task(task_id: int) -> Task:
    """Cancel a task: at once when it has not started, else ask its agent to stop Terraform."""
    with transaction.atomic():
        task = Task.objects.select_for_update().get(pk=task_id)
        if task.is_terminal:
            return task
        now = timezone.now()
        task.cancel_requested_at = task.cancel_requested_at or now
        if task.status in (Task.Status.PENDING, Task.Status.DISPATCHED):
            # Not started: a dispatched task's accept will lose its conditional update and be dropped.
            previous_agent = task.agent
            task.status, task.finished_at = Task.Status.CANCELLED, now
            task.save(update_fields=["status", "finished_at", "cancel_requested_at"])
            notify_status(task.pk, task.status)
            if previous_agent is not None:
                send_after_commit(agent_group(previous_agent.agent_id), {"type": "task.cancel", "task_id": task.pk})
            kick_after_commit(task.workspace_id)
        else:
            # Running: the agent stops Terraform and reports the task cancelled; if the agent is
            # gone, agent_cleanup or task_timeout settles it.
            task.save(update_fields=["cancel_requested_at"])
            if task.agent is not None:
                send_after_commit(agent_group(task.agent.agent_id), {"type": "task.cancel", "task_id": task.pk})
    return task


def settle_lost_tasks(tasks: Iterable[Task], *, reason: str) -> list[Task]:
    """Settle active tasks whose agent is gone: plans and drift checks re-queued once, applies errored.

    Re-running an interrupted apply is unsafe (it may have changed infrastructure halfway), so an
    apply is never re-queued behind the operator's back. Must run inside a transaction that has
    locked the given task rows.
    """
    now = timezone.now()
    settled = []
    for task in tasks:
        if task.status == Task.Status.DISPATCHED:
            # Never accepted, so nothing ran: back to the queue without using up an attempt.
            task.status, task.agent, task.dispatched_at = Task.Status.PENDING, None, None
        elif task.status != Task.Status.RUNNING:
            continue
        elif task.cancel_requested_at is not None:
            task.status, task.finished_at, task.error = Task.Status.CANCELLED, now, reason
        elif task.type != Task.Type.APPLY and task.attempt == 1:
            task.status, task.agent, task.attempt = Task.Status.PENDING, None, task.attempt + 1
            task.dispatched_at = task.started_at = None
            task.error = "re-queued after: %s" % reason
        else:
            task.status, task.finished_at, task.error = Task.Status.ERRORED, now, reason
        task.save(update_fields=["status", "agent", "attempt", "dispatched_at", "started_at", "finished_at", "error"])
        # Re-queued or settled: the old attempt's state lock is stale, and its writes are refused.
        StateLock.objects.release_for_tasks([task.pk], reason="settled: %s" % reason)
        logger.warning("task %d settled as %s: %s", task.pk, task.status, reason)
        notify_status(task.pk, task.status)
        kick_after_commit(task.workspace_id)
        settled.append(task)
    return settled


def requeue_unaccepted(*, older_than: timedelta) -> int:
    """Tasks dispatched but not accepted in time go back to pending (their dispatch may be lost)."""
    cutoff = timezone.now() - older_than
    with transaction.atomic():
        tasks = list(
            Task.objects.filter(status=Task.Status.DISPATCHED, dispatched_at__lt=cutoff).select_for_update(
                skip_locked=True
            )
        )
        return len(settle_lost_tasks(tasks, reason="not accepted within %ds" % older_than.total_seconds()))


def workspaces_to_kick(*, pool_id: int | None = None, limit: int = 500) -> list[int]:
    """Unlocked workspaces with a pending task and nothing active: their kick may have been lost."""
    held = StateVersion.objects.filter(workspace=OuterRef("pk"), status=StateVersion.Status.CONFLICT)
    runnable = Task.objects.filter(workspace=OuterRef("pk"), status=Task.Status.PENDING).exclude(type=Task.Type.APPLY)
    # A workspace whose only pending tasks are applies held by a state conflict is not kicked
    # every round (nor allowed to fill the limit ahead of workspaces that can run).
    pending = Task.objects.filter(workspace=OuterRef("pk"), status=Task.Status.PENDING)
    qs = (
        Workspace.objects.filter(Exists(pending), locked=False)
        .exclude(Exists(Task.objects.active().filter(workspace=OuterRef("pk"))))
        .filter(~Exists(held) | Exists(runnable))
    )
    if pool_id is not None:
        qs = qs.filter(pool_id=pool_id)
    # Oldest waiting first: each freed agent slot goes to the first workspace kicked, and in id
    # order the lowest-numbered workspaces took every slot while agents were saturated.
    waiting_since = pending.order_by("created_at", "pk").values("created_at")[:1]
    qs = qs.annotate(waiting_since=Subquery(waiting_since)).order_by("waiting_since", "pk")
    return list(qs.values_list("pk", flat=True)[:limit])


def time_out_tasks() -> int:
    """Running tasks past their timeout end timed_out; their agent is told to stop Terraform."""
    now = timezone.now()
    with transaction.atomic():
        tasks = list(
            Task.objects.filter(status=Task.Status.RUNNING, started_at__isnull=False)
            .select_related("agent")
            .select_for_update(skip_locked=True, of=("self",))
        )
        expired = [t for t in tasks if t.started_at + timedelta(seconds=t.timeout_seconds) < now]  # type: ignore[operator]
        for task in expired:
            Task.objects.filter(pk=task.pk).update(
                status=Task.Status.TIMED_OUT, finished_at=now, error="timed out after %ds" % task.timeout_seconds
            )
            StateLock.objects.release_for_tasks([task.pk], reason="timed out")
            notify_status(task.pk, Task.Status.TIMED_OUT)
            if task.agent is not None:
                send_after_commit(agent_group(task.agent.agent_id), {"type": "task.cancel", "task_id": task.pk})
            kick_after_commit(task.workspace_id)
    return len(expired)


def enqueue_due_drift_checks(*, limit: int = 200) -> int:
    """A drift_check task for each enabled workspace that is due and has no queued or active task."""
    now = timezone.now()
    with transaction.atomic():
        due = list(
            Workspace.objects.filter(drift_check_enabled=True, locked=False)
            .filter(Q(drift_next_check_at__isnull=True) | Q(drift_next_check_at__lte=now))
            .exclude(Exists(Task.objects.unfinished().filter(workspace=OuterRef("pk"))))
            .select_for_update(skip_locked=True)
            .order_by("pk")[:limit]
        )
        for workspace in due:
            workspace.drift_next_check_at = now + timedelta(minutes=workspace.drift_check_interval_minutes)
            workspace.save(update_fields=["drift_next_check_at"])
            enqueue_task(workspace=workspace, type=Task.Type.DRIFT_CHECK)
    return len(due)


def settle_orphaned_tasks(*, offline_for: timedelta) -> int:
    """Active tasks whose agent is gone (deleted, or offline past the threshold): settled as lost."""
    cutoff = timezone.now() - offline_for
    with transaction.atomic():
        tasks = list(
            Task.objects.active()
            .filter(Q(agent__isnull=True) | Q(agent__last_heartbeat__lt=cutoff))
            .select_for_update(skip_locked=True, of=("self",))
        )
        return len(settle_lost_tasks(tasks, reason="agent lost"))


# --- workspace changes made through the API --------------------------------------------------------


class WorkspaceConflict(Exception):
    """The workspace's state refuses the change (already locked, a task running): HTTP 409."""


def do_create_workspace(*, creator: Any, **fields: Any) -> Workspace:
    """Create a workspace; its creator gets ``admin`` on it (recorded in the access audit)."""
    with transaction.atomic():
        workspace = Workspace.objects.create(**fields)
        if creator is not None and creator.is_authenticated:
            do_grant_role(actor=creator, workspace=workspace, user=creator, role=Role.ADMIN)
    return workspace


def do_lock_workspace(*, workspace_id: int, user: Any, reason: str = "") -> Workspace:
    """Lock a workspace: no task is dispatched until it is unlocked."""
    with transaction.atomic():
        workspace = Workspace.objects.select_for_update().get(pk=workspace_id)
        if workspace.locked:
            raise WorkspaceConflict("The workspace is already locked.")
        workspace.locked, workspace.locked_at = True, timezone.now()
        workspace.locked_by = user if user is not None and user.is_authenticated else None
        workspace.lock_reason = reason
        workspace.save(update_fields=["locked", "locked_at", "locked_by", "lock_reason"])
    return workspace


def do_unlock_workspace(*, workspace_id: int, user: Any) -> Workspace:
    """Unlock a workspace (``write`` for one's own lock, ``admin`` for anyone else's) and let the
    tasks queued meanwhile run."""
    with transaction.atomic():
        workspace = Workspace.objects.select_for_update().get(pk=workspace_id)
        # Judged under the row lock: who holds the lock cannot change between the check and the update.
        verdict = policy.can_unlock(user, workspace_id=workspace.pk, locked_by_id=workspace.locked_by_id)
        if verdict is not policy.Verdict.ALLOWED:
            raise policy.Denied(verdict, "Only a workspace admin may lift a lock someone else holds.")
        workspace.locked, workspace.locked_at, workspace.locked_by, workspace.lock_reason = False, None, None, ""
        workspace.save(update_fields=["locked", "locked_at", "locked_by", "lock_reason"])
        kick_after_commit(workspace.pk)
    return workspace


def do_delete_workspace(*, workspace_id: int) -> None:
    """Delete a workspace and its history, refused while one of its tasks is dispatched or running."""
    # The scheduler's advisory lock (waited for here): no task of this workspace can be dispatched
    # between the check and the delete.
    with transaction.atomic():
        _lock_workspace(workspace_id, wait=True)
        workspace = Workspace.objects.select_for_update().get(pk=workspace_id)
        if Task.objects.filter(workspace_id=workspace.pk).active().exists():
            raise WorkspaceConflict("The workspace has a task running; cancel it first.")
        workspace.delete()

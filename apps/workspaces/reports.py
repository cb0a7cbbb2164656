"""What agents report about their tasks: accept, reject, log chunks, results.

Guarantees: every report is checked for ownership (the task is assigned to this agent, for this
attempt) in the same transaction that writes it, with the task row locked, so a report from an
agent that lost its task (re-queued, timed out, dispatched elsewhere) changes nothing. Log chunks
are stored idempotently by (task, seq) before they are announced on ``task.<id>``. A result is
stored at most once; a repeated result (an agent resending after a reconnect) is acknowledged and
changes nothing, except that the state of a finished apply is never thrown away.
Does NOT: deliver announcements reliably (they are hints for live UIs; the rows are the truth).
"""

from __future__ import annotations

import enum
import logging
from typing import Any

from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from apps.agents.models import Agent
from apps.agents.protocol import task_group
from apps.workspaces import statebackend, states, variables
from apps.workspaces.actions import kick_after_commit, notify_status, send_after_commit
from apps.workspaces.models import StateLock, Task, Workspace

logger = logging.getLogger(__name__)


class Outcome(enum.Enum):
    OK = "ok"
    DUPLICATE = "duplicate"
    NOT_OWNED = "not_owned"


def _owned(agent: Agent, task_id: int, attempt: int) -> Task | None:
    return (
        Task.objects.select_for_update()
        .select_related("workspace")
        .filter(pk=task_id, agent=agent, attempt=attempt)
        .first()
    )


def accept_task(*, agent: Agent, task_id: int, attempt: int) -> bool:
    """The conditional update dispatched -> running for this agent; False: drop the task."""
    with transaction.atomic():
        updated = Task.objects.filter(pk=task_id, agent=agent, attempt=attempt, status=Task.Status.DISPATCHED).update(
            status=Task.Status.RUNNING, started_at=timezone.now()
        )
        if updated == 1:
            notify_status(task_id, Task.Status.RUNNING)
            return True
    # An agent that did not hear our answer asks again after reconnecting: same answer.
    return Task.objects.filter(pk=task_id, agent=agent, attempt=attempt, status=Task.Status.RUNNING).exists()


def reject_task(*, agent: Agent, task_id: int, attempt: int) -> bool:
    """An agent declines a dispatched task (draining or full): back to pending at once."""
    with transaction.atomic():
        task = _owned(agent, task_id, attempt)
        if task is None or task.status != Task.Status.DISPATCHED:
            return False
        task.status, task.agent, task.dispatched_at = Task.Status.PENDING, None, None
        task.save(update_fields=["status", "agent", "dispatched_at"])
        notify_status(task.pk, task.status)
        kick_after_commit(task.workspace_id)
    return True


def next_log_seq(task_id: int) -> int:
    """Where a (re-)run's log numbering starts, so a re-queued attempt appends after the first."""
    last = Task.objects.filter(pk=task_id).aggregate(m=Max("log_chunks__seq"))["m"]
    return 0 if last is None else last + 1


def append_log(*, agent: Agent, task_id: int, attempt: int, seq: int, text: str) -> Outcome:
    with transaction.atomic():
        task = _owned(agent, task_id, attempt)
        if task is None or task.status in (Task.Status.PENDING, Task.Status.DISPATCHED):
            return Outcome.NOT_OWNED
        if task.is_terminal:
            # The log of a settled task is closed: a chunk the agent re-sends after reconnecting
            # is acknowledged as before, a new one refused (the agent then stops the task).
            stored = task.log_chunks.filter(seq=seq).exists()
            return Outcome.DUPLICATE if stored else Outcome.NOT_OWNED
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO workspaces_tasklogchunk (task_id, seq, text, created_at) VALUES (%s, %s, %s, now())"
                " ON CONFLICT (task_id, seq) DO NOTHING RETURNING id",
                [task_id, seq, text],
            )
            inserted = cursor.fetchone() is not None
        if not inserted:
            return Outcome.DUPLICATE
        send_after_commit(task_group(task_id), {"type": "task.log", "task_id": task_id, "seq": seq, "text": text})
    return Outcome.OK


def record_result(*, agent: Agent, task_id: int, attempt: int, report: dict[str, Any]) -> Outcome:
    """Store a task's result: status, exit code, plan summary, new state (apply), drift verdict."""
    with transaction.atomic():
        task = _owned(agent, task_id, attempt)
        if task is None or task.status in (Task.Status.PENDING, Task.Status.DISPATCHED):
            return Outcome.NOT_OWNED
        state = report.get("state")
        if task.is_terminal:
            # Already settled (a resend, or the server timed it out, cancelled it or declared its
            # agent lost meanwhile). The verdict stands; the state an apply produced describes real
            # infrastructure, so it is kept, but as a conflict: a later apply may have moved on.
            if task.type == Task.Type.APPLY and state:
                _store_state(task, state, live=False)
            return Outcome.DUPLICATE
        status = report["status"]
        if task.cancel_requested_at is not None and status != Task.Status.SUCCEEDED:
            status = Task.Status.CANCELLED
        now = timezone.now()
        task.status, task.finished_at = status, now
        task.exit_code = report.get("exit_code")
        task.plan_summary = report.get("plan_summary")
        task.error = report.get("error", "")
        task.save(update_fields=["status", "finished_at", "exit_code", "plan_summary", "error"])
        if task.type == Task.Type.APPLY and state:
            # Terraform persists through the state backend; a state here is what it could not
            # write there (errored.tfstate), judged by the same rules, since the attempt is live.
            _store_state(task, state, live=True)
        StateLock.objects.release_for_tasks([task.pk], reason="task %s" % status)
        if task.type == Task.Type.DRIFT_CHECK:
            _record_drift(task.workspace, status=status, drifted=report.get("drifted"))
        notify_status(task.pk, status)
        kick_after_commit(task.workspace_id)
    return Outcome.OK


def _store_state(task: Task, state: Any, *, live: bool) -> None:
    try:
        states.offer_state(task=task, attempt=task.attempt, state=state, live=live)
    except states.Refused as exc:
        if exc.status != 409 or not live:
            logger.warning("task %d: state not stored: %s", task.pk, exc.message)
            return
        # Another lineage or a serial that does not rise, from the live attempt: never current,
        # but still what Terraform left behind.
        logger.warning("task %d: %s; kept as a conflict", task.pk, exc.message)
        states.offer_state(task=task, attempt=task.attempt, state=state, live=False)


def _record_drift(workspace: Workspace, *, status: str, drifted: bool | None) -> None:
    if status == Task.Status.SUCCEEDED and drifted is not None:
        workspace.drift_status = Workspace.DriftStatus.DRIFTED if drifted else Workspace.DriftStatus.IN_SYNC
    elif status in (Task.Status.FAILED, Task.Status.ERRORED):
        workspace.drift_status = Workspace.DriftStatus.ERROR
    else:
        return
    workspace.drift_last_checked_at = timezone.now()
    workspace.save(update_fields=["drift_status", "drift_last_checked_at"])


def dispatch_payload(*, agent_pk: int, task_id: int) -> dict[str, Any] | None:
    """The ``task.dispatch`` frame for a task dispatched to this agent; None if it no longer is."""
    task = (
        Task.objects.select_related("workspace")
        .filter(pk=task_id, agent_id=agent_pk, status=Task.Status.DISPATCHED)
        .first()
    )
    if task is None:
        return None
    terraform_vars, env_vars = variables.for_dispatch(task.workspace_id)
    return {
        "type": "task.dispatch",
        "task_id": task.pk,
        "attempt": task.attempt,
        "task_type": task.type,
        "workspace_id": task.workspace_id,
        "workspace": task.workspace.name,
        "files": task.workspace.terraform_files,
        # The one place sensitive values leave the server: to the agent that runs this task.
        "variables": terraform_vars,
        "env": env_vars,
        "state_backend": statebackend.mint(task),
        "timeout_seconds": task.timeout_seconds,
        "log_seq_start": next_log_seq(task.pk),
    }

"""Retention of a workspace's history: task logs, state versions and state transitions.

Each rule is a batch function (one transaction, the job passes ``tick.fenced``) that finds its
work in an index holding what may become due and deletes a bounded number of rows; ``run`` repeats
batches up to ``max_batches`` per tick, so a backlog (the first deploy on an old database) is
worked off over several ticks.

- **Task logs** (``TaskLogChunk``): the chunks of tasks that finished before the cutoff, oldest
  first, at most ``batch`` chunks per batch. The task is marked (``log_pruned_at`` and the counts
  of what went) in the transaction that deletes its first chunks, so a reader sees either the whole
  log or the marker, never a log with its beginning missing; ``log_prune_complete`` takes the task
  out of the index ``task_log_retained`` once no chunk is left. A task that is not finished
  (no ``finished_at``: pending, dispatched, running) is never read, and the log of a task whose
  state is an unresolved conflict is kept until an operator resolves it (it says what the late
  run did).
- **State versions**: a version is deleted only when it is older than the window, not among its
  workspace's newest ``keep`` rows, not the workspace's current state and not an unresolved
  conflict. The newest row numbers the next one (``serial`` + 1, states.py), the current one is
  what Terraform's lineage and serial rules compare against (statebackend.py), and a conflict holds
  applies until an operator resolves it: none of them is ever touched, so the state backend decides
  exactly as before. Which workspaces to look at comes from ``Workspace.state_prune_at``
  (the partial index ``workspace_state_prune_due``): a state write that pushes a row past the
  newest ``keep`` sets it (``schedule_state_prune``), and so does resolving a conflict; a pass over
  a workspace sets it to when its next row will pass the window, or NULL. The workspace row is
  locked FOR NO KEY UPDATE as every state write locks it, so a write (or a promote of the version
  being deleted) waits for the batch, or the batch skips that workspace for now (SKIP LOCKED).
  Transitions pointing at a deleted version lose the link (they keep its serial and lineage).
- **State transitions**: audit rows older than the cutoff, oldest first (``state_transition_created``).
  Nothing references them.

Does NOT: run concurrently with itself safely (the job's advisory lock serialises it), apply a
lower ``keep`` or a shorter window to a workspace before its next state write or resolved
conflict, or delete a task, a workspace or a lock (cascades and other jobs do).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from apps.workspaces.models import StateVersion, Task

logger = logging.getLogger(__name__)

LOG_BATCH = 5000  # chunks deleted per batch
# Tasks looked at per batch: marking one is a row update (with its index entries, ~0.4 ms on
# the bench machine), so a batch of short logs stays well under a second.
LOG_TASKS = 1000
VERSION_BATCH = 500  # versions deleted per batch (states can be megabytes each)
VERSION_WORKSPACES = 100
TRANSITION_BATCH = 5000
MAX_BATCHES = 20

_TERMINAL = ", ".join("'%s'" % status for status in Task.TERMINAL)

# The oldest finished tasks whose log is not gone yet (task_log_retained). Not locked: nothing
# else writes a task that finished weeks ago (a chunk re-sent for a settled task is refused, not
# stored), and row locks on every task looked at would cost a heap write each.
DUE_TASKS_SQL = (
    "SELECT id FROM workspaces_task"
    " WHERE NOT log_prune_complete AND finished_at IS NOT NULL AND finished_at < %(cutoff)s"
    " AND status IN (" + _TERMINAL + ")"
    # The log of a task whose late state is an unresolved conflict is what the operator reads
    # to decide (docs/operations.md, "State conflicts"): kept until the conflict is resolved.
    " AND NOT EXISTS (SELECT 1 FROM workspaces_stateversion v"
    " WHERE v.task_id = workspaces_task.id AND v.status = '" + StateVersion.Status.CONFLICT.value + "')"
    " ORDER BY finished_at, id LIMIT %(tasks)s"
)

# Up to ``batch`` chunks of the due tasks, oldest task first (a nested loop over the index on
# (task, seq) that stops at the limit), deleted by primary-key probes (= ANY(ARRAY(...)), never a
# join over the table); per due task, how many of its chunks went and their bytes.
_DELETE_CHUNKS = (
    "WITH due AS (" + DUE_TASKS_SQL + "),"
    """
    picked AS (
        SELECT c.id FROM due d CROSS JOIN LATERAL (
            SELECT id FROM workspaces_tasklogchunk WHERE task_id = d.id ORDER BY seq LIMIT %(batch)s
        ) AS c
        LIMIT %(batch)s
    ), gone AS (
        DELETE FROM workspaces_tasklogchunk WHERE id = ANY(ARRAY(SELECT id FROM picked))
        RETURNING task_id, octet_length(text) AS size
    )
    SELECT d.id, COALESCE(g.n, 0), COALESCE(g.size, 0)
    FROM due d LEFT JOIN (SELECT task_id, count(*) AS n, sum(size) AS size FROM gone GROUP BY task_id) AS g
        ON g.task_id = d.id
    """
)

# A separate statement, so that it sees the delete: a task is complete when no chunk is left
# (whatever order the batch took them in). Only the tasks the batch touched or that have no
# chunk are written; the marker goes on with the first chunks deleted.
_MARK_TASKS = """
    UPDATE workspaces_task t SET
        log_pruned_at = CASE WHEN u.n > 0 THEN COALESCE(t.log_pruned_at, %(now)s) ELSE t.log_pruned_at END,
        log_pruned_chunks = t.log_pruned_chunks + u.n,
        log_pruned_bytes = t.log_pruned_bytes + u.size,
        log_prune_complete = NOT EXISTS (SELECT 1 FROM workspaces_tasklogchunk c WHERE c.task_id = t.id)
    FROM unnest(%(ids)s::bigint[], %(n)s::int[], %(size)s::bigint[]) AS u(id, n, size)
    WHERE t.id = u.id AND (u.n > 0 OR NOT EXISTS (SELECT 1 FROM workspaces_tasklogchunk c WHERE c.task_id = t.id))
"""

DUE_WORKSPACES_SQL = (
    "SELECT id, current_state_id FROM workspaces_workspace"
    " WHERE state_prune_at IS NOT NULL AND state_prune_at <= %(now)s"
    " ORDER BY state_prune_at, id LIMIT %(workspaces)s FOR NO KEY UPDATE SKIP LOCKED"
)

# The highest serial that is not among the newest ``keep`` rows (an index scan of keep + 1 rows).
_BEYOND_KEEP = (
    "SELECT serial FROM workspaces_stateversion WHERE workspace_id = %(ws)s"
    " ORDER BY serial DESC OFFSET %(keep)s LIMIT 1"
)

_CONFLICT = StateVersion.Status.CONFLICT.value

_DOOMED_VERSIONS = (
    "SELECT id FROM workspaces_stateversion"
    " WHERE workspace_id = %(ws)s AND serial <= %(beyond)s AND created_at < %(cutoff)s"
    " AND status <> '" + _CONFLICT + "' AND id IS DISTINCT FROM %(current)s"
    " ORDER BY serial LIMIT %(budget)s"
)

# One UPDATE for both links: a row pointing at two doomed versions is updated once.
_UNLINK_TRANSITIONS = """
    UPDATE workspaces_statetransition SET
        from_version_id = CASE WHEN from_version_id = ANY(%(ids)s) THEN NULL ELSE from_version_id END,
        to_version_id = CASE WHEN to_version_id = ANY(%(ids)s) THEN NULL ELSE to_version_id END
    WHERE from_version_id = ANY(%(ids)s) OR to_version_id = ANY(%(ids)s)
"""

# What is left beyond the newest rows and not held: all younger than the window after a pass.
_NEXT_DUE = (
    "SELECT min(created_at) FROM workspaces_stateversion"
    " WHERE workspace_id = %(ws)s AND serial <= %(beyond)s"
    " AND status <> '" + _CONFLICT + "' AND id IS DISTINCT FROM %(current)s"
)

OLD_TRANSITIONS_SQL = """
    WITH gone AS (
        DELETE FROM workspaces_statetransition WHERE id = ANY(ARRAY(
            SELECT id FROM workspaces_statetransition WHERE created_at < %(cutoff)s
            ORDER BY created_at, id LIMIT %(batch)s
        ))
        RETURNING 1
    )
    SELECT count(*) FROM gone
"""


@dataclass(frozen=True)
class Batch:
    rows: int  # rows deleted
    items: int  # tasks or workspaces looked at
    more: bool  # the batch was full: more may be due now


@dataclass
class Pruned:
    rows: int = 0
    items: int = 0
    batches: int = 0


def run(
    batch: Callable[[], Batch],
    *,
    max_batches: int = MAX_BATCHES,
    atomic: Callable[[], AbstractContextManager[object]] = transaction.atomic,
    should_stop: Callable[[], bool] = lambda: False,
) -> Pruned:
    """Up to ``max_batches`` batches, one ``atomic()`` transaction each, until one is not full."""
    done = Pruned()
    while done.batches < max_batches and not should_stop():
        with atomic():
            result = batch()
        done.batches += 1
        done.rows += result.rows
        done.items += result.items
        if not result.more:
            break
    return done


# --- task logs ------------------------------------------------------------------------------------


def prune_task_logs_batch(
    *, cutoff: datetime, batch: int = LOG_BATCH, tasks: int = LOG_TASKS, now: datetime | None = None
) -> Batch:
    """Delete up to ``batch`` chunks of the (up to ``tasks``) tasks that finished longest before
    ``cutoff``; two statements, whatever the number of tasks."""
    with connection.cursor() as cursor:
        cursor.execute(_DELETE_CHUNKS, {"cutoff": cutoff, "tasks": tasks, "batch": batch})
        due = cursor.fetchall()
        if not due:
            return Batch(rows=0, items=0, more=False)
        cursor.execute(
            _MARK_TASKS,
            {
                "now": now or timezone.now(),
                "ids": [row[0] for row in due],
                "n": [int(row[1]) for row in due],
                "size": [int(row[2]) for row in due],
            },
        )
        marked = cursor.rowcount
    deleted = sum(int(row[1]) for row in due)
    return Batch(rows=deleted, items=marked, more=deleted == batch or len(due) == tasks)


def prune_task_logs(
    *,
    cutoff: datetime,
    batch: int = LOG_BATCH,
    tasks: int = LOG_TASKS,
    max_batches: int = MAX_BATCHES,
    atomic: Callable[[], AbstractContextManager[object]] = transaction.atomic,
    should_stop: Callable[[], bool] = lambda: False,
) -> Pruned:
    return run(
        lambda: prune_task_logs_batch(cutoff=cutoff, batch=batch, tasks=tasks),
        max_batches=max_batches,
        atomic=atomic,
        should_stop=should_stop,
    )


# --- state versions -------------------------------------------------------------------------------


def schedule_state_prune(workspace_id: int, *, released_at: datetime | None = None) -> None:
    """Make state_version_retention look at the workspace when a row may have become prunable.

    Called in a state write's transaction, with the workspace row locked: after a version was
    added (the row it pushed past the newest ``STATE_VERSIONS_KEEP`` is due once it is older than
    the window), or with ``released_at`` (the creation time of a conflict just resolved). Never
    moves an earlier look later."""
    window = timedelta(days=settings.STATE_VERSION_RETENTION_DAYS)
    with connection.cursor() as cursor:
        if released_at is not None:
            cursor.execute(
                "UPDATE workspaces_workspace SET state_prune_at ="
                " LEAST(COALESCE(state_prune_at, 'infinity'::timestamptz), GREATEST(%s::timestamptz, now()))"
                " WHERE id = %s",
                [released_at + window, workspace_id],
            )
            return
        cursor.execute(
            "UPDATE workspaces_workspace w SET state_prune_at ="
            " LEAST(COALESCE(w.state_prune_at, 'infinity'::timestamptz), GREATEST(beyond.due, now()))"
            " FROM (SELECT created_at + make_interval(secs => %(window)s) AS due FROM workspaces_stateversion"
            " WHERE workspace_id = %(ws)s ORDER BY serial DESC OFFSET %(keep)s LIMIT 1) AS beyond"
            " WHERE w.id = %(ws)s",
            {"window": window.total_seconds(), "ws": workspace_id, "keep": settings.STATE_VERSIONS_KEEP},
        )


def prune_state_versions_batch(
    *,
    keep: int,
    window: timedelta,
    now: datetime,
    batch: int = VERSION_BATCH,
    workspaces: int = VERSION_WORKSPACES,
) -> Batch:
    """Delete up to ``batch`` prunable versions of the workspaces due by ``now``."""
    if keep < 1:
        raise ValueError("keep must be at least 1: the newest version numbers the next")
    cutoff = now - window
    budget = batch
    looked = 0
    with connection.cursor() as cursor:
        cursor.execute(DUE_WORKSPACES_SQL, {"now": now, "workspaces": workspaces})
        due = cursor.fetchall()
        for workspace_id, current_id in due:
            looked += 1
            cursor.execute(_BEYOND_KEEP, {"ws": workspace_id, "keep": keep})
            row = cursor.fetchone()
            next_due: datetime | None = None
            if row is not None:
                scope = {"ws": workspace_id, "beyond": row[0], "current": current_id}
                cursor.execute(_DOOMED_VERSIONS, {**scope, "cutoff": cutoff, "budget": budget})
                doomed = [r[0] for r in cursor.fetchall()]
                if doomed:
                    cursor.execute(_UNLINK_TRANSITIONS, {"ids": doomed})
                    cursor.execute("DELETE FROM workspaces_stateversion WHERE id = ANY(%s)", [doomed])
                    budget -= len(doomed)
                if budget == 0:
                    break  # it stays due (state_prune_at unchanged): the next batch goes on here
                cursor.execute(_NEXT_DUE, scope)
                oldest = cursor.fetchone()
                if oldest is not None and oldest[0] is not None:
                    next_due = oldest[0] + window
            cursor.execute(
                "UPDATE workspaces_workspace SET state_prune_at = %s WHERE id = %s", [next_due, workspace_id]
            )
    return Batch(rows=batch - budget, items=looked, more=budget == 0 or len(due) == workspaces)


def prune_state_versions(
    *,
    keep: int,
    window: timedelta,
    now: datetime | None = None,
    batch: int = VERSION_BATCH,
    workspaces: int = VERSION_WORKSPACES,
    max_batches: int = MAX_BATCHES,
    atomic: Callable[[], AbstractContextManager[object]] = transaction.atomic,
    should_stop: Callable[[], bool] = lambda: False,
) -> Pruned:
    at = now or timezone.now()
    return run(
        lambda: prune_state_versions_batch(keep=keep, window=window, now=at, batch=batch, workspaces=workspaces),
        max_batches=max_batches,
        atomic=atomic,
        should_stop=should_stop,
    )


# --- state transitions ----------------------------------------------------------------------------


def prune_state_transitions_batch(*, cutoff: datetime, batch: int = TRANSITION_BATCH) -> Batch:
    with connection.cursor() as cursor:
        cursor.execute(OLD_TRANSITIONS_SQL, {"cutoff": cutoff, "batch": batch})
        row = cursor.fetchone()
    deleted = int(row[0]) if row else 0
    return Batch(rows=deleted, items=0, more=deleted == batch)


def prune_state_transitions(
    *,
    cutoff: datetime,
    batch: int = TRANSITION_BATCH,
    max_batches: int = MAX_BATCHES,
    atomic: Callable[[], AbstractContextManager[object]] = transaction.atomic,
    should_stop: Callable[[], bool] = lambda: False,
) -> Pruned:
    return run(
        lambda: prune_state_transitions_batch(cutoff=cutoff, batch=batch),
        max_batches=max_batches,
        atomic=atomic,
        should_stop=should_stop,
    )

"""Seeding a database by SQL at a scale (bench_scale): history and fleet, fast.

Each table is filled with one ``INSERT ... SELECT ... FROM generate_series``; columns the seed
does not choose get their model field's default (or NULL), read from the models, so fields other
engineers add later are filled without touching this module. Sizes (``SIZES``):

| size | JobRun (default intervals) | workspaces | finished tasks (+2 log chunks each) | agents |
|---|---|---|---|---|
| 1x | 1 day | 1,000 | 10,000 | 100 |
| 10x | 7 days | 10,000 | 100,000 | 1,000 |
| 100x | 30 days | 100,000 | 1,000,000 | 1,000 |

State transitions: one per apply (a third of the finished tasks), over the last 300 days.

The work due stays the same at every size: 5 pending tasks, 5 running, 5 workspaces whose drift
check is due, 5 agents whose heartbeat is stale, 5 stale editing sessions, 5 expired drafts and
channel-layer rows; for the retention jobs, 5 tasks finished 40 days ago (2 log chunks each, past
TASK_LOG_RETENTION_DAYS), 5 workspaces with STATE_VERSIONS_KEEP + 3 versions of which 2 each are
old enough to go, and 5 state transitions past STATE_TRANSITION_RETENTION_DAYS. The not-yet-due
history sits in the same indexes: every finished task's log is kept (it finished within the
window), and a tenth of the workspaces are due for a state-version look in 10 days. So a job tick
that costs more at 100x than at 10x pays for history, not work.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, models
from django.utils import timezone

# The jobs' default intervals (settings.py) and the 36,000 ticks a day they make together.
JOB_INTERVALS = {
    "agent_autoscaler": 5,
    "pending_tasks": 10,
    "task_timeout": 30,
    "drift_check": 60,
    "agent_cleanup": 60,
    "cmdb_sync": 60,
    "lock_draft_cleanup": 60,
    "channel_layer_gc": 60,
}
POOL = "bench-scale"
DUE = 5


@dataclass(frozen=True)
class Size:
    name: str
    jobrun_days: int
    workspaces: int
    tasks: int
    agents: int


SIZES = (
    Size("1x", jobrun_days=1, workspaces=1_000, tasks=10_000, agents=100),
    Size("10x", jobrun_days=7, workspaces=10_000, tasks=100_000, agents=1_000),
    Size("100x", jobrun_days=30, workspaces=100_000, tasks=1_000_000, agents=1_000),
)

TABLES = (
    "coordination_jobrun",
    "coordination_jobrunday",
    "workspaces_tasklogchunk",
    "workspaces_task",
    "workspaces_statetransition",
    "workspaces_stateversion",
    "workspaces_resource",
    "workspaces_workspace",
    "agents_agent",
    "agents_agentpool",
    "pglayer_message",
    "pglayer_groupmembership",
)


def insert_series(model: type[models.Model], count: int, chosen: dict[str, str], params: dict[str, Any]) -> int:
    """``count`` rows of ``model``: ``chosen`` maps columns to SQL over ``i`` (1..count)."""
    columns: list[str] = []
    values: list[str] = []
    for field in model._meta.concrete_fields:
        column = str(field.column)
        if column in chosen:
            values.append(chosen[column])
        elif field.primary_key:
            continue
        elif getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            values.append("%(now)s")
        elif field.has_default():
            key = "default_%s" % column
            params[key] = field.get_db_prep_save(field.get_default(), connection)
            values.append("%%(%s)s" % key)
        elif field.null:
            values.append("NULL")
        elif isinstance(field, models.CharField | models.TextField):
            values.append("''")
        else:
            raise ValueError("%s.%s needs a value in the seed" % (model.__name__, column))
        columns.append(column)
    sql = "INSERT INTO %s (%s) SELECT %s FROM generate_series(1, %%(count)s) AS i" % (
        model._meta.db_table,
        ", ".join(columns),
        ", ".join(values),
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, {**params, "count": count})
        return cursor.rowcount


def truncate() -> None:
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE %s RESTART IDENTITY CASCADE" % ", ".join(TABLES))


def seed_jobruns(*, days: int, now: datetime) -> int:
    """One tick per interval per job over ``days`` before ``now``, each a tenth of its interval.

    Written as history from before the overlap trigger (an upgrade): the caller runs the one-off
    backfill of the flags (bench_scale times it at 100x); the trigger is back on on return."""
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE coordination_jobrun DISABLE TRIGGER USER")
        cursor.execute(
            """
            INSERT INTO coordination_jobrun (job, holder, epoch, started_at, finished_at, outcome, error)
            SELECT j.name, 'leader-' || (i / 20000 %% 2), 1 + i / 20000,
                   %(start)s::timestamptz + make_interval(secs => i * j.every),
                   %(start)s::timestamptz + make_interval(secs => i * j.every + j.every / 10.0),
                   CASE WHEN i %% 997 = 0 THEN 'error' WHEN i %% 1009 = 0 THEN 'skipped' ELSE 'ok' END, ''
            FROM unnest(%(names)s::text[], %(everys)s::int[]) AS j(name, every),
                 generate_series(0, (%(days)s * 86400 / j.every) - 1) AS i
            """,
            {
                "start": now - timedelta(days=days),
                "days": days,
                "names": list(JOB_INTERVALS),
                "everys": list(JOB_INTERVALS.values()),
            },
        )
        count = cursor.rowcount
        cursor.execute("ALTER TABLE coordination_jobrun ENABLE TRIGGER USER")
    return count


def seed(size: Size, *, now: datetime | None = None) -> dict[str, int]:
    """Empty the seeded tables and fill them at ``size``; returns rows per table."""
    from apps.agents.models import Agent, AgentPool
    from apps.pglayer.models import Message
    from apps.workspaces.models import StateVersion, Task, TaskLogChunk, Workspace

    now = now or timezone.now()
    truncate()
    pool = AgentPool(name=POOL)
    pool.set_new_token()
    pool.save()
    p: dict[str, Any] = {"now": now, "pool": pool.pk, "ws": size.workspaces, "agents": size.agents, "due": DUE}
    rows = {"jobrun": seed_jobruns(days=size.jobrun_days, now=now)}
    rows["workspace"] = insert_series(
        Workspace,
        size.workspaces,
        {
            "name": "'scale-' || i",
            "pool_id": "%(pool)s",
            "drift_check_enabled": "i %% 10 = 0",
            # DUE workspaces are due now, the other checked ones in an hour.
            "drift_next_check_at": "CASE WHEN i <= %(due)s * 10 THEN %(now)s::timestamptz - interval '1 minute'"
            " ELSE %(now)s::timestamptz + interval '1 hour' END",
            "cmdb_synced_serial": "1",
        },
        dict(p),
    )
    rows["stateversion"] = insert_series(
        StateVersion,
        size.workspaces,
        {
            "workspace_id": "i",
            "serial": "1",
            "state": '\'{"version": 4, "serial": 1, "lineage": "l", "resources": []}\'::jsonb',
            "created_at": "%(now)s",
        },
        dict(p),
    )
    with connection.cursor() as cursor:
        cursor.execute("UPDATE workspaces_workspace SET current_state_id = id, cmdb_synced_state_id = id")
    rows["agent"] = insert_series(
        Agent,
        size.agents,
        {
            "agent_id": "'scale-agent-' || i",
            "pool_id": "%(pool)s",
            "status": "'online'",
            "capacity": "2",
            # DUE agents went silent a while ago; the rest are connected and fresh.
            "last_heartbeat": "CASE WHEN i <= %(due)s THEN %(now)s::timestamptz - interval '10 minutes'"
            " ELSE %(now)s::timestamptz END",
            "connected_pod": "'web-' || (i %% 2)",
            "connected_at": "%(now)s",
        },
        dict(p),
    )
    # Finished tasks, spread over 30 days and all workspaces; then a few active ones.
    rows["task"] = insert_series(
        Task,
        size.tasks,
        {
            "workspace_id": "1 + (i %% %(ws)s)",
            "type": "CASE WHEN i %% 3 = 0 THEN 'apply' ELSE 'plan' END",
            "status": "CASE WHEN i %% 50 = 0 THEN 'failed' ELSE 'succeeded' END",
            "agent_id": "1 + (i %% %(agents)s)",
            "created_at": "%(now)s::timestamptz - make_interval(secs => (i %% 2592000))",
            "dispatched_at": "%(now)s::timestamptz - make_interval(secs => (i %% 2592000))",
            "started_at": "%(now)s::timestamptz - make_interval(secs => (i %% 2592000))",
            "finished_at": "%(now)s::timestamptz - make_interval(secs => (i %% 2592000) - 30)",
            "exit_code": "0",
        },
        dict(p),
    )
    rows["task"] += insert_series(
        Task,
        2 * DUE,
        {
            # Workspaces at the end of the range: their pending and running tasks.
            "workspace_id": "%(ws)s - i",
            "type": "'plan'",
            "status": "CASE WHEN i <= %(due)s THEN 'pending' ELSE 'running' END",
            "agent_id": "CASE WHEN i <= %(due)s THEN NULL ELSE 1 + i END",
            "created_at": "%(now)s",
            "started_at": "CASE WHEN i <= %(due)s THEN NULL ELSE %(now)s::timestamptz END",
        },
        dict(p),
    )
    rows["tasklogchunk"] = insert_series(
        TaskLogChunk,
        2 * size.tasks,
        {
            "task_id": "1 + (i - 1) / 2",
            "seq": "(i - 1) %% 2",
            "text": "repeat('terraform output line ', 4)",
            "created_at": "%(now)s",
        },
        dict(p),
    )
    rows.update(seed_retention(size, p))
    rows["message"] = insert_series(
        Message,
        DUE,
        {
            "channel": "'scale.expired!' || i",
            "body": "'\\x00'::bytea",
            "expires": "%(now)s::timestamptz - interval '1 minute'",
        },
        dict(p),
    )
    vacuum()
    return rows


def seed_retention(size: Size, p: dict[str, Any]) -> dict[str, int]:
    """The retention jobs' history and their DUE work (after the tasks, their chunks and versions)."""
    from django.conf import settings

    from apps.workspaces.models import StateTransition, StateVersion, Task, TaskLogChunk

    rows: dict[str, int] = {}
    first_old = size.tasks + 2 * DUE + 1  # ids follow the finished and the active tasks
    rows["task (due)"] = insert_series(
        Task,
        DUE,
        {
            "workspace_id": "200 + i",
            "type": "'plan'",
            "status": "'succeeded'",
            "created_at": "%(now)s::timestamptz - interval '40 days'",
            "started_at": "%(now)s::timestamptz - interval '40 days'",
            "finished_at": "%(now)s::timestamptz - interval '40 days'",
            "exit_code": "0",
        },
        dict(p),
    )
    rows["tasklogchunk (due)"] = insert_series(
        TaskLogChunk,
        2 * DUE,
        {
            "task_id": "%s + (i - 1) / 2" % first_old,
            "seq": "(i - 1) %% 2",
            "text": "repeat('terraform output line ', 4)",
            "created_at": "%(now)s::timestamptz - interval '40 days'",
        },
        dict(p),
    )
    # DUE workspaces (ids 101..105: no drift check, no active task) get versions 2..KEEP + 3, all
    # 60 days old, the newest current: serials 2 and 3 are past the newest KEEP and the window.
    keep = settings.STATE_VERSIONS_KEEP
    extra = keep + 2
    rows["stateversion (due)"] = insert_series(
        StateVersion,
        DUE * extra,
        {
            "workspace_id": "101 + (i - 1) / %d" % extra,
            "serial": "2 + (i - 1) %%%% %d" % extra,
            "terraform_serial": "2 + (i - 1) %%%% %d" % extra,
            "lineage": "'l'",
            "state": '\'{"version": 4, "serial": 1, "lineage": "l", "resources": []}\'::jsonb',
            "created_at": "%(now)s::timestamptz - interval '60 days'",
        },
        dict(p),
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE workspaces_workspace w SET current_state_id = v.id, cmdb_synced_state_id = v.id,"
            " state_prune_at = %s::timestamptz - interval '1 minute'"
            " FROM workspaces_stateversion v WHERE v.workspace_id = w.id AND w.id BETWEEN 101 AND %s AND v.serial = %s",
            [p["now"], 100 + DUE, 1 + extra],
        )
        cursor.execute(
            "UPDATE workspaces_workspace SET state_prune_at = %s::timestamptz + interval '10 days'"
            " WHERE id %% 10 = 5 AND state_prune_at IS NULL",
            [p["now"]],
        )
    rows["statetransition"] = insert_series(
        StateTransition,
        size.tasks // 3 + DUE,
        {
            "workspace_id": "1 + (i %% %(ws)s)",
            "kind": "'terraform'",
            "to_serial": "1",
            "to_lineage": "'l'",
            # DUE rows past the 365-day window, the rest over the last 300 days.
            "created_at": "CASE WHEN i <= %(due)s THEN %(now)s::timestamptz - interval '400 days'"
            " ELSE %(now)s::timestamptz - make_interval(secs => (i %% 25920000)) END",
        },
        dict(p),
    )
    return rows


def vacuum() -> None:
    """What autovacuum does between a cluster's busy hours: visibility map, statistics."""
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")

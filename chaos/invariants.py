"""The invariants checked after every chaos round, from the database and from the agents' own
execution logs (JSON lines written by ``runagent --execution-log``).

Each check returns a list of human-readable violations; empty means the invariant held. They read
only: they never repair anything, so a violation is reported exactly as the cluster left it.
Guarantees: the execution-log checks use the agents' timestamps, never the server's view of a task.
Does NOT: prove an invariant held between two checks for state the database does not keep
(advisory locks and connected_pod are sampled at check time).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.db import connection

from apps.coordination.lockkeys import Namespace, beacon_key, pg_locks_key

TERMINAL = ("succeeded", "failed", "errored", "cancelled", "timed_out")


def job_overlaps(*, since: datetime | None = None) -> list[str]:
    """Ticks of the same job by different holders whose run intervals overlap.

    Only ticks that ran their body count (ok, error, or still running); fenced and skipped ticks
    wrote nothing. A tick still running is taken to run until now.
    """
    sql = """
        SELECT a.job, a.holder, a.epoch, a.started_at, a.finished_at, b.holder, b.epoch, b.started_at, b.finished_at
        FROM coordination_jobrun a
        JOIN coordination_jobrun b ON a.job = b.job AND a.id < b.id AND a.holder <> b.holder
        WHERE a.outcome IN ('ok', 'error', 'running') AND b.outcome IN ('ok', 'error', 'running')
          AND a.started_at < COALESCE(b.finished_at, now()) AND b.started_at < COALESCE(a.finished_at, now())
          AND (%(since)s::timestamptz IS NULL OR a.started_at >= %(since)s::timestamptz)
        ORDER BY a.started_at
        LIMIT 20
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, {"since": since})
        rows = cursor.fetchall()
    return ["job %s: %s (epoch %s, %s..%s) overlaps %s (epoch %s, %s..%s)" % row for row in rows]


def tasks_not_terminal(*, created_before: datetime) -> list[str]:
    """Tasks created before ``created_before`` that have still not reached a terminal state."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, workspace_id, type, status, created_at FROM workspaces_task "
            "WHERE created_at < %s AND status <> ALL(%s) ORDER BY id LIMIT 50",
            [created_before, list(TERMINAL)],
        )
        rows = cursor.fetchall()
    return ["task %d (workspace %d, %s) still %s since %s" % row for row in rows]


def advisory_lock_holders() -> list[str]:
    """The advisory locks granted now, as ``classid/objid by application_name (state)``: names the
    holders when the count is above the baseline."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT l.classid, l.objid, a.application_name, a.state FROM pg_locks l"
            " LEFT JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
            " ORDER BY l.classid, l.objid"
        )
        return ["%s/%s by %s (%s)" % row for row in cursor.fetchall()]


# pg_locks rows (alias l) of advisory locks granted in this database (other databases' are not ours).
ADVISORY_HERE = (
    "l.locktype = 'advisory' AND l.granted"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def election_lock_strays(*, lease: str, live_leaders: Iterable[str]) -> list[str]:
    """Beacon and job locks held by a session that is not the live leader's, or a beacon that is
    not its current term's: a standby's beacon left lit, a previous term's kept, a job lock on a
    session no leader owns.

    Owners are told by ``application_name`` (``<pod>:<role>/<purpose>``, sessiondb.py): the lease's
    holder must be among ``live_leaders`` and the session's name must start with ``<holder>:``.
    Sampled: during a handover a tick of the old term or a candidate's beacon lit before its write
    shows up for a moment, so the caller waits for it to settle.
    """
    live = set(live_leaders)
    with connection.cursor() as cursor:
        cursor.execute("SELECT holder_identity, epoch FROM coordination_lease WHERE name = %s", [lease])
        row = cursor.fetchone()
        holder, epoch = (row[0], row[1]) if row else ("", None)
        cursor.execute(
            "SELECT l.classid::bigint, l.objid::bigint, l.pid, a.application_name, a.state FROM pg_locks l"
            " LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE " + ADVISORY_HERE + " AND l.objsubid = 2 AND l.classid::bigint = ANY(%s)"
            " ORDER BY l.classid, l.objid, l.pid",
            [[int(Namespace.JOB), int(Namespace.LEADER_BEACON)]],
        )
        locks = cursor.fetchall()
    leader = holder if holder and holder in live else None
    term_beacon = pg_locks_key(beacon_key(lease, epoch, holder)) if leader and epoch is not None else None
    strays = []
    for classid, objid, pid, name, state in locks:
        kind = "beacon" if classid == Namespace.LEADER_BEACON else "job"
        owned = leader is not None and (name or "").startswith(leader + ":")
        if kind == "beacon" and (classid, objid) != term_beacon:
            owned = False
        if not owned:
            strays.append(
                "%s lock %s/%s held by %s (pid %s, %s); lease holder %r epoch %s%s"
                % (kind, classid, objid, name, pid, state, holder, epoch, "" if leader or not holder else " (not live)")
            )
    return strays


def advisory_locks_now() -> dict[tuple[object, ...], str]:
    """Advisory locks granted now outside the election's namespaces (job locks and beacons:
    :func:`election_lock_strays` checks whose they are), keyed by holding session and, for a
    session inside a transaction, that transaction's start: a key seen again is the same lock held
    by the same session in the same transaction (or outside any)."""
    with connection.cursor() as cursor:
        # pg_stat_activity is read once per transaction of the reader unless told otherwise.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT l.pid, a.backend_start, a.xact_start, l.classid::bigint, l.objid::bigint, a.application_name,"
            " a.state FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE " + ADVISORY_HERE + " AND l.pid <> pg_backend_pid() AND NOT (l.classid::bigint = ANY(%s))",
            [[int(Namespace.JOB), int(Namespace.LEADER_BEACON)]],
        )
        rows = cursor.fetchall()
    return {
        (pid, backend, xact, classid, objid): "%s/%s by %s (pid %s, %s)" % (classid, objid, name, pid, state)
        for pid, backend, xact, classid, objid, name, state in rows
    }


def persistent_advisory_locks(*, window: float, interval: float = 0.2) -> list[str]:
    """Advisory locks (outside the election's namespaces) held by the same session, in the same
    transaction or outside any, for the whole of ``window`` seconds: leaks, or a transaction stuck
    with a workspace's lock. A live leader's ticks hold a workspace's transaction lock only for
    their transaction (back to back, on a loaded machine): each transaction is a new key, so they
    never count, whereas a count of granted locks against a baseline called them a leak."""
    deadline = time.monotonic() + window
    held = advisory_locks_now()
    while held and time.monotonic() < deadline:
        time.sleep(interval)
        now = advisory_locks_now()
        held = {key: now[key] for key in held if key in now}
    return sorted(held.values())


def advisory_locks_held() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
        (count,) = cursor.fetchone()
    return int(count)


def stale_connected_pods(live_pods: Iterable[str]) -> list[str]:
    """Online agents whose connected_pod does not name a live web replica."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT agent_id, status, connected_pod FROM agents_agent "
            "WHERE status <> 'offline' AND (connected_pod IS NULL OR NOT (connected_pod = ANY(%s)))",
            [list(live_pods)],
        )
        rows = cursor.fetchall()
    return ["agent %s is %s with connected_pod %r" % row for row in rows]


@dataclass(frozen=True)
class Execution:
    task_id: int
    workspace_id: int
    type: str
    agent_id: str
    pid: int
    start: float
    end: float | None  # None: the agent died mid-run (its process group was killed with it)


def read_executions(paths: Sequence[Path]) -> list[Execution]:
    """Pair start/end events of each agent's execution log into executions.

    A line cut short by a kill is ignored; a start without an end is an execution that ran until
    the agent died.
    """
    starts: dict[tuple[str, int, int], dict[str, object]] = {}
    executions: list[Execution] = []
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # the last line of an agent killed mid-write
            if not isinstance(event, dict):
                continue
            key = (str(event.get("agent_id")), int(event.get("pid", 0)), int(event["task_id"]))
            if event.get("event") == "start":
                starts[key] = event
            elif event.get("event") == "end" and key in starts:
                begin = starts.pop(key)
                executions.append(_execution(begin, end=float(event["t"])))
    executions.extend(_execution(begin, end=None) for begin in starts.values())
    return executions


def _execution(begin: dict[str, object], *, end: float | None) -> Execution:
    return Execution(
        task_id=int(begin["task_id"]),  # type: ignore[call-overload]
        workspace_id=int(begin["workspace_id"]),  # type: ignore[call-overload]
        type=str(begin["type"]),
        agent_id=str(begin["agent_id"]),
        pid=int(begin["pid"]),  # type: ignore[call-overload]
        start=float(begin["t"]),  # type: ignore[arg-type]
        end=end,
    )


def applies_executed_twice(executions: Sequence[Execution]) -> list[str]:
    seen: dict[int, list[Execution]] = defaultdict(list)
    for execution in executions:
        if execution.type == "apply":
            seen[execution.task_id].append(execution)
    return [
        "apply task %d executed %d times (agents %s)" % (task_id, len(runs), ", ".join(r.agent_id for r in runs))
        for task_id, runs in sorted(seen.items())
        if len(runs) > 1
    ]


def overlapping_executions(executions: Sequence[Execution], *, died_at: dict[tuple[str, int], float]) -> list[str]:
    """Two executions in one workspace whose intervals overlap, by the agents' own clocks.

    An execution without an end ran until its agent process died: ``died_at[(agent_id, pid)]``
    (recorded by the harness when it killed it); if the agent is unknown there, until forever,
    which makes any later execution in that workspace a violation, as it should.
    """
    by_workspace: dict[int, list[tuple[float, float, Execution]]] = defaultdict(list)
    for execution in executions:
        end = execution.end
        if end is None:
            end = died_at.get((execution.agent_id, execution.pid), float("inf"))
        by_workspace[execution.workspace_id].append((execution.start, end, execution))
    violations = []
    for workspace_id, intervals in sorted(by_workspace.items()):
        intervals.sort(key=lambda item: item[0])
        latest_end, latest = -1.0, None
        for start, end, execution in intervals:
            if latest is not None and start < latest_end:
                violations.append(
                    "workspace %d: task %d on %s started while task %d on %s was running"
                    % (workspace_id, execution.task_id, execution.agent_id, latest.task_id, latest.agent_id)
                )
            if end > latest_end:
                latest_end, latest = end, execution
    return violations


def leader_elected_within(*, lease: str, since: datetime, bound: timedelta, now: datetime) -> list[str]:
    """The Postgres lease has a holder that renewed after ``since``, or ``bound`` has not passed yet."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT holder_identity, renew_time FROM coordination_lease WHERE name = %s", [lease])
        row = cursor.fetchone()
    if row is not None and row[0] and row[1] is not None and row[1] >= since:
        return []
    if now - since < bound:
        return []
    return ["no leader renewed lease %s within %s of %s (record: %r)" % (lease, bound, since.isoformat(), row)]


StateSeen = dict[int, tuple[str, int]]


def current_states() -> StateSeen:
    """Each workspace's current state as (lineage, Terraform serial)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT w.id, s.lineage, s.terraform_serial FROM workspaces_workspace w "
            "JOIN workspaces_stateversion s ON s.id = w.current_state_id"
        )
        return {workspace_id: (lineage, serial) for workspace_id, lineage, serial in cursor.fetchall()}


def state_regressions(*, seen: StateSeen) -> tuple[list[str], StateSeen]:
    """The current state never goes backwards: checked in the pointer's history and against the
    state seen at the previous check. Returns the violations and the states seen now.

    History (``StateTransition``): a Terraform write keeps the lineage and raises the serial; every
    move starts where the previous one ended (nothing moved the pointer unrecorded), and the pointer
    is where the last move left it. Sampled: since the previous check no workspace's serial fell,
    and its lineage changed only through an operator's promote (which also raises the serial).
    """
    sql = """
        WITH t AS (
            SELECT workspace_id, kind, from_serial, from_lineage, to_serial, to_lineage, task_id, attempt,
                   LAG(to_serial) OVER w AS prev_serial, LAG(to_lineage) OVER w AS prev_lineage,
                   ROW_NUMBER() OVER w AS n
            FROM workspaces_statetransition
            WINDOW w AS (PARTITION BY workspace_id ORDER BY created_at, id)
        )
        SELECT workspace_id, kind, from_lineage, from_serial, to_lineage, to_serial, task_id, attempt FROM t
        WHERE (from_serial IS NOT NULL AND to_serial <= from_serial)
           OR (kind = 'terraform' AND from_serial IS NOT NULL AND to_lineage <> from_lineage)
           OR (n = 1 AND from_serial IS NOT NULL)
           OR (n > 1 AND (from_serial IS DISTINCT FROM prev_serial OR from_lineage IS DISTINCT FROM prev_lineage))
        LIMIT 20
    """
    pointer_sql = """
        SELECT w.id, w.current_state_id, last.to_version_id FROM workspaces_workspace w
        LEFT JOIN LATERAL (
            SELECT to_version_id FROM workspaces_statetransition t WHERE t.workspace_id = w.id
            ORDER BY t.created_at DESC, t.id DESC LIMIT 1
        ) last ON true
        WHERE w.current_state_id IS DISTINCT FROM last.to_version_id
        LIMIT 20
    """
    violations: list[str] = []
    with connection.cursor() as cursor:
        cursor.execute(sql)
        violations += [
            "workspace %d: %s move %s/%s -> %s/%s (task %s attempt %s) goes backwards or skips the pointer" % row
            for row in cursor.fetchall()
        ]
        cursor.execute(pointer_sql)
        violations += [
            "workspace %d: current state %s is not where the last recorded move left it (%s)" % row
            for row in cursor.fetchall()
        ]
        cursor.execute("SELECT DISTINCT workspace_id FROM workspaces_statetransition WHERE kind = 'promote'")
        promoted = {row[0] for row in cursor.fetchall()}
    now = current_states()
    for workspace_id, (lineage, serial) in sorted(seen.items()):
        if workspace_id not in now:
            violations.append("workspace %d: had state %s/%d, now none" % (workspace_id, lineage, serial))
            continue
        new_lineage, new_serial = now[workspace_id]
        if new_serial < serial or (new_lineage != lineage and workspace_id not in promoted):
            violations.append(
                "workspace %d: current state went from %s/%d to %s/%d"
                % (workspace_id, lineage, serial, new_lineage, new_serial)
            )
    return violations, now

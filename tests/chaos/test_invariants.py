"""The chaos checks find the violations they exist for (each check is shown failing, then holding)."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from apps.agents.models import Agent, AgentPool
from apps.coordination.lockkeys import beacon_key, job_key, workspace_key
from apps.coordination.models import JobRun, Lease
from apps.workspaces.models import Task, Workspace
from chaos import invariants


def _run(job: str, holder: str, start: int, end: int | None, outcome: str = "ok") -> None:
    t0 = timezone.now() - timedelta(hours=1)
    JobRun.objects.create(
        job=job,
        holder=holder,
        epoch=1,
        started_at=t0 + timedelta(seconds=start),
        finished_at=None if end is None else t0 + timedelta(seconds=end),
        outcome=outcome,
    )


@pytest.mark.django_db
def test_job_overlap_between_holders_is_found_and_sequential_handover_is_not() -> None:
    _run("drift_check", "a", 0, 10)
    _run("drift_check", "b", 10, 20)  # starts exactly when a finished: fine
    _run("cmdb_sync", "a", 0, 10)
    _run("cmdb_sync", "b", 5, 6, outcome="fenced")  # fenced ticks ran nothing
    assert invariants.job_overlaps() == []
    _run("drift_check", "c", 15, None)  # still running, overlaps b
    violations = invariants.job_overlaps()
    assert len(violations) == 1
    assert "drift_check" in violations[0]


@pytest.mark.django_db
def test_tasks_stuck_in_a_non_terminal_state_are_reported() -> None:
    pool = AgentPool(name="p")
    pool.set_new_token()
    pool.save()
    workspace = Workspace.objects.create(name="w", pool=pool)
    done = Task.objects.create(workspace=workspace, type="plan", status="succeeded")
    stuck = Task.objects.create(workspace=workspace, type="plan", status="pending")
    later = timezone.now() + timedelta(seconds=1)
    assert invariants.tasks_not_terminal(created_before=later) == [
        "task %d (workspace %d, plan) still pending since %s" % (stuck.pk, workspace.pk, stuck.created_at)
    ]
    assert done.pk not in [stuck.pk]
    assert invariants.tasks_not_terminal(created_before=timezone.now() - timedelta(hours=1)) == []


@pytest.mark.django_db
def test_advisory_locks_are_counted() -> None:
    before = invariants.advisory_locks_held()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s, %s)", list(workspace_key(1)))
        assert invariants.advisory_locks_held() == before + 1
        cursor.execute("SELECT pg_advisory_unlock(%s, %s)", list(workspace_key(1)))
    assert invariants.advisory_locks_held() == before


@pytest.mark.django_db
def test_advisory_locks_held_by_one_session_and_transaction_through_the_window_are_leaks() -> None:
    """A live leader's tick holds a workspace's transaction lock for as long as its transaction
    (back to back, on a loaded machine): counting every granted lock against a baseline called that
    a leak in chaos seeds 18 and 7. The same lock in the same session and transaction (or on an
    idle session) for the whole window is one (chaos seed 7 left workspace 9's task pending for
    100 s while other workspaces were dispatched, as a lock held on workspace 9 would)."""
    params = connection.get_connection_params()
    with (
        psycopg.connect(**{**params, "application_name": "web-1:web"}, autocommit=True) as leaky,
        psycopg.connect(**{**params, "application_name": "leader-1:leader"}) as stuck,
        psycopg.connect(**{**params, "application_name": "leader-1:leader"}) as ticking,
        psycopg.connect(**{**params, "application_name": "leader-1:leader/job-locks"}, autocommit=True) as jobs,
    ):
        jobs.execute("SELECT pg_advisory_lock(%s, %s)", list(job_key("pending_tasks")))  # the ownership check's
        ticking.execute("SELECT pg_advisory_xact_lock(%s, %s)", list(workspace_key(3)))
        stop = threading.Event()

        def tick() -> None:  # one transaction after another, each with the workspace's lock
            while not stop.wait(0.05):
                ticking.commit()
                ticking.execute("SELECT pg_advisory_xact_lock(%s, %s)", list(workspace_key(3)))

        ticker = threading.Thread(target=tick)
        ticker.start()
        try:
            assert invariants.persistent_advisory_locks(window=1.0) == []
            stuck.execute("SELECT pg_advisory_xact_lock(%s, %s)", list(workspace_key(2)))  # never commits
            leaky.execute("SELECT pg_advisory_lock(%s, %s)", list(workspace_key(1)))
            found = invariants.persistent_advisory_locks(window=1.0)
        finally:
            stop.set()
            ticker.join()
        assert [f.split(" ")[0] for f in found] == ["%s/%s" % workspace_key(1), "%s/%s" % workspace_key(2)], found
        assert "web-1:web" in found[0] and "idle in transaction" in found[1]
        leaky.execute("SELECT pg_advisory_unlock_all()")
        stuck.rollback()
        ticking.rollback()
        assert invariants.persistent_advisory_locks(window=0.5) == []


@pytest.mark.django_db
def test_election_locks_held_by_sessions_that_are_not_the_live_leaders_are_found() -> None:
    """Chaos seed 18 (FAILOVER=1) left standbys' beacons lit on idle sessions: a count above the
    baseline shows that only while the leader also holds its own, this check names them always."""
    Lease.objects.create(name="chaos-lease", holder_identity="leader-1", epoch=5)
    held = [
        ("leader-1:leader/beacon", beacon_key("chaos-lease", 5, "leader-1")),  # the term's own beacon
        ("leader-1:leader/job-locks", job_key("drift_check")),  # a tick of the leader
        ("leader-2:leader/beacon", beacon_key("chaos-lease", 6, "leader-2")),  # a standby's, left lit
        ("leader-1:leader/beacon", beacon_key("chaos-lease", 4, "leader-1")),  # the leader's previous term's
        ("leader-3:leader/job-locks", job_key("cmdb_sync")),  # a job lock of a non-leader
        ("web-1:web", workspace_key(1)),  # not an election lock: counted by advisory_locks_held only
    ]
    sessions = []
    try:
        for name, key in held:
            session = psycopg.connect(
                **{**connection.get_connection_params(), "application_name": name}, autocommit=True
            )
            sessions.append(session)
            session.execute("SELECT pg_advisory_lock(%s, %s)", list(key))
        strays = invariants.election_lock_strays(lease="chaos-lease", live_leaders=["leader-1", "leader-2"])
        assert len(strays) == 3, strays
        assert any("leader-2:leader/beacon" in s for s in strays)
        assert any("leader-3:leader/job-locks" in s for s in strays)
        assert sum("leader-1:leader/beacon" in s for s in strays) == 1  # epoch 4's, not epoch 5's
        # The holder's process is gone: none of its locks is a live leader's.
        assert len(invariants.election_lock_strays(lease="chaos-lease", live_leaders=["leader-2"])) == 5
        for session in sessions[2:5]:
            session.execute("SELECT pg_advisory_unlock_all()")
        assert invariants.election_lock_strays(lease="chaos-lease", live_leaders=["leader-1"]) == []
    finally:
        for session in sessions:
            session.close()


@pytest.mark.django_db
def test_online_agents_must_name_a_live_pod() -> None:
    pool = AgentPool(name="p")
    pool.set_new_token()
    pool.save()
    Agent.objects.create(agent_id="a1", pool=pool, status="online", connected_pod="web-1")
    Agent.objects.create(agent_id="a2", pool=pool, status="offline", connected_pod=None)
    assert invariants.stale_connected_pods(["web-1", "web-2"]) == []
    assert invariants.stale_connected_pods(["web-2"]) == ["agent a1 is online with connected_pod 'web-1'"]


def _log(path: Path, *events: dict[str, object]) -> None:
    with path.open("a") as f:
        for event in events:
            f.write(json.dumps(event) + "\n")


def _ev(event: str, task: int, ws: int, t: float, *, type_: str = "plan", agent: str = "a", pid: int = 1) -> dict:
    return {"event": event, "task_id": task, "workspace_id": ws, "type": type_, "agent_id": agent, "pid": pid, "t": t}


def test_an_apply_started_twice_is_found(tmp_path: Path) -> None:
    _log(tmp_path / "a.jsonl", _ev("start", 1, 1, 0.0, type_="apply"), _ev("start", 2, 1, 5.0), _ev("end", 2, 1, 6.0))
    _log(tmp_path / "b.jsonl", _ev("start", 1, 1, 10.0, type_="apply", agent="b"), _ev("end", 1, 1, 11, agent="b"))
    executions = invariants.read_executions([tmp_path / "a.jsonl", tmp_path / "b.jsonl"])
    assert invariants.applies_executed_twice(executions) == ["apply task 1 executed 2 times (agents b, a)"] or (
        invariants.applies_executed_twice(executions) == ["apply task 1 executed 2 times (agents a, b)"]
    )
    # A re-run plan is allowed (plans are re-queued after agent loss).
    _log(tmp_path / "c.jsonl", _ev("start", 2, 1, 20.0, agent="c"), _ev("end", 2, 1, 21.0, agent="c"))
    executions = invariants.read_executions([tmp_path / "c.jsonl"])
    assert invariants.applies_executed_twice(executions) == []


def test_overlapping_executions_in_one_workspace_are_found_by_agent_clocks(tmp_path: Path) -> None:
    log = tmp_path / "x.jsonl"
    _log(log, _ev("start", 1, 7, 0.0), _ev("end", 1, 7, 5.0), _ev("start", 2, 7, 5.0), _ev("end", 2, 7, 9.0))
    _log(log, _ev("start", 3, 8, 0.0, agent="b", pid=2))  # agent b died mid-run
    cut = tmp_path / "cut.jsonl"
    cut.write_text('{"event": "start", "task_id": 9, "work')  # a line cut short by SIGKILL
    executions = invariants.read_executions([log, cut])
    assert invariants.overlapping_executions(executions, died_at={("b", 2): 4.0}) == []
    _log(log, _ev("start", 4, 8, 3.0, agent="c", pid=3), _ev("end", 4, 8, 6.0, agent="c", pid=3))
    executions = invariants.read_executions([log])
    assert invariants.overlapping_executions(executions, died_at={("b", 2): 4.0}) == [
        "workspace 8: task 4 on c started while task 3 on b was running"
    ]
    # An execution whose agent's death was never recorded runs forever: later ones overlap it.
    assert len(invariants.overlapping_executions(executions, died_at={})) == 1


@pytest.mark.django_db(transaction=True)
def test_a_current_state_going_backwards_is_found_and_moving_forward_is_not() -> None:
    from django.contrib.auth import get_user_model

    from apps.agents.actions import cleanup_agents
    from apps.workspaces import actions, reports, states
    from apps.workspaces.models import StateTransition, StateVersion

    pool = AgentPool(name="chaos-pool")
    pool.set_new_token()
    pool.save()
    workspace = Workspace.objects.create(name="chaos-ws", pool=pool)
    now = timezone.now()
    agent = Agent.objects.create(
        agent_id="a", pool=pool, status="online", connected_pod="web-1", connected_at=now, last_heartbeat=now
    )
    task = actions.enqueue_task(workspace=workspace, type="apply")
    assert reports.accept_task(agent=agent, task_id=task.pk, attempt=1)

    def state(serial: int, lineage: str = "L", **extra: str) -> dict[str, object]:
        return {"version": 4, "serial": serial, "lineage": lineage, "outputs": extra, "resources": []}

    assert invariants.state_regressions(seen={}) == ([], {})
    states.offer_state(task=task, attempt=1, state=state(1), live=True)
    problems, seen = invariants.state_regressions(seen={})
    assert (problems, seen) == ([], {workspace.pk: ("L", 1)})
    states.offer_state(task=task, attempt=1, state=state(2), live=True)
    # A late state of a settled attempt (kept as a conflict) moves nothing: no violation.
    Agent.objects.filter(pk=agent.pk).update(last_heartbeat=now - timedelta(hours=1))
    cleanup_agents()
    states.offer_state(task=task, attempt=1, state=state(1, x="late"), live=False)
    problems, seen = invariants.state_regressions(seen=seen)
    assert (problems, seen) == ([], {workspace.pk: ("L", 2)})
    # An operator's promote may change the lineage; its serial still rises.
    conflict = StateVersion.objects.get(status="conflict")
    conflict_of_other_lineage = StateVersion.objects.create(
        workspace=workspace, serial=99, lineage="M", terraform_serial=1, state=state(1, "M"), status="conflict"
    )
    states.do_promote(
        workspace_id=workspace.pk,
        version_id=conflict_of_other_lineage.pk,
        actor=get_user_model().objects.create_user("op"),
    )
    states.do_discard(workspace_id=workspace.pk, version_id=conflict.pk, actor=None)
    problems, seen = invariants.state_regressions(seen=seen)
    assert (problems, seen) == ([], {workspace.pk: ("M", 3)})

    # What the invariant exists for: the pointer set back to an older row, as the old code did.
    older = StateVersion.objects.get(workspace=workspace, terraform_serial=1, lineage="L", status="accepted")
    Workspace.objects.filter(pk=workspace.pk).update(current_state=older)
    problems, _ = invariants.state_regressions(seen=seen)
    assert "workspace %d: current state went from M/3 to L/1" % workspace.pk in problems
    assert any("is not where the last recorded move left it" in p for p in problems)
    # A recorded Terraform move that lowers the serial or switches lineage is found in the history.
    Workspace.objects.filter(pk=workspace.pk).update(current_state=workspace.state_versions.order_by("-serial")[0])
    StateTransition.objects.create(
        workspace=workspace,
        kind="terraform",
        from_serial=3,
        from_lineage="M",
        to_serial=2,
        to_lineage="M",
        to_version=workspace.state_versions.order_by("-serial")[0],
    )
    problems, _ = invariants.state_regressions(seen={})
    assert len(problems) == 1 and "goes backwards or skips the pointer" in problems[0], problems


def test_the_summary_states_how_many_leader_crashes_were_taken_over_within_one_second() -> None:
    from chaos.runner import CRASH, Totals, crash_failover_line

    totals = Totals()
    assert "no round killed the leader alone" in crash_failover_line(totals)
    totals.failover[CRASH].extend([0.2, 0.3, 0.4, 2.5])
    totals.failover["sigkill:standby"].append(9.0)  # not a leader crash
    line = crash_failover_line(totals)
    assert line.startswith("crash failover within 1 s: 3/4 (75%)")
    assert "p99 2.4" in line

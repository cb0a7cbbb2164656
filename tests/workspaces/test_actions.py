"""The task queue's actions against real PostgreSQL (no sockets: agents are rows here)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from apps.agents.actions import cleanup_agents
from apps.agents.models import Agent
from apps.coordination.lockkeys import workspace_key
from apps.workspaces import actions, reports
from apps.workspaces.jobs import kick_pending
from apps.workspaces.models import StateVersion, Task, Workspace
from tests.agents.fixtures import Pool

# Real commits: the queue acts in on_commit callbacks (kicks, dispatch messages).
pytestmark = pytest.mark.django_db(transaction=True)


def online_agent(pool: Pool, agent_id: str, capacity: int = 1) -> Agent:
    now = timezone.now()
    return Agent.objects.create(
        agent_id=agent_id,
        pool=pool.pool,
        status=Agent.Status.ONLINE,
        connected_pod="web-1",
        connected_at=now,
        last_heartbeat=now,
        capacity=capacity,
    )


def make_workspace(pool: Pool, name: str) -> Workspace:
    return Workspace.objects.create(name=name, pool=pool.pool)


def run(task: Task, agent: Agent, status: str = "succeeded", **report: Any) -> None:
    assert reports.accept_task(agent=agent, task_id=task.pk, attempt=task.attempt)
    outcome = reports.record_result(
        agent=agent, task_id=task.pk, attempt=task.attempt, report={"status": status, **report}
    )
    assert outcome is reports.Outcome.OK


def test_enqueue_dispatches_to_an_online_agent_and_holds_the_next_task(agent_pool: Pool, workspace: Workspace) -> None:
    agent = online_agent(agent_pool, "a1", capacity=5)
    first = actions.enqueue_task(workspace=workspace, type="plan")
    second = actions.enqueue_task(workspace=workspace, type="apply")
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, first.agent_id) == ("dispatched", agent.pk)
    assert second.status == "pending"  # one active task per workspace, even with free capacity
    run(first, agent)
    second.refresh_from_db()
    assert (second.status, second.agent_id) == ("dispatched", agent.pk)


def test_nothing_is_dispatched_without_an_agent_a_connection_or_when_locked(
    agent_pool: Pool, workspace: Workspace
) -> None:
    task = actions.enqueue_task(workspace=workspace, type="plan")
    assert Task.objects.get(pk=task.pk).status == "pending"
    agent = online_agent(agent_pool, "a1")
    Agent.objects.filter(pk=agent.pk).update(connected_pod=None)
    assert actions.schedule_workspace(workspace.pk) is None
    Agent.objects.filter(pk=agent.pk).update(connected_pod="web-1", last_heartbeat=timezone.now() - timedelta(hours=1))
    assert actions.schedule_workspace(workspace.pk) is None
    Agent.objects.filter(pk=agent.pk).update(last_heartbeat=timezone.now())
    Workspace.objects.filter(pk=workspace.pk).update(locked=True)
    assert actions.schedule_workspace(workspace.pk) is None
    Workspace.objects.filter(pk=workspace.pk).update(locked=False)
    assert actions.schedule_workspace(workspace.pk) == task


def test_an_agent_gets_no_more_tasks_than_its_capacity_and_the_least_busy_is_chosen(agent_pool: Pool) -> None:
    busy = online_agent(agent_pool, "busy", capacity=2)
    spaces = [make_workspace(agent_pool, "w%d" % i) for i in range(4)]
    tasks = [actions.enqueue_task(workspace=ws, type="plan") for ws in spaces[:2]]
    assert {Task.objects.get(pk=t.pk).agent_id for t in tasks} == {busy.pk}
    third = actions.enqueue_task(workspace=spaces[2], type="plan")
    assert Task.objects.get(pk=third.pk).status == "pending"
    idle = online_agent(agent_pool, "idle", capacity=2)
    assert actions.schedule_workspace(spaces[2].pk) == third
    assert Task.objects.get(pk=third.pk).agent_id == idle.pk


def test_the_workspace_whose_task_has_waited_longest_is_dispatched_first(agent_pool: Pool) -> None:
    """Chaos (FAILOVER=1, seeds 18 and 7): with the agents saturated by drift checks every minute,
    tasks of the highest-numbered workspaces stayed pending for over 60 s, also after the load
    stopped, while lower-numbered workspaces got a slot every time one freed: kicks went in
    workspace-id order. A freed slot goes to the oldest waiting task."""
    spaces = [make_workspace(agent_pool, "w%d" % i) for i in range(3)]
    waiting = actions.enqueue_task(workspace=spaces[2], type="plan")  # no agent yet: it waits
    newer = [actions.enqueue_task(workspace=ws, type="plan") for ws in spaces[:2]]
    assert actions.workspaces_to_kick() == [spaces[2].pk, spaces[0].pk, spaces[1].pk]
    online_agent(agent_pool, "only", capacity=1)
    assert kick_pending() == 1
    assert Task.objects.get(pk=waiting.pk).status == "dispatched"
    assert {Task.objects.get(pk=t.pk).status for t in newer} == {"pending"}


def test_scheduling_is_skipped_while_another_session_holds_the_workspace_lock(
    agent_pool: Pool, workspace: Workspace
) -> None:
    online_agent(agent_pool, "a1")
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    with psycopg.connect(**params, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s, %s)", workspace_key(workspace.pk))
        task = actions.enqueue_task(workspace=workspace, type="plan")
        assert Task.objects.get(pk=task.pk).status == "pending"
        other.execute("SELECT pg_advisory_unlock(%s, %s)", workspace_key(workspace.pk))
    # The kick was lost to the lock holder; pending_tasks finds the workspace and kicks it.
    assert actions.workspaces_to_kick() == [workspace.pk]
    assert actions.schedule_workspace(workspace.pk) == task


def test_a_lost_agents_plan_is_requeued_once_then_errored(agent_pool: Pool, workspace: Workspace) -> None:
    agent = online_agent(agent_pool, "a1")
    task = actions.enqueue_task(workspace=workspace, type="plan")
    assert reports.accept_task(agent=agent, task_id=task.pk, attempt=1)
    Agent.objects.filter(pk=agent.pk).update(last_heartbeat=timezone.now() - timedelta(hours=1))
    assert cleanup_agents() == (1, 0)
    task.refresh_from_db()
    assert (task.status, task.attempt, task.agent_id) == ("pending", 2, None)
    other = online_agent(agent_pool, "a2")
    assert actions.schedule_workspace(workspace.pk) == task
    assert reports.accept_task(agent=other, task_id=task.pk, attempt=2)
    # A late report of the first attempt (the old agent came back) changes nothing.
    assert reports.record_result(agent=agent, task_id=task.pk, attempt=1, report={"status": "failed"}) is (
        reports.Outcome.NOT_OWNED
    )
    Agent.objects.filter(pk=other.pk).update(last_heartbeat=timezone.now() - timedelta(hours=1))
    cleanup_agents()
    task.refresh_from_db()
    assert (task.status, task.error) == ("errored", "agent lost")


def test_a_lost_agents_apply_is_errored_and_never_rerun(agent_pool: Pool, workspace: Workspace) -> None:
    agent = online_agent(agent_pool, "a1")
    task = actions.enqueue_task(workspace=workspace, type="apply")
    assert reports.accept_task(agent=agent, task_id=task.pk, attempt=1)
    online_agent(agent_pool, "a2")
    Agent.objects.filter(pk=agent.pk).update(last_heartbeat=timezone.now() - timedelta(hours=1))
    cleanup_agents()
    task.refresh_from_db()
    assert (task.status, task.error, task.attempt) == ("errored", "agent lost", 1)
    assert Agent.objects.get(pk=agent.pk).connected_pod is None


def test_unaccepted_dispatches_go_back_to_the_queue(agent_pool: Pool, workspace: Workspace) -> None:
    agent = online_agent(agent_pool, "a1")
    task = actions.enqueue_task(workspace=workspace, type="plan")
    assert actions.requeue_unaccepted(older_than=timedelta(seconds=30)) == 0
    Task.objects.filter(pk=task.pk).update(dispatched_at=timezone.now() - timedelta(minutes=1))
    Agent.objects.filter(pk=agent.pk).update(capacity=0)  # so the kick does not re-dispatch at once
    assert actions.requeue_unaccepted(older_than=timedelta(seconds=30)) == 1
    task.refresh_from_db()
    assert (task.status, task.attempt, task.agent_id) == ("pending", 1, None)
    assert not reports.accept_task(agent=agent, task_id=task.pk, attempt=1)


def test_running_tasks_past_their_timeout_are_timed_out(agent_pool: Pool, workspace: Workspace) -> None:
    agent = online_agent(agent_pool, "a1")
    task = actions.enqueue_task(workspace=workspace, type="apply", timeout_seconds=60)
    reports.accept_task(agent=agent, task_id=task.pk, attempt=1)
    assert actions.time_out_tasks() == 0
    Task.objects.filter(pk=task.pk).update(started_at=timezone.now() - timedelta(seconds=61))
    assert actions.time_out_tasks() == 1
    task.refresh_from_db()
    assert task.status == "timed_out"
    # The agent's late report does not overturn the verdict; its state is kept, as a conflict.
    state = {"version": 4, "lineage": "l", "serial": 1}
    outcome = reports.record_result(
        agent=agent, task_id=task.pk, attempt=1, report={"status": "succeeded", "state": state}
    )
    assert outcome is reports.Outcome.DUPLICATE
    assert Task.objects.get(pk=task.pk).status == "timed_out"
    kept = StateVersion.objects.get(workspace=workspace)
    assert (kept.state, kept.status) == (state, "conflict")
    workspace.refresh_from_db()
    assert workspace.current_state is None


def test_cancel_pending_is_immediate_and_running_ends_cancelled(agent_pool: Pool, workspace: Workspace) -> None:
    agent = online_agent(agent_pool, "a1")
    running = actions.enqueue_task(workspace=workspace, type="plan")
    queued = actions.enqueue_task(workspace=workspace, type="plan")
    assert actions.cancel_task(queued.pk).status == "cancelled"
    reports.accept_task(agent=agent, task_id=running.pk, attempt=1)
    assert actions.cancel_task(running.pk).status == "running"
    reports.record_result(agent=agent, task_id=running.pk, attempt=1, report={"status": "failed", "exit_code": 130})
    assert Task.objects.get(pk=running.pk).status == "cancelled"


def test_results_store_state_serials_and_drift_verdicts(agent_pool: Pool, workspace: Workspace) -> None:
    agent = online_agent(agent_pool, "a1")
    for serial in (1, 2):
        task = actions.enqueue_task(workspace=workspace, type="apply")
        run(task, agent, state={"version": 4, "lineage": "L", "serial": serial}, exit_code=0)
    assert list(StateVersion.objects.values_list("serial", flat=True).order_by("serial")) == [1, 2]
    workspace.refresh_from_db()
    assert workspace.current_state is not None and workspace.current_state.terraform_serial == 2
    drift = actions.enqueue_task(workspace=workspace, type="drift_check")
    run(drift, agent, exit_code=2, drifted=True)
    workspace.refresh_from_db()
    assert workspace.drift_status == "drifted"
    drift = actions.enqueue_task(workspace=workspace, type="drift_check")
    run(drift, agent, exit_code=0, drifted=False)
    workspace.refresh_from_db()
    assert workspace.drift_status == "in_sync"
    drift = actions.enqueue_task(workspace=workspace, type="drift_check")
    run(drift, agent, status="failed", exit_code=1)
    workspace.refresh_from_db()
    assert workspace.drift_status == "error"


def test_due_drift_checks_are_queued_once_for_idle_workspaces(agent_pool: Pool, workspace: Workspace) -> None:
    busy = make_workspace(agent_pool, "busy")
    Workspace.objects.filter(pk__in=[workspace.pk, busy.pk]).update(drift_check_enabled=True)
    actions.enqueue_task(workspace=busy, type="plan")
    assert actions.enqueue_due_drift_checks() == 1
    assert actions.enqueue_due_drift_checks() == 0  # next check scheduled an interval away
    assert Task.objects.filter(workspace=workspace, type="drift_check").count() == 1
    workspace.refresh_from_db()
    assert workspace.drift_next_check_at is not None
    assert workspace.drift_next_check_at > timezone.now() + timedelta(minutes=59)


def test_long_offline_agents_without_tasks_are_pruned(agent_pool: Pool, settings: Any) -> None:
    settings.AGENT_PRUNE_AFTER = 3600
    old = online_agent(agent_pool, "old")
    Agent.objects.filter(pk=old.pk).update(
        status=Agent.Status.OFFLINE, connected_pod=None, last_heartbeat=timezone.now() - timedelta(hours=2)
    )
    online_agent(agent_pool, "fresh")
    assert cleanup_agents() == (0, 1)
    assert list(Agent.objects.values_list("agent_id", flat=True)) == ["fresh"]


def test_log_chunks_after_the_task_settled_are_refused_but_replays_acknowledged(
    agent_pool: Pool, workspace: Workspace
) -> None:
    agent = online_agent(agent_pool, "a1")
    task = actions.enqueue_task(workspace=workspace, type="plan")
    assert reports.accept_task(agent=agent, task_id=task.pk, attempt=1)
    ref: dict[str, Any] = {"agent": agent, "task_id": task.pk, "attempt": 1}
    assert reports.append_log(**ref, seq=0, text="first") is reports.Outcome.OK
    assert reports.record_result(**ref, report={"status": "succeeded"}) is reports.Outcome.OK
    # A reconnecting agent re-sends what it has not had acknowledged: same answer as before.
    assert reports.append_log(**ref, seq=0, text="first") is reports.Outcome.DUPLICATE
    assert reports.append_log(**ref, seq=1, text="late") is reports.Outcome.NOT_OWNED
    assert list(task.log_chunks.values_list("seq", flat=True)) == [0]


@pytest.mark.django_db(transaction=True)
def test_a_dispatcher_paused_inside_its_transaction_lets_go_of_the_workspace_lock(
    agent_pool: Pool, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    """A process stopped (SIGSTOP, a long GC pause) while it holds a workspace's queue lock must not
    keep that workspace from being dispatched for as long as it is stopped: the dispatch transaction
    is bounded by the server (idle_in_transaction_session_timeout, SET LOCAL), which ends it."""
    import threading

    from django.db import DatabaseError, connections

    settings.JOB_STATEMENT_TIMEOUT = 1.0
    workspace = make_workspace(agent_pool, "paused")
    Task.objects.create(workspace=workspace, type=Task.Type.PLAN)
    paused, resumed = threading.Event(), threading.Event()
    outcome: list[object] = []

    def stopped_mid_transaction(pool_id: int) -> None:
        paused.set()
        resumed.wait(30)
        return None

    monkeypatch.setattr(actions, "pick_agent", stopped_mid_transaction)

    def dispatcher() -> None:
        try:
            outcome.append(actions.schedule_workspace(workspace.pk))
        except DatabaseError as exc:  # the server ended the session while it was paused
            outcome.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=dispatcher)
    thread.start()
    try:
        assert paused.wait(10)
        classid, objid = (k & 0xFFFFFFFF for k in workspace_key(workspace.pk))
        held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND objid = %s AND granted"
        with connection.cursor() as cursor:
            cursor.execute(held, [classid, objid])
            assert cursor.fetchone() == (1,)
            deadline = timezone.now() + timedelta(seconds=6)
            while timezone.now() < deadline:
                cursor.execute(held, [classid, objid])
                if cursor.fetchone() == (0,):
                    break
            else:
                raise AssertionError("the paused dispatcher still holds the workspace lock")
    finally:
        resumed.set()
        thread.join(30)
    # Resumed, it finds its session ended: nothing was dispatched by it, and the next kick does.
    assert len(outcome) == 1 and isinstance(outcome[0], DatabaseError), outcome
    assert Task.objects.get(workspace=workspace).status == Task.Status.PENDING

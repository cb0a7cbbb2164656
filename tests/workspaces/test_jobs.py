"""The queue's jobs, called directly with a Tick of a current (or deposed) term."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.agents.jobs import agent_cleanup
from apps.agents.models import Agent
from apps.coordination.fencing import StaleEpoch, Tick, raise_epoch
from apps.coordination.registry import recovery_passes, registered_jobs
from apps.workspaces import actions, reports
from apps.workspaces.jobs import drift_check, pending_tasks, recover_tasks, task_timeout
from apps.workspaces.models import Task, Workspace
from tests.agents.fixtures import Pool
from tests.workspaces.test_actions import online_agent

pytestmark = pytest.mark.django_db(transaction=True)


def tick(job: str, epoch: int = 1) -> Tick:
    return Tick(job=job, holder="leader-1", lease="test-lease", epoch=epoch)


@pytest.fixture
def term(db: None) -> None:
    assert raise_epoch(name="test-lease", epoch=1, holder="leader-1")


def test_the_jobs_and_the_recovery_pass_are_registered() -> None:
    names = {spec.name for spec in registered_jobs()}
    assert {"pending_tasks", "task_timeout", "drift_check", "agent_cleanup"} <= names
    assert recover_tasks in recovery_passes()


def test_pending_tasks_redispatches_a_lost_dispatch_and_kicks_lost_kicks(
    term: None, agent_pool: Pool, workspace: Workspace, settings: object
) -> None:
    agent = online_agent(agent_pool, "a1")
    task = actions.enqueue_task(workspace=workspace, type="plan")
    Task.objects.filter(pk=task.pk).update(dispatched_at=timezone.now() - timedelta(minutes=5))
    pending_tasks(tick("pending_tasks"))
    task.refresh_from_db()
    # Back to pending, then kicked and dispatched again (to the same, only, agent) with a fresh clock.
    assert task.status == "dispatched"
    assert task.dispatched_at is not None
    assert task.dispatched_at > timezone.now() - timedelta(seconds=30)
    # A task queued while no agent could take it is kicked once one can.
    other_ws = Workspace.objects.create(name="other", pool=agent_pool.pool)
    waiting = actions.enqueue_task(workspace=other_ws, type="plan")
    assert Task.objects.get(pk=waiting.pk).status == "pending"
    Agent.objects.filter(pk=agent.pk).update(capacity=2)
    pending_tasks(tick("pending_tasks"))
    assert Task.objects.get(pk=waiting.pk).status == "dispatched"


def test_a_deposed_leaders_tick_writes_nothing(term: None, agent_pool: Pool, workspace: Workspace) -> None:
    agent = online_agent(agent_pool, "a1")
    task = actions.enqueue_task(workspace=workspace, type="apply", timeout_seconds=1)
    reports.accept_task(agent=agent, task_id=task.pk, attempt=1)
    Task.objects.filter(pk=task.pk).update(started_at=timezone.now() - timedelta(minutes=1))
    assert raise_epoch(name="test-lease", epoch=2, holder="leader-2")
    with pytest.raises(StaleEpoch):
        task_timeout(tick("task_timeout", epoch=1))
    assert Task.objects.get(pk=task.pk).status == "running"
    task_timeout(tick("task_timeout", epoch=2))
    assert Task.objects.get(pk=task.pk).status == "timed_out"


def test_agent_cleanup_requeues_plans_and_errors_applies(term: None, agent_pool: Pool) -> None:
    lost = online_agent(agent_pool, "lost", capacity=2)
    plan_ws = Workspace.objects.create(name="p", pool=agent_pool.pool)
    apply_ws = Workspace.objects.create(name="a", pool=agent_pool.pool)
    plan = actions.enqueue_task(workspace=plan_ws, type="plan")
    apply = actions.enqueue_task(workspace=apply_ws, type="apply")
    for task in (plan, apply):
        assert reports.accept_task(agent=lost, task_id=task.pk, attempt=1)
    Agent.objects.filter(pk=lost.pk).update(last_heartbeat=timezone.now() - timedelta(hours=1))
    survivor = online_agent(agent_pool, "survivor")
    agent_cleanup(tick("agent_cleanup"))
    plan.refresh_from_db()
    apply.refresh_from_db()
    assert (plan.status, plan.attempt, plan.agent_id) == ("dispatched", 2, survivor.pk)
    assert (apply.status, apply.error) == ("errored", "agent lost")
    assert Agent.objects.get(pk=lost.pk).status == "offline"


def test_drift_check_job_queues_due_checks(term: None, agent_pool: Pool, workspace: Workspace) -> None:
    Workspace.objects.filter(pk=workspace.pk).update(drift_check_enabled=True)
    drift_check(tick("drift_check"))
    assert list(Task.objects.values_list("type", flat=True)) == ["drift_check"]


def test_recovery_pass_settles_tasks_of_agents_that_are_gone(term: None, agent_pool: Pool) -> None:
    gone = online_agent(agent_pool, "gone", capacity=3)
    spaces = [Workspace.objects.create(name="w%d" % i, pool=agent_pool.pool) for i in range(3)]
    plan, apply, unaccepted = (
        actions.enqueue_task(workspace=spaces[0], type="plan"),
        actions.enqueue_task(workspace=spaces[1], type="apply"),
        actions.enqueue_task(workspace=spaces[2], type="drift_check"),
    )
    for task in (plan, apply):
        reports.accept_task(agent=gone, task_id=task.pk, attempt=1)
    Agent.objects.filter(pk=gone.pk).update(last_heartbeat=timezone.now() - timedelta(hours=1))
    recover_tasks(tick("recovery"))
    statuses = dict(Task.objects.values_list("pk", "status"))
    assert statuses == {plan.pk: "pending", apply.pk: "errored", unaccepted.pk: "pending"}
    assert Task.objects.get(pk=plan.pk).attempt == 2
    assert Task.objects.get(pk=unaccepted.pk).attempt == 1


def test_state_lock_retention_deletes_old_released_locks_only(
    term: None, agent_pool: Pool, workspace: Workspace, settings: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from apps.workspaces import jobs
    from apps.workspaces.jobs import state_lock_retention
    from apps.workspaces.models import StateLock

    settings.STATE_LOCK_RETENTION_DAYS = 30  # type: ignore[attr-defined]
    monkeypatch.setattr(jobs, "STATE_LOCK_BATCH", 2)  # several fenced batches
    task = actions.enqueue_task(workspace=workspace, type="plan")
    old = timezone.now() - timedelta(days=31)
    for n in range(5):
        StateLock.objects.create(workspace=workspace, lock_id="old-%d" % n, task=task, attempt=1, released_at=old)
    StateLock.objects.create(workspace=workspace, lock_id="recent", task=task, attempt=1, released_at=timezone.now())
    StateLock.objects.create(workspace=workspace, lock_id="held", task=task, attempt=1)
    StateLock.objects.filter(lock_id="held").update(acquired_at=old)
    with pytest.raises(StaleEpoch):
        state_lock_retention(tick("state_lock_retention", epoch=0))
    assert StateLock.objects.count() == 7  # a deposed leader deletes nothing
    state_lock_retention(tick("state_lock_retention"))
    assert sorted(StateLock.objects.values_list("lock_id", flat=True)) == ["held", "recent"]

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from apps.agents.models import AgentPool
from apps.workspaces.models import Task, Workspace

pytestmark = pytest.mark.django_db


@pytest.fixture
def workspace() -> Workspace:
    pool = AgentPool(name="p")
    pool.set_new_token()
    pool.save()
    return Workspace.objects.create(name="ws", pool=pool)


@pytest.mark.parametrize("first", ["dispatched", "running"])
@pytest.mark.parametrize("second", ["dispatched", "running"])
def test_database_refuses_a_second_active_task_in_a_workspace(workspace: Workspace, first: str, second: str) -> None:
    Task.objects.create(workspace=workspace, type="plan", status=first)
    with pytest.raises(IntegrityError, match="one_active_task_per_workspace"), transaction.atomic():
        Task.objects.create(workspace=workspace, type="plan", status=second)


def test_database_refuses_activating_a_pending_task_beside_an_active_one(workspace: Workspace) -> None:
    Task.objects.create(workspace=workspace, type="apply", status="running")
    queued = Task.objects.create(workspace=workspace, type="plan", status="pending")
    with pytest.raises(IntegrityError), transaction.atomic():
        Task.objects.filter(pk=queued.pk).update(status="dispatched")


def test_many_pending_and_finished_tasks_may_sit_beside_one_active_task(workspace: Workspace) -> None:
    Task.objects.create(workspace=workspace, type="plan", status="running")
    for status in ("pending", "pending", "succeeded", "failed", "errored", "cancelled", "timed_out"):
        Task.objects.create(workspace=workspace, type="plan", status=status)
    assert workspace.tasks.count() == 8


def test_active_tasks_of_different_workspaces_do_not_conflict(workspace: Workspace) -> None:
    other = Workspace.objects.create(name="other", pool=workspace.pool)
    Task.objects.create(workspace=workspace, type="plan", status="running")
    Task.objects.create(workspace=other, type="apply", status="running")
    assert Task.objects.filter(status="running").count() == 2


def test_saving_a_workspace_loaded_before_a_state_write_does_not_move_its_pointer_back(workspace: Workspace) -> None:
    """An API PATCH or an admin edit saves the whole row it loaded; a state write that committed
    meanwhile (pointer moved, state_version_retention scheduled) must survive it."""
    from datetime import timedelta

    from django.utils import timezone

    from apps.workspaces import states
    from apps.workspaces.serializers import WorkspaceSerializer
    from tests.workspaces.test_states import tfstate

    task = Task.objects.create(workspace=workspace, type="apply", status="running")
    first = states.offer_state(task=task, attempt=1, state=tfstate(1), live=True).version
    stale = Workspace.objects.get(pk=workspace.pk)  # what the PATCH loaded
    second = states.offer_state(task=task, attempt=1, state=tfstate(2), live=True).version
    due = timezone.now() + timedelta(days=3)
    Workspace.objects.filter(pk=workspace.pk).update(state_prune_at=due, cmdb_synced_state_id=7)
    assert first is not None and second is not None and stale.current_state_id == first.pk
    edit = WorkspaceSerializer(instance=stale, data={"description": "edited"}, partial=True)
    assert edit.is_valid(), edit.errors
    edit.save()
    stale.lock_reason = "admin edit"
    stale.save()
    fresh = Workspace.objects.get(pk=workspace.pk)
    assert (fresh.description, fresh.lock_reason) == ("edited", "admin edit")
    assert fresh.current_state_id == second.pk
    assert (fresh.state_prune_at, fresh.cmdb_synced_state_id) == (due, 7)

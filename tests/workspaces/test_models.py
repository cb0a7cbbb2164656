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

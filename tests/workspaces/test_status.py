"""The task queue's clusterstatus section: active tasks exactly, finished ones over a day."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.coordination.status import cluster_status
from apps.workspaces.models import Task, Workspace

pytestmark = pytest.mark.django_db


def test_tasks_section_counts_active_tasks_and_only_recently_finished_ones(workspace: Workspace) -> None:
    Task.objects.create(workspace=workspace, type="plan", status="pending")
    Task.objects.create(workspace=workspace, type="plan", status="running")
    Task.objects.create(workspace=workspace, type="plan", status="succeeded")
    old = Task.objects.create(workspace=workspace, type="plan", status="failed")
    Task.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=2))
    assert cluster_status()["tasks"] == {"active": {"pending": 1, "running": 1}, "finished_last_24h": {"succeeded": 1}}

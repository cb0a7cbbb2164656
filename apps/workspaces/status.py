"""The task queue's section of ``clusterstatus`` (apps/coordination/sections.py).

Active tasks (pending, dispatched, running) are counted exactly; finished ones only over the last
``FINISHED_WINDOW``, each status one range of the ``(status, created_at)`` index, so the section
costs what a day of work costs, not what the whole history does.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import Count
from django.utils import timezone

from apps.coordination.sections import status_section
from apps.workspaces.models import Task

FINISHED_WINDOW = timedelta(hours=24)


@status_section(name="tasks", title="Tasks", order=20)
def tasks() -> dict[str, Any]:
    active = (
        Task.objects.filter(status__in=[Task.Status.PENDING, *Task.ACTIVE])
        .values("status")
        .annotate(count=Count("id"))
        .order_by("status")
    )
    since = timezone.now() - FINISHED_WINDOW
    finished = (
        Task.objects.filter(status__in=Task.TERMINAL, created_at__gte=since)
        .values("status")
        .annotate(count=Count("id"))
        .order_by("status")
    )
    return {
        "active": {row["status"]: row["count"] for row in active},
        "finished_last_24h": {row["status"]: row["count"] for row in finished},
    }


@tasks.describe
def _tasks_text(data: dict[str, Any]) -> list[str]:
    return [
        "Tasks active: %s" % (data["active"] or "{}"),
        "Tasks finished in the last 24 h (by creation): %s" % (data["finished_last_24h"] or "{}"),
    ]

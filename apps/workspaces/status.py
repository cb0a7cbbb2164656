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
from apps.workspaces.models import StateVersion, Task

FINISHED_WINDOW = timedelta(hours=24)
CONFLICTS_SHOWN = 50


@status_section(name="tasks", title="Tasks", order=20)
def tasks() -> dict[str, Any]:
    active = Task.objects.unfinished().values("status").annotate(count=Count("id")).order_by("status")
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


@status_section(name="state_conflicts", title="State conflicts", order=30)
def state_conflicts() -> list[dict[str, Any]]:
    """Unresolved conflict versions (their workspaces' applies are held), oldest first; the partial
    index ``state_version_conflicts`` holds only these rows."""
    rows = (
        StateVersion.objects.filter(status=StateVersion.Status.CONFLICT)
        .order_by("created_at")
        .values("id", "workspace__name", "serial", "terraform_serial", "lineage", "task_id", "attempt", "created_at")
    )[:CONFLICTS_SHOWN]
    return [
        {
            "workspace": r["workspace__name"],
            "version": r["id"],
            "serial": r["serial"],
            "terraform_serial": r["terraform_serial"],
            "lineage": r["lineage"],
            "task": r["task_id"],
            "attempt": r["attempt"],
            "since": r["created_at"].isoformat(),
        }
        for r in rows
    ]


@state_conflicts.describe
def _conflicts_text(data: list[dict[str, Any]]) -> list[str]:
    lines = ["State conflicts (applies held until promoted or discarded): %s" % ("none" if not data else len(data))]
    lines += [
        "  workspace %s: version %s (serial %s, lineage %s) from task %s attempt %s, since %s"
        % (c["workspace"], c["version"], c["terraform_serial"], c["lineage"], c["task"], c["attempt"], c["since"])
        for c in data
    ]
    return lines

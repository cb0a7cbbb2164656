"""The agents' section of ``clusterstatus`` (apps/coordination/sections.py): agents per web pod."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Q

from apps.agents.models import Agent
from apps.coordination.sections import status_section


@status_section(name="agents", title="Agents", order=10)
def agents() -> dict[str, Any]:
    """Connected agents per web replica and how many are not connected (bounded by the fleet)."""
    rows = (
        Agent.objects.exclude(Q(connected_pod__isnull=True) | Q(connected_pod=""))
        .values("connected_pod")
        .annotate(count=Count("id"))
        .order_by("connected_pod")
    )
    return {
        "per_pod": {row["connected_pod"]: row["count"] for row in rows},
        "offline": Agent.objects.filter(Q(connected_pod__isnull=True) | Q(connected_pod="")).count(),
    }


@agents.describe
def _agents_text(data: dict[str, Any]) -> list[str]:
    return ["Agents per pod: %s (offline: %d)" % (data["per_pod"] or "{}", data["offline"])]

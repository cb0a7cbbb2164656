from __future__ import annotations

from rest_framework import viewsets

from apps.access.drf import PLATFORM_ADMIN, AccessRule
from apps.agents.models import Agent
from apps.agents.serializers import AgentSerializer


class AgentViewSet(viewsets.ReadOnlyModelViewSet[Agent]):
    """Agents and the web replica each one is connected to (read-only: agents register themselves)."""

    queryset = Agent.objects.select_related("pool").order_by("agent_id")
    serializer_class = AgentSerializer
    access_rules: dict[str, AccessRule] = {"list": PLATFORM_ADMIN, "retrieve": PLATFORM_ADMIN}

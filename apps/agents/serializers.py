from __future__ import annotations

from typing import Any

from rest_framework import serializers

from apps.agents.models import Agent


class AgentSerializer(serializers.ModelSerializer[Agent]):
    pool: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="name", read_only=True)
    registered = serializers.BooleanField(read_only=True, help_text="The agent holds a credential of its own.")

    class Meta:
        model = Agent
        fields = [
            "id",
            "agent_id",
            "name",
            "pool",
            "status",
            "last_heartbeat",
            "connected_pod",
            "connected_at",
            "version",
            "capacity",
            "labels",
            "registered",
            "registered_at",
            "created_at",
        ]
        read_only_fields = fields

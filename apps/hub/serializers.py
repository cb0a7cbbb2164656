from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.access.serializers import VisibleWorkspaceField
from apps.hub.actions import current_editor, request_expires_at
from apps.hub.drafts import draft_size
from apps.hub.models import Draft, EditingSession, TakeoverRequest


class OpenSessionSerializer(serializers.Serializer):
    workspace = VisibleWorkspaceField()
    resource_address = serializers.CharField(max_length=1000)


class EditorSerializer(serializers.Serializer):
    user_id = serializers.IntegerField()
    username = serializers.CharField()
    since = serializers.DateTimeField()


class EditingSessionSerializer(serializers.ModelSerializer):
    editor = serializers.SerializerMethodField()

    class Meta:
        model = EditingSession
        fields = [
            "session_id",
            "workspace",
            "resource_address",
            "mode",
            "active",
            "started_at",
            "last_seen_at",
            "ended_at",
            "ended_reason",
            "editor",
        ]
        read_only_fields = fields

    @extend_schema_field(EditorSerializer(allow_null=True))
    def get_editor(self, session: EditingSession) -> dict[str, Any] | None:
        """Who edits the resource, for a waiting session (whom a takeover request would ask)."""
        if not session.active or session.mode == EditingSession.Mode.EDITOR:
            return None
        editor = current_editor(session)
        if editor is None:
            return None
        return {"user_id": editor.user_id, "username": editor.user.get_username(), "since": editor.started_at}


class TakeoverCreateSerializer(serializers.Serializer):
    session_id = serializers.UUIDField(help_text="the caller's own waiting session on the resource")
    message = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class TakeoverRespondSerializer(serializers.Serializer):
    approve = serializers.BooleanField()


class TakeoverRequestSerializer(serializers.ModelSerializer):
    session_id = serializers.UUIDField(source="session.session_id", read_only=True)
    workspace = serializers.IntegerField(source="session.workspace_id", read_only=True)
    resource_address = serializers.CharField(source="session.resource_address", read_only=True)
    requester = serializers.CharField(source="requester.get_username", read_only=True)
    expires_at = serializers.SerializerMethodField()

    class Meta:
        model = TakeoverRequest
        fields = [
            "id",
            "status",
            "session_id",
            "workspace",
            "resource_address",
            "requester",
            "requester_session_id",
            "message",
            "created_at",
            "responded_at",
            "expires_at",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_expires_at(self, request: TakeoverRequest) -> str | None:
        if request.status != TakeoverRequest.Status.PENDING:
            return None
        return request_expires_at(request).isoformat()


class DraftKeySerializer(serializers.Serializer):
    workspace = VisibleWorkspaceField()
    resource_address = serializers.CharField(max_length=1000)


class DraftSaveSerializer(DraftKeySerializer):
    content = serializers.JSONField()

    def validate_content(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be a JSON object")
        if draft_size(value) > settings.HUB_DRAFT_MAX_BYTES:
            raise serializers.ValidationError("larger than %d bytes" % settings.HUB_DRAFT_MAX_BYTES)
        return value


class DraftSerializer(serializers.ModelSerializer):
    class Meta:
        model = Draft
        fields = ["workspace", "resource_address", "content", "updated_at", "expires_at"]
        read_only_fields = fields

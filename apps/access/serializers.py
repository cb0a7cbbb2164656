from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.access.models import AccessEvent, Role, WorkspaceAccess
from apps.workspaces.models import Workspace

ROLE_NAMES = [role.label for role in Role]


class RoleField(serializers.ChoiceField):
    """Roles travel by name (``read`` ... ``admin``); the database keeps their rank."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=ROLE_NAMES, **kwargs)

    def to_internal_value(self, data: Any) -> Any:
        return Role.from_name(super().to_internal_value(data))

    def to_representation(self, value: Any) -> str:
        return Role(value).label if value is not None else None  # type: ignore[return-value]


class WorkspaceAccessSerializer(serializers.ModelSerializer[WorkspaceAccess]):
    user: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    team: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        source="group", slug_field="name", read_only=True, allow_null=True
    )
    role = RoleField(read_only=True)
    granted_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )

    class Meta:
        model = WorkspaceAccess
        fields = ["id", "workspace", "user", "team", "role", "granted_by", "granted_at", "updated_at"]
        read_only_fields = fields


class GrantSerializer(serializers.Serializer[Any]):
    user = serializers.SlugRelatedField(
        slug_field="username", queryset=get_user_model().objects.filter(is_active=True), required=False
    )
    team = serializers.SlugRelatedField(slug_field="name", queryset=Group.objects.all(), required=False)
    role = RoleField()

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("user" in attrs) == ("team" in attrs):
            raise serializers.ValidationError("Give exactly one of user or team.")
        return attrs


class AccessEventSerializer(serializers.ModelSerializer[AccessEvent]):
    actor = serializers.CharField(source="actor_name", read_only=True)
    subject = serializers.CharField(source="subject_name", read_only=True)
    role = RoleField(read_only=True, allow_null=True)
    previous_role = RoleField(read_only=True, allow_null=True)

    class Meta:
        model = AccessEvent
        fields = ["id", "at", "action", "actor", "workspace", "workspace_name", "subject", "role", "previous_role"]
        read_only_fields = fields


@extend_schema_field(OpenApiTypes.INT)  # the workspace's id (spectacular cannot tell without a model)
class VisibleWorkspaceField(serializers.PrimaryKeyRelatedField[Workspace]):
    """A workspace id in a request body, looked up among the workspaces the caller may read: an
    invisible one is refused exactly like one that does not exist."""

    def get_queryset(self) -> Any:
        request = self.context.get("request")
        return Workspace.objects.visible_to(request.user if request is not None else None)


class ApiTokenSerializer(serializers.Serializer[Any]):
    token_key = serializers.CharField(read_only=True, help_text="the token's first characters, to tell it apart")
    created = serializers.DateTimeField(read_only=True)
    expiry = serializers.DateTimeField(read_only=True)


class NewApiTokenSerializer(ApiTokenSerializer):
    token = serializers.CharField(read_only=True, help_text="shown this once; only its hash is stored")


class ApiTokenCreateSerializer(serializers.Serializer[Any]):
    days = serializers.FloatField(
        min_value=0.001, required=False, help_text="lifetime in days (default and maximum: API_TOKEN_TTL)"
    )

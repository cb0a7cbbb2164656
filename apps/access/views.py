"""The access API of a workspace: its grants, granting and revoking roles, and the audit.
Mixed into the workspace viewset, so the workspace is found (or is a 404) and its ``admin`` role
checked by the same queryset and permission class as every other workspace call."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from apps.access import actions
from apps.access.models import AccessEvent, Role, WorkspaceAccess
from apps.access.serializers import AccessEventSerializer, GrantSerializer, WorkspaceAccessSerializer


class EventQuerySerializer(serializers.Serializer[Any]):
    limit = serializers.IntegerField(min_value=1, max_value=1000, required=False, default=100)


ACCESS_RULES = {"access": Role.ADMIN, "revoke_access": Role.ADMIN, "access_events": Role.ADMIN}


class WorkspaceAccessActions:
    """``/workspaces/{id}/access/`` (list, grant), ``.../access/{grant_id}/`` (revoke),
    ``.../access-events/`` (the audit). Needs ``admin`` on the workspace."""

    @extend_schema(
        methods=["GET"],
        request=None,
        responses=WorkspaceAccessSerializer(many=True),
        operation_id="workspaces_access_list",
    )
    @extend_schema(
        methods=["POST"],
        request=GrantSerializer,
        responses={200: WorkspaceAccessSerializer, 201: WorkspaceAccessSerializer},
        operation_id="workspaces_access_grant",
    )
    @action(detail=True, methods=["get", "post"])
    def access(self, request: Request, pk: str | None = None) -> Response:
        """The roles granted on the workspace (GET); grant or change one (POST, 201 when new)."""
        workspace = self.get_object()  # type: ignore[attr-defined]
        if request.method == "GET":
            grants = (
                WorkspaceAccess.objects.filter(workspace=workspace)
                .select_related("user", "group", "granted_by")
                .order_by("pk")
            )
            return Response(WorkspaceAccessSerializer(grants, many=True).data)
        body = GrantSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        grant, created = actions.do_grant_role(
            actor=request.user,
            workspace=workspace,
            role=body.validated_data["role"],
            user=body.validated_data.get("user"),
            group=body.validated_data.get("team"),
        )
        return Response(
            WorkspaceAccessSerializer(grant).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )

    @extend_schema(request=None, responses={204: None}, operation_id="workspaces_access_revoke")
    @action(detail=True, methods=["delete"], url_path=r"access/(?P<grant_id>[0-9]+)")
    def revoke_access(self, request: Request, pk: str | None = None, grant_id: str | None = None) -> Response:
        """Revoke one grant of the workspace."""
        workspace = self.get_object()  # type: ignore[attr-defined]
        grant = get_object_or_404(WorkspaceAccess, workspace=workspace, pk=int(grant_id or 0))
        actions.do_revoke_role(actor=request.user, grant=grant)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        request=None,
        responses=AccessEventSerializer(many=True),
        parameters=[EventQuerySerializer],
    )
    @action(detail=True, methods=["get"], url_path="access-events")
    def access_events(self, request: Request, pk: str | None = None) -> Response:
        """Who granted or revoked which role to whom, and when, newest first."""
        workspace = self.get_object()  # type: ignore[attr-defined]
        query = EventQuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        limit = query.validated_data["limit"]
        events = AccessEvent.objects.filter(workspace=workspace).order_by("-at", "-pk")[:limit]
        return Response(AccessEventSerializer(events, many=True).data)

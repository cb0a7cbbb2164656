"""REST API views for workspaces and tasks: validate, call an action, serialize."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import Prefetch, QuerySet
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from apps.workspaces import actions, states
from apps.workspaces.models import StateVersion, Task, Workspace
from apps.workspaces.serializers import (
    LockSerializer,
    LogQuerySerializer,
    StateVersionSerializer,
    TaskCreateSerializer,
    TaskFilterSerializer,
    TaskLogSerializer,
    TaskSerializer,
    WorkspaceSerializer,
    WorkspaceStateSerializer,
)


def _require_platform_admin(request: Request) -> None:
    # Moving a workspace's state by hand is an operator's act; until workspace roles exist, only
    # platform admins (superusers) may do it.
    if not request.user.is_superuser:
        raise PermissionDenied("Resolving a state conflict needs a platform admin.")


class WorkspaceViewSet(viewsets.ModelViewSet[Workspace]):
    queryset = (
        Workspace.objects.select_related("pool", "current_state")
        .defer("current_state__state")
        .prefetch_related(
            Prefetch(
                "state_versions",
                queryset=StateVersion.objects.filter(status=StateVersion.Status.CONFLICT).defer("state"),
                to_attr="conflicts",
            )
        )
        .order_by("name")
    )
    serializer_class = WorkspaceSerializer

    def perform_destroy(self, instance: Workspace) -> None:
        if instance.tasks.filter(status__in=Task.ACTIVE).exists():
            raise ValidationError({"detail": "The workspace has a task running; cancel it first."})
        instance.delete()

    @extend_schema(request=LockSerializer, responses=WorkspaceSerializer)
    @action(detail=True, methods=["post"])
    def lock(self, request: Request, pk: str | None = None) -> Response:
        body = LockSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        with transaction.atomic():
            workspace = Workspace.objects.select_for_update().get(pk=self.get_object().pk)
            if workspace.locked:
                return Response({"detail": "The workspace is already locked."}, status=status.HTTP_409_CONFLICT)
            workspace.locked, workspace.locked_at = True, timezone.now()
            workspace.locked_by = request.user if request.user.is_authenticated else None
            workspace.lock_reason = body.validated_data.get("reason", "")
            workspace.save(update_fields=["locked", "locked_at", "locked_by", "lock_reason"])
        return Response(WorkspaceSerializer(workspace).data)

    @extend_schema(request=None, responses=WorkspaceSerializer)
    @action(detail=True, methods=["post"])
    def unlock(self, request: Request, pk: str | None = None) -> Response:
        with transaction.atomic():
            workspace = Workspace.objects.select_for_update().get(pk=self.get_object().pk)
            workspace.locked, workspace.locked_at, workspace.locked_by, workspace.lock_reason = False, None, None, ""
            workspace.save(update_fields=["locked", "locked_at", "locked_by", "lock_reason"])
            # Tasks queued while it was locked can run now.
            actions.kick_after_commit(workspace.pk)
        return Response(WorkspaceSerializer(workspace).data)

    @extend_schema(request=None, responses=WorkspaceStateSerializer)
    @action(detail=True, methods=["get"])
    def state(self, request: Request, pk: str | None = None) -> Response:
        """The current state version, unresolved conflicts and the latest moves of the pointer."""
        workspace = self.get_object()
        data = {
            "current": workspace.current_state,
            "conflicts": workspace.conflicts,  # type: ignore[attr-defined]
            "transitions": workspace.state_transitions.order_by("-created_at", "-pk")[:50],
        }
        return Response(WorkspaceStateSerializer(data).data)

    @extend_schema(request=None, responses=StateVersionSerializer)
    @action(detail=True, methods=["post"], url_path=r"state-versions/(?P<version_id>[0-9]+)/promote")
    def promote_state(self, request: Request, pk: str | None = None, version_id: str = "") -> Response:
        """Make a state version current (a conflict resolved in its favour, or a rollback)."""
        _require_platform_admin(request)
        workspace = self.get_object()
        version = _resolve(states.do_promote, workspace, int(version_id), request)
        return Response(StateVersionSerializer(version).data)

    @extend_schema(request=None, responses=StateVersionSerializer)
    @action(detail=True, methods=["post"], url_path=r"state-versions/(?P<version_id>[0-9]+)/discard")
    def discard_state(self, request: Request, pk: str | None = None, version_id: str = "") -> Response:
        """Discard a conflict version: it stays stored, and no longer holds applies."""
        _require_platform_admin(request)
        workspace = self.get_object()
        version = _resolve(states.do_discard, workspace, int(version_id), request)
        return Response(StateVersionSerializer(version).data)


class TaskViewSet(
    mixins.CreateModelMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet[Task]
):
    serializer_class = TaskSerializer

    def get_queryset(self) -> QuerySet[Task]:
        qs = Task.objects.select_related("agent").order_by("-created_at", "-pk")
        if self.action != "list":
            return qs
        filters = TaskFilterSerializer(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        return qs.filter(**filters.validated_data)

    @extend_schema(
        parameters=[TaskFilterSerializer],
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(request=TaskCreateSerializer, responses={201: TaskSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = TaskCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        task = actions.enqueue_task(
            workspace=body.validated_data["workspace"],
            type=body.validated_data["type"],
            created_by=request.user if request.user.is_authenticated else None,
            timeout_seconds=body.validated_data.get("timeout_seconds"),
        )
        return Response(TaskSerializer(task).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=TaskSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        task = self.get_object()
        if task.is_terminal:
            return Response({"detail": "The task has already finished (%s)." % task.status}, status=409)
        task = actions.cancel_task(task.pk)
        return Response(TaskSerializer(task).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        parameters=[
            OpenApiParameter("after", int, description="Return chunks with seq greater than this."),
            OpenApiParameter("limit", int, description="At most this many chunks (1-5000)."),
        ],
        responses=TaskLogSerializer,
    )
    @action(detail=True, methods=["get"])
    def log(self, request: Request, pk: str | None = None) -> Response:
        query = LogQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        task = self.get_object()
        limit = query.validated_data["limit"]
        chunks = list(task.log_chunks.filter(seq__gt=query.validated_data["after"]).order_by("seq")[: limit + 1])
        complete = task.is_terminal and len(chunks) <= limit
        data = {"task": task.pk, "status": task.status, "chunks": chunks[:limit], "complete": complete}
        return Response(TaskLogSerializer(data).data)


def _resolve(do: states.Resolver, workspace: Workspace, version_id: int, request: Request) -> StateVersion:
    try:
        return do(workspace_id=workspace.pk, version_id=version_id, actor=request.user)
    except states.Refused as exc:
        error = APIException(exc.message)
        error.status_code = exc.status  # 404 (not this workspace's) or 409 (not a conflict)
        raise error from exc

"""REST API views for workspaces and tasks: validate, call an action, serialize.

Who may call what is declared in ``access_rules`` and enforced by apps/access/drf.py; querysets
are narrowed with ``visible_to`` so that what the caller may not read is a 404."""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch, QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from apps.access import policy
from apps.access.drf import CREATE_WORKSPACE, AccessRule, ActionChecks, PerObject
from apps.access.models import Role
from apps.access.views import ACCESS_RULES, WorkspaceAccessActions
from apps.workspaces import actions, states, variables
from apps.workspaces.models import Resource, StateLock, StateVersion, Task, Variable, Workspace
from apps.workspaces.serializers import (
    LockSerializer,
    LogQuerySerializer,
    ResourceFilterSerializer,
    ResourceSerializer,
    StateVersionFilterSerializer,
    StateVersionListSerializer,
    StateVersionSerializer,
    TaskCreateSerializer,
    TaskFilterSerializer,
    TaskLogSerializer,
    TaskSerializer,
    VariableSerializer,
    WorkspaceSerializer,
    WorkspaceStateSerializer,
)
from iacplatform.api.exceptions import Conflict
from iacplatform.api.schema import ERROR


def _conflict(exc: actions.WorkspaceConflict) -> Response:
    raise Conflict(str(exc)) from exc


class WorkspaceViewSet(WorkspaceAccessActions, viewsets.ModelViewSet[Workspace]):
    serializer_class = WorkspaceSerializer
    workspace_attr = "pk"
    access_rules: dict[str, AccessRule] = {
        "list": Role.READ,
        "retrieve": Role.READ,
        "create": CREATE_WORKSPACE,
        # Moving the workspace to another pool needs admin (perform_update asks).
        "update": Role.WRITE,
        "partial_update": Role.WRITE,
        "destroy": Role.ADMIN,
        "lock": Role.WRITE,
        # Lifting someone else's lock needs admin (the action decides, under the row lock).
        "unlock": Role.WRITE,
        "state": Role.READ,
        # Moving a workspace's state by hand is an operator's act.
        "promote_state": Role.ADMIN,
        "discard_state": Role.ADMIN,
        **ACCESS_RULES,
    }

    def get_queryset(self) -> QuerySet[Workspace]:
        return (
            Workspace.objects.visible_to(self.request.user)
            .select_related("pool", "current_state")
            .defer("current_state__state")
            .prefetch_related(
                Prefetch(
                    "state_versions",
                    queryset=StateVersion.objects.filter(status=StateVersion.Status.CONFLICT).defer("state"),
                    to_attr="conflicts",
                ),
                Prefetch("state_locks", queryset=StateLock.objects.held(), to_attr="held_locks"),
            )
            .order_by("name")
        )

    def perform_create(self, serializer: serializers.BaseSerializer[Workspace]) -> None:
        serializer.instance = actions.do_create_workspace(creator=self.request.user, **serializer.validated_data)

    def perform_update(self, serializer: serializers.BaseSerializer[Workspace]) -> None:
        instance = serializer.instance
        assert instance is not None
        changed = {name for name, value in serializer.validated_data.items() if getattr(instance, name) != value}
        policy.require(self.request.user, instance.pk, policy.role_to_change(changed))
        serializer.save()

    @extend_schema(responses={204: None, 409: ERROR})
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        try:
            actions.do_delete_workspace(workspace_id=self.get_object().pk)
        except actions.WorkspaceConflict as exc:
            return _conflict(exc)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=LockSerializer, responses={200: WorkspaceSerializer, 409: ERROR})
    @action(detail=True, methods=["post"])
    def lock(self, request: Request, pk: str | None = None) -> Response:
        body = LockSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            workspace = actions.do_lock_workspace(
                workspace_id=self.get_object().pk, user=request.user, reason=body.validated_data.get("reason", "")
            )
        except actions.WorkspaceConflict as exc:
            return _conflict(exc)
        return Response(WorkspaceSerializer(workspace).data)

    @extend_schema(request=None, responses=WorkspaceSerializer)
    @action(detail=True, methods=["post"])
    def unlock(self, request: Request, pk: str | None = None) -> Response:
        workspace = actions.do_unlock_workspace(workspace_id=self.get_object().pk, user=request.user)
        return Response(WorkspaceSerializer(workspace).data)

    @extend_schema(request=None, responses=WorkspaceStateSerializer)
    @action(detail=True, methods=["get"])
    def state(self, request: Request, pk: str | None = None) -> Response:
        """The current state version, unresolved conflicts, Terraform's lock and the latest moves."""
        workspace = self.get_object()
        data = {
            "current": workspace.current_state,
            "conflicts": workspace.conflicts,  # type: ignore[attr-defined]
            "lock": next(iter(workspace.held_locks), None),  # type: ignore[attr-defined]
            "locks": workspace.state_locks.order_by("-acquired_at", "-pk")[:20],
            "transitions": workspace.state_transitions.order_by("-created_at", "-pk")[:50],
        }
        return Response(WorkspaceStateSerializer(data).data)

    @extend_schema(request=None, responses={200: StateVersionSerializer, 409: ERROR})
    @action(detail=True, methods=["post"], url_path=r"state-versions/(?P<version_id>[0-9]+)/promote")
    def promote_state(self, request: Request, pk: str | None = None, version_id: str = "") -> Response:
        """Make a state version current (a conflict resolved in its favour, or a rollback)."""
        workspace = self.get_object()
        version = _resolve(states.do_promote, workspace, int(version_id), request)
        return Response(StateVersionSerializer(version).data)

    @extend_schema(request=None, responses={200: StateVersionSerializer, 409: ERROR})
    @action(detail=True, methods=["post"], url_path=r"state-versions/(?P<version_id>[0-9]+)/discard")
    def discard_state(self, request: Request, pk: str | None = None, version_id: str = "") -> Response:
        """Discard a conflict version: it stays stored, and no longer holds applies."""
        workspace = self.get_object()
        version = _resolve(states.do_discard, workspace, int(version_id), request)
        return Response(StateVersionSerializer(version).data)


class VariableViewSet(viewsets.ModelViewSet[Variable]):
    """A workspace's variables (``/workspaces/<id>/variables/``). Sensitive values are write-only."""

    serializer_class = VariableSerializer
    access_rules: dict[str, AccessRule] = {
        # No object yet: the view asks for the workspace in the URL (read, resp. write).
        "list": ActionChecks("read on the workspace in the URL"),
        "create": ActionChecks("write on the workspace in the URL"),
        "retrieve": Role.READ,
        "update": Role.WRITE,
        "partial_update": Role.WRITE,
        "destroy": Role.WRITE,
    }

    def workspace_id(self) -> int:
        return int(self.kwargs["workspace_pk"])

    def get_queryset(self) -> QuerySet[Variable]:
        if getattr(self, "swagger_fake_view", False):  # schema generation: no URL kwargs
            return Variable.objects.none()
        return (
            Variable.objects.visible_to(self.request.user)
            .filter(workspace_id=self.workspace_id())
            .order_by("category", "key")
        )

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        policy.require(request.user, self.workspace_id(), Role.READ)
        return super().list(request, *args, **kwargs)

    @extend_schema(responses={201: VariableSerializer, 409: ERROR})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        policy.require(request.user, self.workspace_id(), Role.WRITE)
        return super().create(request, *args, **kwargs)

    @extend_schema(responses={200: VariableSerializer, 409: ERROR})
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().update(request, *args, **kwargs)

    @extend_schema(responses={200: VariableSerializer, 409: ERROR})
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().partial_update(request, *args, **kwargs)

    def perform_create(self, serializer: serializers.BaseSerializer[Variable]) -> None:
        self._save(serializer, None)

    def perform_update(self, serializer: serializers.BaseSerializer[Variable]) -> None:
        self._save(serializer, serializer.instance)

    def _save(self, serializer: serializers.BaseSerializer[Variable], instance: Variable | None) -> None:
        data = serializer.validated_data
        try:
            serializer.instance = variables.do_set_variable(
                workspace_id=self.workspace_id(),
                variable=instance,
                key=data.get("key", instance.key if instance else ""),
                category=data.get("category", instance.category if instance else Variable.Category.TERRAFORM),
                sensitive=data.get("sensitive", instance.sensitive if instance else False),
                value=data.get("value"),
                description=data.get("description", instance.description if instance else ""),
            )
        except variables.VariableConflict as exc:
            raise Conflict(str(exc)) from exc

    def perform_destroy(self, instance: Variable) -> None:
        variables.do_delete_variable(variable=instance)


def _role_to_handle(task: Task) -> Role:
    return policy.TASK_TYPE_ROLE[task.type]


BY_TASK_TYPE = "plan on the workspace for plans and drift checks, write for applies"


class TaskViewSet(
    mixins.CreateModelMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet[Task]
):
    serializer_class = TaskSerializer
    access_rules: dict[str, AccessRule] = {
        "list": Role.READ,
        "retrieve": Role.READ,
        "log": Role.READ,
        # Queueing a plan or drift check needs plan, an apply write: known once the body is read.
        "create": ActionChecks(BY_TASK_TYPE + " (the workspace of the body)"),
        "cancel": PerObject(BY_TASK_TYPE, _role_to_handle),
    }

    def get_queryset(self) -> QuerySet[Task]:
        qs = (
            Task.objects.visible_to(self.request.user)
            .select_related("agent", "created_by")
            .order_by("-created_at", "-pk")
        )
        if self.action != "list":
            return qs
        filters = TaskFilterSerializer(data=self.request.query_params.dict())
        filters.is_valid(raise_exception=True)
        return qs.filter(**filters.validated_data)

    @extend_schema(
        parameters=[TaskFilterSerializer],
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(request=TaskCreateSerializer, responses={201: TaskSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = TaskCreateSerializer(data=request.data, context={"request": request})
        body.is_valid(raise_exception=True)
        workspace, type = body.validated_data["workspace"], body.validated_data["type"]
        policy.require(request.user, workspace.pk, policy.TASK_TYPE_ROLE[type])
        task = actions.enqueue_task(
            workspace=workspace,
            type=type,
            created_by=request.user,
            timeout_seconds=body.validated_data.get("timeout_seconds"),
        )
        return Response(TaskSerializer(task).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={202: TaskSerializer, 409: ERROR})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        task = self.get_object()
        if task.is_terminal:
            raise Conflict("The task has already finished (%s)." % task.status)
        task = actions.cancel_task(task.pk)
        return Response(TaskSerializer(task).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        parameters=[LogQuerySerializer],
        responses=TaskLogSerializer,
    )
    @action(detail=True, methods=["get"])
    def log(self, request: Request, pk: str | None = None) -> Response:
        query = LogQuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        task = self.get_object()
        limit = query.validated_data["limit"]
        chunks = list(
            task.log_chunks.filter(seq__gt=query.validated_data["after"], task__log_pruned_at__isnull=True).order_by(
                "seq"
            )[: limit + 1]
        )
        # The marker is read after the chunks: it commits with the first chunks deleted, so chunks
        # read before it are a whole log, and a log read as it went is answered as pruned.
        task.refresh_from_db(fields=["log_pruned_at", "log_pruned_chunks", "log_pruned_bytes"])
        if task.log_pruned_at is not None:
            chunks = []
        complete = task.is_terminal and len(chunks) <= limit
        data = {
            "task": task.pk,
            "status": task.status,
            "chunks": chunks[:limit],
            "complete": complete,
            "pruned": task.log_pruned_at is not None,
            "pruned_at": task.log_pruned_at,
            "pruned_chunks": task.log_pruned_chunks,
            "pruned_bytes": task.log_pruned_bytes,
        }
        return Response(TaskLogSerializer(data).data)


def _resolve(do: states.Resolver, workspace: Workspace, version_id: int, request: Request) -> StateVersion:
    try:
        return do(workspace_id=workspace.pk, version_id=version_id, actor=request.user)
    except states.Refused as exc:
        # 404 (not this workspace's) or 409 (not a conflict)
        raise (NotFound(exc.message) if exc.status == 404 else Conflict(exc.message)) from exc


class StateVersionViewSet(viewsets.ReadOnlyModelViewSet[StateVersion]):
    """State versions of the workspaces the caller may read, without their content."""

    serializer_class = StateVersionListSerializer
    lookup_value_regex = "[0-9]+"
    access_rules: dict[str, AccessRule] = {"list": Role.READ, "retrieve": Role.READ}

    def get_queryset(self) -> QuerySet[StateVersion]:
        qs = StateVersion.objects.visible_to(self.request.user).defer("state").order_by("workspace_id", "-serial")
        if self.action != "list":
            return qs
        filters = StateVersionFilterSerializer(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        return qs.filter(**filters.validated_data)

    @extend_schema(parameters=[StateVersionFilterSerializer])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)


class ResourceViewSet(viewsets.ReadOnlyModelViewSet[Resource]):
    """The CMDB: resources of the newest state of every workspace the caller may read."""

    serializer_class = ResourceSerializer
    lookup_value_regex = "[0-9]+"  # resources/search/ is the search (apps/search)
    access_rules: dict[str, AccessRule] = {"list": Role.READ, "retrieve": Role.READ}

    def get_queryset(self) -> QuerySet[Resource]:
        qs = Resource.objects.visible_to(self.request.user).order_by("workspace_id", "address")
        if self.action != "list":
            return qs
        filters = ResourceFilterSerializer(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        return qs.filter(**filters.lookups())

    @extend_schema(parameters=[ResourceFilterSerializer])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

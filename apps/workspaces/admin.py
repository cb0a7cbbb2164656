from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Model, Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from apps.access import policy
from apps.workspaces import actions, states
from apps.workspaces.models import (
    Resource,
    StateLock,
    StateTransition,
    StateVersion,
    Task,
    TaskLogChunk,
    Variable,
    Workspace,
)
from iacplatform.estimates import BoundedCountPaginator


class ConflictFilter(admin.SimpleListFilter):
    title = "state conflict"
    parameter_name = "state_conflict"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("yes", "unresolved"), ("no", "none")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Workspace]) -> QuerySet[Workspace]:
        conflicted = StateVersion.objects.filter(status=StateVersion.Status.CONFLICT).values("workspace_id")
        if self.value() == "yes":
            return queryset.filter(pk__in=conflicted)
        if self.value() == "no":
            return queryset.exclude(pk__in=conflicted)
        return queryset


@admin.register(Workspace)
class WorkspaceAdmin(admin.ModelAdmin):
    # Tables that grow with history: counts read at most 10,000 rows (iacplatform/estimates.py).
    paginator = BoundedCountPaginator
    show_full_result_count = False
    list_display = (
        "name",
        "pool",
        "locked",
        "current_state",
        "state_conflicts",
        "drift_check_enabled",
        "drift_status",
        "drift_next_check_at",
    )
    list_filter = ("pool", "locked", ConflictFilter, "drift_check_enabled", "drift_status")
    list_select_related = ("pool", "current_state")
    search_fields = ("name",)
    readonly_fields = (
        "current_state",
        "locked_at",
        "drift_next_check_at",
        "drift_last_checked_at",
        "drift_status",
        "cmdb_synced_serial",
        "created_at",
        "updated_at",
    )

    def save_model(self, request: HttpRequest, obj: Workspace, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        # As POST /api/v1/workspaces/: the creator gets the admin role on it.
        _become(obj, actions.do_create_workspace(creator=request.user, **form.cleaned_data))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return policy.can_create_workspace(request.user) and super().has_add_permission(request)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Workspace]:
        conflicts = Count("state_versions", filter=Q(state_versions__status=StateVersion.Status.CONFLICT))
        return super().get_queryset(request).defer("current_state__state").annotate(conflicts=conflicts)

    @admin.display(description="state conflicts", ordering="conflicts")
    def state_conflicts(self, workspace: Workspace) -> int:
        # Unresolved: the workspace's applies are held (promote or discard in State versions).
        return int(workspace.conflicts)  # type: ignore[attr-defined]


class TaskLogChunkInline(admin.TabularInline):
    model = TaskLogChunk
    fields = ("seq", "text", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


def _become(obj: Model, created: Model) -> None:
    """The admin goes on with its own unsaved ``obj`` (log entry, redirect) after an action
    created the real row: make ``obj`` that row."""
    for field in type(created)._meta.concrete_fields:
        setattr(obj, field.attname, getattr(created, field.attname))
    obj._state.adding = False


class TaskAddForm(forms.ModelForm):
    class Meta:
        model = Task
        fields = ("workspace", "type", "timeout_seconds")


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    # Tables that grow with history: counts read at most 10,000 rows (iacplatform/estimates.py).
    paginator = BoundedCountPaginator
    show_full_result_count = False
    # created_by: who queued it (empty for the leader's jobs, e.g. drift checks).
    list_display = (
        "id",
        "workspace",
        "type",
        "status",
        "agent_id_",
        "attempt",
        "created_by",
        "created_at",
        "duration",
    )
    list_filter = ("status", "type")
    search_fields = ("workspace__name", "agent__agent_id", "created_by__username")
    list_select_related = ("workspace", "agent", "created_by")
    # The queue and the agents own a task's lifecycle; operators read it and cancel through the API.
    readonly_fields = (
        "workspace",
        "type",
        "status",
        "agent",
        "attempt",
        "created_by",
        "created_at",
        "dispatched_at",
        "started_at",
        "finished_at",
        "cancel_requested_at",
        "exit_code",
        "plan_summary",
        "error",
        # Set when task_log_retention deleted the log (the chunks below are then gone).
        "log_pruned_at",
        "log_pruned_chunks",
        "log_pruned_bytes",
    )
    inlines = [TaskLogChunkInline]

    # Add: queue a run the way POST /api/v1/tasks/ does (actions.enqueue_task), nothing else.
    def get_form(self, request: HttpRequest, obj: Task | None = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = TaskAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Task | None = None) -> Any:
        return TaskAddForm.Meta.fields if obj is None else super().get_fields(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: Task | None = None) -> Any:
        return () if obj is None else self.readonly_fields

    def get_inlines(self, request: HttpRequest, obj: Task | None) -> Any:
        return [] if obj is None else self.inlines

    def save_model(self, request: HttpRequest, obj: Task, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        task = actions.enqueue_task(
            workspace=obj.workspace, type=obj.type, created_by=request.user, timeout_seconds=obj.timeout_seconds
        )
        _become(obj, task)

    def has_add_permission(self, request: HttpRequest) -> bool:
        # A platform admin holds every workspace role, so may queue any type (the API's rule).
        return policy.is_platform_admin(request.user) and super().has_add_permission(request)

    @admin.display(description="agent", ordering="agent__agent_id")
    def agent_id_(self, obj: Task) -> str:
        # The id, not the agent's display name (which made the list scroll sideways).
        return obj.agent.agent_id if obj.agent is not None else "-"

    @admin.display(description="duration")
    def duration(self, obj: Task) -> str:
        if obj.started_at is None:
            return "-"
        end = obj.finished_at or timezone.now()
        return "%.1f s" % (end - obj.started_at).total_seconds()


@admin.register(StateVersion)
class StateVersionAdmin(admin.ModelAdmin):
    # Tables that grow with history: counts read at most 10,000 rows (iacplatform/estimates.py).
    paginator = BoundedCountPaginator
    show_full_result_count = False
    list_display = ("workspace", "serial", "status", "terraform_serial", "lineage", "task", "attempt", "created_at")
    list_filter = ("status",)
    search_fields = ("workspace__name",)
    list_select_related = ("workspace", "task")
    readonly_fields = (
        "workspace",
        "serial",
        "status",
        "terraform_serial",
        "lineage",
        "state",
        "task",
        "attempt",
        "resolved_by",
        "resolved_at",
        "created_at",
    )
    actions = ["promote", "discard"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[StateVersion]:
        return super().get_queryset(request).defer("state")  # loaded only when a page shows it

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def _resolve(self, request: HttpRequest, queryset: QuerySet[StateVersion], do: states.Resolver) -> None:
        if not policy.is_platform_admin(request.user):
            self.message_user(request, "Resolving a state conflict needs a platform admin.", messages.ERROR)
            return
        for version in queryset:
            try:
                do(workspace_id=version.workspace_id, version_id=version.pk, actor=request.user)
            except states.Refused as exc:
                self.message_user(request, "%s: %s" % (version, exc.message), messages.ERROR)
            else:
                self.message_user(request, "%s: done" % version, messages.SUCCESS)

    @admin.action(description="Promote to the workspace's current state")
    def promote(self, request: HttpRequest, queryset: QuerySet[StateVersion]) -> None:
        self._resolve(request, queryset, states.do_promote)

    @admin.action(description="Discard the selected conflict versions")
    def discard(self, request: HttpRequest, queryset: QuerySet[StateVersion]) -> None:
        self._resolve(request, queryset, states.do_discard)


class HeldFilter(admin.SimpleListFilter):
    title = "held"
    parameter_name = "held"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("yes", "held now"), ("no", "released")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[StateLock]) -> QuerySet[StateLock]:
        if self.value() == "yes":
            return queryset.filter(released_at__isnull=True)
        if self.value() == "no":
            return queryset.filter(released_at__isnull=False)
        return queryset


@admin.register(StateLock)
class StateLockAdmin(admin.ModelAdmin):
    """Terraform's state locks (the http backend's LOCK): held now, and the history."""

    paginator = BoundedCountPaginator
    show_full_result_count = False

    list_display = ("workspace", "task", "attempt", "who", "acquired_at", "released_at", "release_reason")
    list_filter = (HeldFilter, "workspace")
    list_select_related = ("workspace", "task")
    readonly_fields = (
        "workspace",
        "lock_id",
        "task",
        "attempt",
        "info",
        "acquired_at",
        "released_at",
        "release_reason",
    )

    @admin.display(description="who")
    def who(self, lock: StateLock) -> str:
        return str(lock.info.get("Who", ""))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(StateTransition)
class StateTransitionAdmin(admin.ModelAdmin):
    # Tables that grow with history: counts read at most 10,000 rows (iacplatform/estimates.py).
    paginator = BoundedCountPaginator
    show_full_result_count = False
    list_display = (
        "workspace",
        "kind",
        "from_serial",
        "from_lineage",
        "to_serial",
        "to_lineage",
        "task",
        "attempt",
        "actor",
        "created_at",
    )
    list_filter = ("kind",)
    search_fields = ("workspace__name",)
    list_select_related = ("workspace", "actor")
    readonly_fields = (*list_display, "from_version", "to_version")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class ResourceModeFilter(admin.SimpleListFilter):
    """Terraform's two resource modes, without a DISTINCT over every resource indexed."""

    title = "mode"
    parameter_name = "mode"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return [("managed", "managed"), ("data", "data")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(mode=value) if value else queryset


@admin.register(Resource)
class ResourceAdmin(admin.ModelAdmin):
    """The CMDB index, written by cmdb_sync from state versions only."""

    # Tables that grow with history: counts read at most 10,000 rows (iacplatform/estimates.py).
    paginator = BoundedCountPaginator
    show_full_result_count = False
    list_display = ("address", "workspace", "type", "provider", "mode", "state_serial", "updated_at")
    list_filter = (ResourceModeFilter,)
    search_fields = ("address", "type", "name", "workspace__name")
    readonly_fields = (
        "workspace",
        "address",
        "type",
        "name",
        "provider",
        "module",
        "mode",
        "index_key",
        "attributes",
        "state_serial",
        "updated_at",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


def shown_value(variable: Variable) -> str:
    """What the admin shows of a value: a sensitive one only as set or unset."""
    if variable.sensitive:
        return "(sensitive, %s)" % ("set" if variable.is_set else "unset")
    return variable.value


@admin.register(Variable)
class VariableAdmin(admin.ModelAdmin):
    """Read-only: variables are written through the API (apps/workspaces/variables.py), which
    encrypts sensitive values; the admin never shows one."""

    list_display = ("workspace", "category", "key", "sensitive", "value_shown", "updated_at")
    list_filter = ("category", "sensitive")
    list_select_related = ("workspace",)
    search_fields = ("key", "workspace__name")
    fields = ("workspace", "category", "key", "sensitive", "value_shown", "description", "created_at", "updated_at")
    readonly_fields = fields

    @admin.display(description="value")
    def value_shown(self, variable: Variable) -> str:
        return shown_value(variable)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

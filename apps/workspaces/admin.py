from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from apps.workspaces.models import Resource, StateVersion, Task, TaskLogChunk, Workspace


@admin.register(Workspace)
class WorkspaceAdmin(admin.ModelAdmin):
    list_display = ("name", "pool", "locked", "drift_check_enabled", "drift_status", "drift_next_check_at")
    list_filter = ("pool", "locked", "drift_check_enabled", "drift_status")
    search_fields = ("name",)
    readonly_fields = (
        "locked_at",
        "drift_next_check_at",
        "drift_last_checked_at",
        "drift_status",
        "cmdb_synced_serial",
        "created_at",
        "updated_at",
    )


class TaskLogChunkInline(admin.TabularInline):
    model = TaskLogChunk
    fields = ("seq", "text", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ("id", "workspace", "type", "status", "agent", "attempt", "created_at", "started_at", "finished_at")
    list_filter = ("status", "type", "workspace")
    search_fields = ("workspace__name", "agent__agent_id")
    list_select_related = ("workspace", "agent")
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
    )
    inlines = [TaskLogChunkInline]


@admin.register(StateVersion)
class StateVersionAdmin(admin.ModelAdmin):
    list_display = ("workspace", "serial", "lineage", "task", "created_at")
    list_filter = ("workspace",)
    readonly_fields = ("workspace", "serial", "lineage", "state", "task", "created_at")


@admin.register(Resource)
class ResourceAdmin(admin.ModelAdmin):
    list_display = ("address", "workspace", "type", "provider", "mode", "state_serial", "updated_at")
    list_filter = ("workspace", "mode", "type")
    search_fields = ("address", "type", "name")
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

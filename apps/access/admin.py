"""Grants in the admin (platform admins): every save and delete goes through the audited actions,
and the audit itself is read-only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from apps.access.actions import do_grant_role, do_revoke_role
from apps.access.models import AccessEvent, Role, WorkspaceAccess


@admin.register(WorkspaceAccess)
class WorkspaceAccessAdmin(admin.ModelAdmin):
    list_display = ("workspace", "user", "group", "role", "granted_by", "updated_at")
    list_filter = ("role",)
    search_fields = ("workspace__name", "user__username", "group__name")
    list_select_related = ("workspace", "user", "group", "granted_by")
    fields = ("workspace", "user", "group", "role")
    raw_id_fields = ("workspace", "user")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        # Changing whom a grant is for is a revoke and a new grant, not an edit.
        return ("workspace", "user", "group") if obj is not None else ()

    def save_model(self, request: HttpRequest, obj: WorkspaceAccess, form: Any, change: bool) -> None:
        grant, _ = do_grant_role(
            actor=request.user, workspace=obj.workspace, role=Role(obj.role), user=obj.user, group=obj.group
        )
        obj.pk = grant.pk

    def delete_model(self, request: HttpRequest, obj: WorkspaceAccess) -> None:
        do_revoke_role(actor=request.user, grant=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[WorkspaceAccess]) -> None:
        for grant in queryset:
            do_revoke_role(actor=request.user, grant=grant)


@admin.register(AccessEvent)
class AccessEventAdmin(admin.ModelAdmin):
    list_display = ("at", "action", "actor_name", "workspace_name", "subject_name", "role", "previous_role")
    list_filter = ("action",)
    search_fields = ("actor_name", "workspace_name", "subject_name")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

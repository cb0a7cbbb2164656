from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from apps.hub.models import Draft, EditingSession, TakeoverRequest
from iacplatform.estimates import BoundedCountPaginator


class NoAddAdmin(admin.ModelAdmin):
    """Sessions, takeovers and drafts are made by the hub's actions (its API and sockets), which
    keep the one-editor lock and notify the other side; a bare admin form would do neither."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(EditingSession)
class EditingSessionAdmin(NoAddAdmin):
    # Tables that grow with history: counts read at most 10,000 rows (iacplatform/estimates.py).
    paginator = BoundedCountPaginator
    show_full_result_count = False
    list_display = (
        "session_id",
        "workspace",
        "resource_address",
        "user",
        "mode",
        "active",
        "started_at",
        "last_seen_at",
        "ended_reason",
    )
    list_filter = ("active", "mode", "ended_reason")
    search_fields = ("resource_address", "user__username", "workspace__name")
    readonly_fields = ("session_id", "started_at", "last_seen_at", "ended_at", "ended_reason")


@admin.register(TakeoverRequest)
class TakeoverRequestAdmin(NoAddAdmin):
    # Tables that grow with history: counts read at most 10,000 rows (iacplatform/estimates.py).
    paginator = BoundedCountPaginator
    show_full_result_count = False
    list_display = ("id", "session", "requester", "status", "created_at", "responded_at")
    list_filter = ("status",)
    readonly_fields = ("session", "requester", "requester_session_id", "status", "created_at", "responded_at")


@admin.register(Draft)
class DraftAdmin(NoAddAdmin):
    # Tables that grow with history: counts read at most 10,000 rows (iacplatform/estimates.py).
    paginator = BoundedCountPaginator
    show_full_result_count = False
    list_display = ("workspace", "resource_address", "user", "updated_at", "expires_at")
    search_fields = ("workspace__name", "resource_address")
    readonly_fields = ("updated_at",)

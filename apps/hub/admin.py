from __future__ import annotations

from django.contrib import admin

from apps.hub.models import Draft, EditingSession, TakeoverRequest
from iacplatform.estimates import BoundedCountPaginator


@admin.register(EditingSession)
class EditingSessionAdmin(admin.ModelAdmin):
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
class TakeoverRequestAdmin(admin.ModelAdmin):
    # Tables that grow with history: counts read at most 10,000 rows (iacplatform/estimates.py).
    paginator = BoundedCountPaginator
    show_full_result_count = False
    list_display = ("id", "session", "requester", "status", "created_at", "responded_at")
    list_filter = ("status",)
    readonly_fields = ("session", "requester", "requester_session_id", "status", "created_at", "responded_at")


@admin.register(Draft)
class DraftAdmin(admin.ModelAdmin):
    # Tables that grow with history: counts read at most 10,000 rows (iacplatform/estimates.py).
    paginator = BoundedCountPaginator
    show_full_result_count = False
    list_display = ("workspace", "resource_address", "user", "updated_at", "expires_at")
    search_fields = ("workspace__name", "resource_address")
    readonly_fields = ("updated_at",)

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from apps.coordination.models import Fence, JobRun, Lease


class ReadOnlyAdmin(admin.ModelAdmin):
    """Coordination records are written by the election and the jobs only."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Lease)
class LeaseAdmin(ReadOnlyAdmin):
    list_display = ("name", "holder_identity", "lease_transitions", "acquire_time", "renew_time", "resource_version")


@admin.register(Fence)
class FenceAdmin(ReadOnlyAdmin):
    list_display = ("name", "epoch", "holder_identity", "updated_at")


@admin.register(JobRun)
class JobRunAdmin(ReadOnlyAdmin):
    list_display = ("job", "holder", "epoch", "outcome", "started_at", "finished_at")
    list_filter = ("outcome", "job", "holder")
    date_hierarchy = "started_at"

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from apps.coordination import lockkeys, registry
from apps.coordination.models import AdvisoryLock, Fence, JobRun, JobRunDay, Lease
from apps.coordination.retention import kept_jobs
from apps.coordination.status import recent_terms
from iacplatform.estimates import BoundedCountPaginator

ERROR_PREVIEW = 80  # characters of a tick's error shown in the list (the whole text on its page)


class LockNamespaceFilter(admin.SimpleListFilter):
    """The advisory-lock namespaces by name (lockkeys.Namespace), not by number."""

    title = "namespace"
    parameter_name = "namespace"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(str(int(ns)), ns.name.lower().replace("_", " ")) for ns in lockkeys.Namespace]

    def queryset(self, request: HttpRequest, queryset: QuerySet[AdvisoryLock]) -> QuerySet[AdvisoryLock]:
        value = self.value()
        if value is None:
            return queryset
        if not value.lstrip("-").isdigit():
            return queryset.none()
        return queryset.filter(namespace=int(value))


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
    readonly_fields = ("recent_terms",)

    @admin.display(description="recent terms (from job ticks)")
    def recent_terms(self, obj: Lease) -> SafeString:
        rows = recent_terms()
        if not rows:
            return format_html("{}", "no ticks recorded yet")
        body = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((r["epoch"], r["holder"], r["first_tick"], r["last_tick"], r["ticks"]) for r in rows),
        )
        return format_html(
            "<table><tr><th>epoch</th><th>holder</th><th>first tick</th><th>last tick</th><th>ticks</th></tr>"
            "{}</table>",
            body,
        )


@admin.register(Fence)
class FenceAdmin(ReadOnlyAdmin):
    list_display = ("name", "epoch", "holder_identity", "updated_at")


class JobFilter(admin.SimpleListFilter):
    title = "job"
    parameter_name = "job"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return [(job, job) for job in kept_jobs()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(job=value) if value else queryset


@admin.register(JobRun)
class JobRunAdmin(ReadOnlyAdmin):
    # Tables that grow with history: counts read at most 10,000 rows (iacplatform/estimates.py).
    paginator = BoundedCountPaginator
    show_full_result_count = False
    list_display = ("job", "holder", "epoch", "outcome", "started_at", "duration", "short_error")
    # No date hierarchy and no holder or epoch filter: each lists the DISTINCT values of every tick
    # kept (0.2-0.6 s at a month of ticks). Jobs come from a skip scan; holders and epochs are
    # searched.
    list_filter = ("outcome", JobFilter)
    search_fields = ("job", "holder", "=epoch", "error")

    @admin.display(description="duration")
    def duration(self, obj: JobRun) -> str:
        if obj.finished_at is None:
            return "running"
        return "%.3f s" % (obj.finished_at - obj.started_at).total_seconds()

    @admin.display(description="error")
    def short_error(self, obj: JobRun) -> str:
        first_line = obj.error.strip().splitlines()[0] if obj.error.strip() else ""
        return first_line if len(first_line) <= ERROR_PREVIEW else first_line[: ERROR_PREVIEW - 1] + "\u2026"


@admin.register(JobRunDay)
class JobRunDayAdmin(ReadOnlyAdmin):
    """Ticks older than JOBRUN_RETENTION_DAYS, folded into one row per job and day."""

    list_display = (
        "day",
        "job",
        "ticks",
        "ok",
        "error",
        "fenced",
        "skipped",
        "overlapped",
        "total_duration_seconds",
        "max_duration_seconds",
    )
    list_filter = ("job",)
    date_hierarchy = "day"


@admin.register(AdvisoryLock)
class AdvisoryLockAdmin(ReadOnlyAdmin):
    """Locks held or awaited now (pg_locks joined with pg_stat_activity), named via lockkeys."""

    list_display = ("lock_name", "granted", "mode", "pid", "application_name", "state", "xact_start", "waiting_since")
    list_filter = ("granted", LockNamespaceFilter)
    search_fields = ("application_name",)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, object] | None = None) -> HttpResponse:
        registry.autodiscover()  # job names decode the job locks; a web replica imports no jobs otherwise
        return super().changelist_view(request, extra_context)

    @admin.display(description="lock")
    def lock_name(self, obj: AdvisoryLock) -> str:
        return obj.name

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from apps.agents import actions as agent_actions
from apps.agents.models import Agent, AgentPool
from iacplatform.estimates import BoundedCountPaginator


@admin.register(AgentPool)
class AgentPoolAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "min_replicas", "max_replicas", "agent_capacity", "desired_replicas", "scaled_at")
    list_filter = ("kind",)
    search_fields = ("name", "k8s_deployment")
    readonly_fields = ("desired_replicas", "scale_down_pending_since", "scaled_at", "created_at", "updated_at")

    def save_model(self, request: HttpRequest, obj: AgentPool, form: Any, change: bool) -> None:
        if not change:
            # As `manage.py createagentpool`: a fresh token, stored only as its hash, shown once.
            obj._new_token = obj.set_new_token()  # type: ignore[attr-defined]
        super().save_model(request, obj, form, change)

    def response_add(self, request: HttpRequest, obj: AgentPool, post_url_continue: str | None = None) -> HttpResponse:
        token = getattr(obj, "_new_token", None)
        if token is None:
            return super().response_add(request, obj, post_url_continue)
        # Rendered here rather than put in a message: messages travel in a cookie or the session.
        context = {
            **self.admin_site.each_context(request),
            "title": "Agent pool %s created" % obj.name,
            "pool": obj,
            "token": token,
            "opts": self.opts,
            "changelist_url": reverse("admin:agents_agentpool_changelist"),
        }
        response = TemplateResponse(request, "admin/agents/agentpool/token.html", context)
        response["Cache-Control"] = "no-store"
        return response


class ConnectedPodFilter(admin.SimpleListFilter):
    title = "connected pod"
    parameter_name = "connected_pod"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        pods = Agent.objects.exclude(connected_pod=None).values_list("connected_pod", flat=True).distinct()
        return [("-", "(not connected)")] + [(pod, pod) for pod in sorted(p for p in pods if p)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Agent]) -> QuerySet[Agent]:
        if self.value() == "-":
            return queryset.filter(connected_pod=None)
        if self.value():
            return queryset.filter(connected_pod=self.value())
        return queryset


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    # Tables that grow with history: counts read at most 10,000 rows (iacplatform/estimates.py).
    paginator = BoundedCountPaginator
    show_full_result_count = False
    list_display = (
        "agent_id",
        "name",
        "pool",
        "status",
        "connected_pod",
        "heartbeat_age",
        "version",
        "capacity",
        "registered",
    )
    list_filter = ("status", "pool", ConnectedPodFilter)
    search_fields = ("agent_id", "name", "connected_pod")
    list_select_related = ("pool",)
    # Everything but the display name is reported by the agent or set by the system.
    readonly_fields = (
        "agent_id",
        "pool",
        "status",
        "last_heartbeat",
        "connected_pod",
        "connected_at",
        "version",
        "capacity",
        "labels",
        "registered",
        "registered_at",
        "created_at",
        "updated_at",
    )
    actions = ["revoke_credentials"]

    @admin.display(boolean=True, description="registered")
    def registered(self, obj: Agent) -> bool:
        return obj.registered

    @admin.action(description="Revoke the credentials of the selected agents (they must register again)")
    def revoke_credentials(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        count = agent_actions.revoke_agents(list(queryset))
        self.message_user(request, "Revoked %d agents." % count)

    def delete_model(self, request: HttpRequest, obj: Agent) -> None:
        agent_actions.delete_agents([obj])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        agent_actions.delete_agents(list(queryset))

    @admin.display(description="heartbeat age", ordering="-last_heartbeat")
    def heartbeat_age(self, obj: Agent) -> str:
        # In seconds, as AGENT_OFFLINE_THRESHOLD is: "0 minutes" hid a heartbeat 50 s late.
        if obj.last_heartbeat is None:
            return "never"
        age = (timezone.now() - obj.last_heartbeat).total_seconds()
        threshold = settings.AGENT_OFFLINE_THRESHOLD
        return "%d s%s" % (age, " (past the %d s threshold)" % threshold if age > threshold else "")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

from __future__ import annotations

from django.urls import path
from rest_framework.routers import SimpleRouter

from apps.workspaces.backendviews import terraform_state
from apps.workspaces.views import ResourceViewSet, StateVersionViewSet, TaskViewSet, VariableViewSet, WorkspaceViewSet

router = SimpleRouter()  # the API root is iacplatform.apiroot's
router.register("workspaces", WorkspaceViewSet, basename="workspace")
router.register("tasks", TaskViewSet, basename="task")
router.register(r"workspaces/(?P<workspace_pk>[0-9]+)/variables", VariableViewSet, basename="workspace-variable")
router.register("state-versions", StateVersionViewSet, basename="state-version")
router.register("resources", ResourceViewSet, basename="resource")
urlpatterns = [
    # Terraform's http state backend (apps/workspaces/backendviews.py), for task attempts only.
    path("workspaces/<int:workspace_id>/terraform-state/", terraform_state, name="terraform-state"),
    *router.urls,
]

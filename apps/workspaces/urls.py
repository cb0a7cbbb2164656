from __future__ import annotations

from rest_framework.routers import DefaultRouter

from apps.workspaces.views import TaskViewSet, WorkspaceViewSet

router = DefaultRouter()
router.register("workspaces", WorkspaceViewSet, basename="workspace")
router.register("tasks", TaskViewSet, basename="task")
urlpatterns = router.urls

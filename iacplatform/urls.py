from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from iacplatform import views
from iacplatform.apiroot import ApiRootView

# The admin's "View site" link: the browsable API (there is no other site to view).
admin.site.site_url = "/api/v1/"
admin.site.site_header = "IaC Platform administration"
admin.site.site_title = "IaC Platform admin"
# The model list stays on the index page: the sidebar took 275 px from every changelist, and
# the task, agent, job-run and lock lists scrolled sideways at 1400 px.
admin.site.enable_nav_sidebar = False

handler400 = "iacplatform.api.errors.bad_request"
handler403 = "iacplatform.api.errors.permission_denied"
handler404 = "iacplatform.api.errors.page_not_found"
handler500 = "iacplatform.api.errors.server_error"

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("api/v1/hub/", include("apps.hub.urls")),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/v1/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path(
        "api/v1/redoc/",
        SpectacularRedocView.as_view(url_name="schema", template_name="iacplatform/redoc.html"),
        name="api-redoc",
    ),
    path("api/v1/", ApiRootView.as_view(), name="api-root"),
    path("api/v1/", include("apps.search.urls")),
    path("api/v1/", include("apps.workspaces.urls")),
    path("api/v1/", include("apps.agents.urls")),
    path("api/v1/", include("apps.access.urls")),
]

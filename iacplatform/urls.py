from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from iacplatform import views

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
    path("api/v1/", include("apps.search.urls")),
    path("api/v1/", include("apps.workspaces.urls")),
    path("api/v1/", include("apps.agents.urls")),
]

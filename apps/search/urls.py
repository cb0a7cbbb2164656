from __future__ import annotations

from django.urls import path

from apps.search.views import ResourceSearchView

urlpatterns = [path("resources/search/", ResourceSearchView.as_view(), name="resource-search")]

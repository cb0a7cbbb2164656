"""The API root (``/api/v1/``): one index of every REST endpoint family, whichever app serves it.
Each app's router is a SimpleRouter (no root of its own), so the index is not just the first app's."""

from __future__ import annotations

from rest_framework.routers import APIRootView

from apps.access.drf import AUTHENTICATED


class ApiRootView(APIRootView):
    # Any active user: it lists links only; each endpoint applies its own rule.
    access_rules = {"get": AUTHENTICATED}
    api_root_dict = {
        "workspaces": "workspace-list",
        "tasks": "task-list",
        "agents": "agent-list",
        "state-versions": "state-version-list",
        "resources": "resource-list",
        "resources/search": "resource-search",
        "tokens": "api-token-list",
        "hub/sessions": "hub:sessions",
        "hub/takeovers": "hub:takeovers",
        "hub/drafts": "hub:draft",
        "schema": "schema",
        "docs": "api-docs",
        "redoc": "api-redoc",
    }

from __future__ import annotations

from django.apps import AppConfig


class HubConfig(AppConfig):
    name = "apps.hub"
    label = "hub"

    def ready(self) -> None:
        from apps.hub import checks  # noqa: F401  (registers the system checks)

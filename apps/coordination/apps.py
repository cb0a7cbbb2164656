from __future__ import annotations

from django.apps import AppConfig


class CoordinationConfig(AppConfig):
    name = "apps.coordination"
    label = "coordination"
    verbose_name = "Coordination"

    def ready(self) -> None:
        from apps.coordination import checks  # noqa: F401  (registers the system checks)

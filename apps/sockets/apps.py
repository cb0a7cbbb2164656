from __future__ import annotations

from django.apps import AppConfig


class SocketsConfig(AppConfig):
    name = "apps.sockets"
    label = "sockets"

    def ready(self) -> None:
        from apps.sockets import checks  # noqa: F401  (registers the system checks)

"""System checks for the connection caps' settings."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, register

POSITIVE = (
    "WS_MAX_CONNECTIONS_PER_USER",
    "WS_MAX_CONNECTIONS_PER_POOL",
    "WS_MAX_CONNECTIONS_PER_SOURCE",
    "SOCKET_CAP_REFRESH_SECONDS",
    "SOCKET_CAP_STALE_SECONDS",
)


@register()
def check_socket_cap_settings(app_configs: Any, **kwargs: Any) -> list[Error]:
    errors = [
        Error("%s must be positive, got %r." % (name, getattr(settings, name)), id="sockets.E001")
        for name in POSITIVE
        if getattr(settings, name) <= 0
    ]
    if not errors and settings.SOCKET_CAP_STALE_SECONDS < 2 * settings.SOCKET_CAP_REFRESH_SECONDS:
        errors.append(
            Error(
                "SOCKET_CAP_STALE_SECONDS (%g) must be at least twice SOCKET_CAP_REFRESH_SECONDS (%g)."
                % (settings.SOCKET_CAP_STALE_SECONDS, settings.SOCKET_CAP_REFRESH_SECONDS),
                hint="One late renewal would otherwise make a live replica's sockets stop counting.",
                id="sockets.E002",
            )
        )
    return errors

"""System checks for the hub's settings."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, register

POSITIVE = ("HUB_SESSION_TIMEOUT", "HUB_TAKEOVER_REQUEST_TIMEOUT", "HUB_DRAFT_TTL", "HUB_DRAFT_MAX_BYTES")


@register()
def check_hub_settings(app_configs: Any, **kwargs: Any) -> list[Error]:
    return [
        Error("%s must be positive, got %r." % (name, getattr(settings, name)), id="hub.E001")
        for name in POSITIVE
        if getattr(settings, name) <= 0
    ]

from __future__ import annotations

from django.apps import AppConfig
from django.http import HttpRequest


def platform_admins_only(request: HttpRequest) -> bool:
    """The Django admin is the platform admins' tool: it bypasses workspace roles, so staff status
    or model permissions alone do not open it."""
    from apps.access.policy import is_platform_admin

    return bool(request.user.is_staff) and is_platform_admin(request.user)


class AccessConfig(AppConfig):
    name = "apps.access"
    label = "access"
    verbose_name = "Access"

    def ready(self) -> None:
        from django.contrib import admin

        admin.site.has_permission = platform_admins_only  # type: ignore[method-assign]

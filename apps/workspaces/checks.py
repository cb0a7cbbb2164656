"""System checks for the Terraform state backend and the retention settings of apps/workspaces."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import Error, register

# Terraform's smallest state (no resources) is a few hundred bytes; below this nothing would fit.
MIN_STATE_BYTES = 4096

# Retention windows and job intervals: a window of 0 would prune what was just written.
POSITIVE = (
    "TERRAFORM_STATE_CREDENTIAL_SLACK",
    "STATE_LOCK_RETENTION_DAYS",
    "JOB_STATE_LOCK_RETENTION_EVERY",
    "TASK_LOG_RETENTION_DAYS",
    "JOB_TASK_LOG_RETENTION_EVERY",
    "STATE_VERSION_RETENTION_DAYS",
    "JOB_STATE_VERSION_RETENTION_EVERY",
    "STATE_TRANSITION_RETENTION_DAYS",
    "JOB_STATE_TRANSITION_RETENTION_EVERY",
)


@register()
def check_state_backend_settings(app_configs: Any, **kwargs: Any) -> list[Error]:
    errors: list[Error] = []
    url = settings.TERRAFORM_STATE_BACKEND_URL
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            errors.append(
                Error(
                    "TERRAFORM_STATE_BACKEND_URL must be an http(s)://host[:port][/prefix] URL, got %r." % url,
                    id="workspaces.E001",
                )
            )
    if settings.TERRAFORM_STATE_MAX_BYTES < MIN_STATE_BYTES:
        errors.append(
            Error(
                "TERRAFORM_STATE_MAX_BYTES must be at least %d, got %s."
                % (MIN_STATE_BYTES, settings.TERRAFORM_STATE_MAX_BYTES),
                id="workspaces.E002",
            )
        )
    for name in POSITIVE:
        if getattr(settings, name) <= 0:
            errors.append(Error("%s must be positive, got %s." % (name, getattr(settings, name)), id="workspaces.E003"))
    if settings.STATE_VERSIONS_KEEP < 1:
        errors.append(
            Error(
                "STATE_VERSIONS_KEEP must be at least 1, got %s." % settings.STATE_VERSIONS_KEEP,
                hint="A workspace's newest version numbers the next one (serial + 1): it is never pruned.",
                id="workspaces.E004",
            )
        )
    return errors

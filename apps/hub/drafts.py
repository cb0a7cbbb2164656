"""Drafts: a user's unsaved edit of one resource, kept for HUB_DRAFT_TTL seconds.

One draft per (workspace, resource, user); saving replaces it (an upsert on the unique
constraint, so two replicas saving at once leave one row, the last save). Expired drafts are
unreadable at once and deleted by the ``lock_draft_cleanup`` job.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.hub.actions import HubError, NotFound, require_edit, require_transaction
from apps.hub.models import Draft
from apps.workspaces.models import Workspace


def draft_size(content: Any) -> int:
    return len(json.dumps(content, separators=(",", ":")).encode("utf-8"))


def do_save_draft(
    *, user: Any, workspace: Workspace, resource_address: str, content: dict[str, Any], now: datetime | None = None
) -> Draft:
    """Create or replace the caller's draft of a resource; it lives HUB_DRAFT_TTL from now."""
    now = now or timezone.now()
    require_edit(user, workspace.pk, missing="no such workspace")
    if draft_size(content) > settings.HUB_DRAFT_MAX_BYTES:
        raise HubError("the draft is larger than %d bytes" % settings.HUB_DRAFT_MAX_BYTES)
    expires_at = now + timedelta(seconds=settings.HUB_DRAFT_TTL)
    with transaction.atomic():
        draft, _ = Draft.objects.update_or_create(
            workspace=workspace,
            resource_address=resource_address,
            user=user,
            defaults={"content": content, "expires_at": expires_at},
        )
    return draft


def get_draft(*, user: Any, workspace: Workspace, resource_address: str, now: datetime | None = None) -> Draft:
    now = now or timezone.now()
    require_edit(user, workspace.pk, missing="no draft of this resource")
    draft = Draft.objects.filter(
        workspace=workspace, resource_address=resource_address, user_id=user.pk, expires_at__gt=now
    ).first()
    if draft is None:
        raise NotFound("no draft of this resource")
    return draft


def do_delete_draft(*, user: Any, workspace: Workspace, resource_address: str) -> bool:
    require_edit(user, workspace.pk, missing="no draft of this resource")
    deleted, _ = Draft.objects.filter(workspace=workspace, resource_address=resource_address, user_id=user.pk).delete()
    return deleted > 0


def do_delete_expired_drafts(*, now: datetime, limit: int = 5000) -> int:
    require_transaction()
    expired = list(Draft.objects.filter(expires_at__lte=now).order_by("pk").values_list("pk", flat=True)[:limit])
    deleted, _ = Draft.objects.filter(pk__in=expired, expires_at__lte=now).delete()
    return deleted

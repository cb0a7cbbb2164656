from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class EditingSession(models.Model):
    """A user (one browser tab) with one resource of a workspace open.

    At most one active session per resource is the *editor* (holds the edit lock); the others are
    *waiting*: they see the resource and may ask the editor to hand it over (a takeover request).
    """

    class Mode(models.TextChoices):
        EDITOR = "editor"
        WAITING = "waiting"

    class EndReason(models.TextChoices):
        CLOSED = "closed"
        TAKEN_OVER = "taken_over"
        FORCED = "forced"
        EXPIRED = "expired"

    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="editing_sessions")
    resource_address = models.CharField(max_length=1000)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="editing_sessions")
    session_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    started_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(auto_now_add=True)
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.EDITOR)
    active = models.BooleanField(default=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    ended_reason = models.CharField(max_length=50, choices=EndReason.choices, blank=True)

    class Meta:
        constraints = [
            # The edit lock: one editor per resource. Takeover moves it with one transaction that
            # ends (or demotes) the old editor before promoting the new one.
            models.UniqueConstraint(
                fields=["workspace", "resource_address"],
                condition=Q(active=True, mode="editor"),
                name="one_editor_per_resource",
            )
        ]
        indexes = [models.Index(fields=["active", "last_seen_at"])]
        permissions = [("force_takeover", "Can take over a resource without the editor's consent")]

    def __str__(self) -> str:
        return "%s on %s" % (self.user_id, self.resource_address)


class TakeoverRequest(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        REJECTED = "rejected"
        EXPIRED = "expired"
        FORCED = "forced"

    session = models.ForeignKey(EditingSession, on_delete=models.CASCADE, related_name="takeover_requests")
    requester = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    requester_session_id = models.UUIDField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    message = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    responded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["session", "requester"],
                condition=Q(status="pending"),
                name="one_pending_takeover_per_requester",
            )
        ]
        indexes = [models.Index(fields=["status", "created_at"])]

    def __str__(self) -> str:
        return "takeover of %s by %s (%s)" % (self.session_id, self.requester_id, self.status)


class Draft(models.Model):
    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="drafts")
    resource_address = models.CharField(max_length=1000)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="drafts")
    content = models.JSONField(default=dict)
    updated_at = models.DateTimeField(auto_now=True)
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["workspace", "resource_address", "user"], name="one_draft_per_user_resource"
            )
        ]
        indexes = [models.Index(fields=["expires_at"])]

    def __str__(self) -> str:
        return "draft of %s by %s" % (self.resource_address, self.user_id)

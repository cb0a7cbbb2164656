"""Who may do what: workspace roles granted to users and teams, and the audit of every grant.

A role is a small integer so that "at least ``plan``" is one indexed comparison
(``role >= 20``) in the queries that filter what a user may see. Platform-wide rights are
model permissions (``access.platform_admin``, ``access.create_workspace``), granted in the admin
to users or groups like any Django permission.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class Role(models.IntegerChoices):
    READ = 10, "read"
    PLAN = 20, "plan"
    WRITE = 30, "write"
    ADMIN = 40, "admin"

    @classmethod
    def from_name(cls, name: str) -> Role:
        for role in cls:
            if role.label == name:
                return role
        raise ValueError("unknown role %r" % name[:50])


class WorkspaceAccess(models.Model):
    """One grant: a user or a team (a Django group) has ``role`` on ``workspace``."""

    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="access_grants")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True, related_name="workspace_access"
    )
    group = models.ForeignKey(
        "auth.Group", on_delete=models.CASCADE, null=True, blank=True, related_name="workspace_access"
    )
    role = models.PositiveSmallIntegerField(choices=Role.choices)
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    granted_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "workspace access"
        verbose_name_plural = "workspace access"
        constraints = [
            models.CheckConstraint(
                condition=(Q(user__isnull=False) & Q(group__isnull=True))
                | (Q(user__isnull=True) & Q(group__isnull=False)),
                name="access_user_xor_group",
            ),
            models.CheckConstraint(condition=Q(role__in=[r.value for r in Role]), name="access_role_valid"),
            models.UniqueConstraint(
                fields=["workspace", "user"], condition=Q(user__isnull=False), name="access_one_grant_per_user"
            ),
            models.UniqueConstraint(
                fields=["workspace", "group"], condition=Q(group__isnull=False), name="access_one_grant_per_group"
            ),
        ]
        # visible_to(user) looks grants up by user (or by the user's groups) first.
        indexes = [models.Index(fields=["user", "role"]), models.Index(fields=["group", "role"])]
        permissions = [
            ("platform_admin", "Can manage agent pools, agents, tokens and every workspace"),
            ("create_workspace", "Can create workspaces"),
        ]

    def __str__(self) -> str:
        return "%s: %s on %s" % (self.subject_name, Role(self.role).label, self.workspace_id)

    @property
    def subject_name(self) -> str:
        if self.user is not None:
            return "user %s" % self.user.get_username()
        return "team %s" % (self.group.name if self.group is not None else "?")


class AccessEvent(models.Model):
    """The audit: who granted or revoked which role of which workspace to whom, and when.

    Names are copied beside the foreign keys so the record still reads after the user, the team
    or the workspace is deleted. Rows are only ever inserted; they grow with administrators'
    actions, never with traffic.
    """

    class Action(models.TextChoices):
        GRANT = "grant"
        CHANGE = "change"
        REVOKE = "revoke"

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    action = models.CharField(max_length=10, choices=Action.choices)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    actor_name = models.CharField(max_length=150)
    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.SET_NULL, null=True, related_name="+")
    workspace_name = models.CharField(max_length=100)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    group = models.ForeignKey("auth.Group", on_delete=models.SET_NULL, null=True, related_name="+")
    subject_name = models.CharField(max_length=160)
    role = models.PositiveSmallIntegerField(choices=Role.choices, null=True)
    previous_role = models.PositiveSmallIntegerField(choices=Role.choices, null=True)

    class Meta:
        indexes = [models.Index(fields=["workspace", "at"])]
        ordering = ["-at", "-pk"]

    def __str__(self) -> str:
        return "%s %s %s on %s" % (self.actor_name, self.action, self.subject_name, self.workspace_name)

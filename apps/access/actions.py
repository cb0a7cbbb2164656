"""Granting and revoking workspace roles; every change is written to the audit (AccessEvent) in the
same transaction, so a grant without its record (or the reverse) never commits.

Who may call these is decided by the callers through apps/access/policy.py (the workspace's
``admin`` role or a platform admin); the actions themselves trust their caller, as the admin and
``do_create_workspace`` (the creator's own grant) use them too.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction

from apps.access.models import AccessEvent, Role, WorkspaceAccess


def _subject_name(*, user: Any, group: Group | None) -> str:
    if user is not None:
        return "user %s" % user.get_username()
    return "team %s" % (group.name if group is not None else "?")


def _record(
    *,
    action: str,
    actor: Any,
    workspace: Any,
    user: Any,
    group: Group | None,
    role: int | None,
    previous_role: int | None,
) -> None:
    AccessEvent.objects.create(
        action=action,
        actor=actor if actor is not None and actor.is_authenticated else None,
        actor_name=actor.get_username() if actor is not None and actor.is_authenticated else "(system)",
        workspace=workspace,
        workspace_name=workspace.name,
        user=user,
        group=group,
        subject_name=_subject_name(user=user, group=group),
        role=role,
        previous_role=previous_role,
    )


def do_grant_role(
    *, actor: Any, workspace: Any, role: Role, user: Any = None, group: Group | None = None
) -> tuple[WorkspaceAccess, bool]:
    """Give ``user`` or ``group`` (exactly one) ``role`` on the workspace, replacing the role they
    had; returns the grant and whether it is new. Granting the role already held changes nothing
    and records nothing."""
    if (user is None) == (group is None):
        raise ValueError("grant to exactly one of a user or a group")
    subject = {"user": user} if user is not None else {"group": group}
    with transaction.atomic():
        grant = WorkspaceAccess.objects.select_for_update().filter(workspace=workspace, **subject).first()
        if grant is None:
            try:
                # A savepoint: a concurrent grant to the same subject wins the unique index, and
                # we then update its row instead.
                with transaction.atomic():
                    grant = WorkspaceAccess.objects.create(workspace=workspace, role=role, granted_by=actor, **subject)
            except IntegrityError:
                grant = WorkspaceAccess.objects.select_for_update().get(workspace=workspace, **subject)
            else:
                _record(
                    action=AccessEvent.Action.GRANT,
                    actor=actor,
                    workspace=workspace,
                    user=user,
                    group=group,
                    role=role,
                    previous_role=None,
                )
                return grant, True
        if grant.role == role:
            return grant, False
        previous = grant.role
        grant.role, grant.granted_by = role, actor
        grant.save(update_fields=["role", "granted_by", "updated_at"])
        _record(
            action=AccessEvent.Action.CHANGE,
            actor=actor,
            workspace=workspace,
            user=user,
            group=group,
            role=role,
            previous_role=previous,
        )
    return grant, False


def do_revoke_role(*, actor: Any, grant: WorkspaceAccess) -> bool:
    """Remove a grant; False when it was already gone (a concurrent revoke)."""
    with transaction.atomic():
        locked = (
            WorkspaceAccess.objects.select_for_update(of=("self",))
            .select_related("workspace", "user", "group")
            .filter(pk=grant.pk)
            .first()
        )
        if locked is None:
            return False
        locked.delete()
        _record(
            action=AccessEvent.Action.REVOKE,
            actor=actor,
            workspace=locked.workspace,
            user=locked.user,
            group=locked.group,
            role=None,
            previous_role=locked.role,
        )
    return True

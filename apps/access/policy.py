"""The one permission rule of the platform. Every REST view (through apps/access/drf.py), every
socket consumer and every action that needs a role asks here, and nowhere else.

- A user's role on a workspace is the highest of their own grant and their teams' (Django
  groups') grants. Platform admins (active superusers, or users with ``access.platform_admin``)
  have ``admin`` on every workspace and alone manage agent pools and agents.
- ``read`` sees the workspace, its tasks, logs, state versions and CMDB resources; ``plan`` also
  queues plans and drift checks; ``write`` also applies, locks and unlocks, edits files and
  variables and opens editing sessions; ``admin`` also deletes, grants roles, moves pools, unlocks
  other people's locks and forces takeovers.
- A workspace the user cannot read is INVISIBLE: REST answers 404 and sockets close 4404, exactly
  as for a workspace that does not exist, so names and ids do not leak. A visible workspace on
  which the role is too low is FORBIDDEN (403, close 4403).
- Creating workspaces is a permission of its own (``access.create_workspace``); the creator gets
  ``admin`` on the new workspace.

Does NOT: cache anything across requests (a revoked grant takes effect on the next call; an open
socket is re-checked on its next frame), or audit group membership changes (Django's auth admin
owns those).
"""

from __future__ import annotations

import enum
from typing import Any, TypeVar

from django.db.models import Max, Model, Q, QuerySet
from rest_framework.exceptions import APIException, NotFound, PermissionDenied

from apps.access.models import Role, WorkspaceAccess

M = TypeVar("M", bound=Model)

# Which role queues (and cancels) which kind of task.
TASK_TYPE_ROLE = {"plan": Role.PLAN, "drift_check": Role.PLAN, "apply": Role.WRITE}


class Verdict(enum.Enum):
    ALLOWED = "allowed"
    FORBIDDEN = "forbidden"
    INVISIBLE = "invisible"


def is_active_user(user: Any) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active)


def is_platform_admin(user: Any) -> bool:
    return is_active_user(user) and bool(user.is_superuser or user.has_perm("access.platform_admin"))


def can_create_workspace(user: Any) -> bool:
    return is_platform_admin(user) or (is_active_user(user) and bool(user.has_perm("access.create_workspace")))


def grants_of(user: Any) -> QuerySet[WorkspaceAccess]:
    """The grants that apply to ``user``: their own and their teams'."""
    return WorkspaceAccess.objects.filter(Q(user_id=user.pk) | Q(group_id__in=user.groups.values("pk")))


def role_of(user: Any, workspace_id: int) -> Role | None:
    """The user's effective role on the workspace, or None when they may not even read it."""
    if not is_active_user(user):
        return None
    if is_platform_admin(user):
        return Role.ADMIN
    best = grants_of(user).filter(workspace_id=workspace_id).aggregate(best=Max("role"))["best"]
    return Role(best) if best is not None else None


def check(user: Any, workspace_id: int, role: Role) -> Verdict:
    have = role_of(user, workspace_id)
    if have is None:
        return Verdict.INVISIBLE
    return Verdict.ALLOWED if have >= role else Verdict.FORBIDDEN


def has_role(user: Any, workspace_id: int, role: Role) -> bool:
    return check(user, workspace_id, role) is Verdict.ALLOWED


class Denied(APIException):
    """A refused verdict as an exception: REST answers it as 404 (exactly DRF's own "Not found.",
    so an invisible workspace reads like a missing one) or 403."""

    def __init__(self, verdict: Verdict, detail: str | None = None) -> None:
        self.verdict = verdict
        if verdict is Verdict.INVISIBLE:
            self.status_code = NotFound.status_code
            super().__init__(NotFound.default_detail, NotFound.default_code)
        else:
            self.status_code = PermissionDenied.status_code
            super().__init__(
                detail or "Your role on this workspace does not allow this.", PermissionDenied.default_code
            )


def require(user: Any, workspace_id: int, role: Role) -> None:
    """Raise :class:`Denied` unless the user holds ``role`` on the workspace."""
    verdict = check(user, workspace_id, role)
    if verdict is not Verdict.ALLOWED:
        raise Denied(verdict)


def filter_visible(queryset: QuerySet[M], user: Any, *, via: str = "workspace", role: Role = Role.READ) -> QuerySet[M]:
    """``queryset`` narrowed to rows whose workspace (reached through the lookup ``via``; ``pk`` for
    workspaces themselves) the user holds at least ``role`` on."""
    if not is_active_user(user):
        return queryset.none()
    if is_platform_admin(user):
        return queryset
    workspace_ids = grants_of(user).filter(role__gte=role).values("workspace_id")
    return queryset.filter(**{"%s__in" % via: workspace_ids})


# Fields of a workspace whose change needs more than ``write``.
ADMIN_FIELDS = frozenset({"pool"})


def role_to_change(fields: set[str]) -> Role:
    """The role needed to change these fields of a workspace."""
    return Role.ADMIN if fields & ADMIN_FIELDS else Role.WRITE


def can_unlock(user: Any, *, workspace_id: int, locked_by_id: int | None) -> Verdict:
    """Anyone with ``write`` lifts their own lock; someone else's (or nobody's) needs ``admin``."""
    own = locked_by_id is not None and locked_by_id == getattr(user, "pk", None)
    return check(user, workspace_id, Role.WRITE if own else Role.ADMIN)


class VisibleQuerySet(QuerySet[M]):
    """A queryset of rows that belong to a workspace; ``visible_to`` is :func:`filter_visible`."""

    workspace_lookup = "workspace"

    def visible_to(self, user: Any, role: Role = Role.READ) -> QuerySet[M]:
        return filter_visible(self, user, via=self.workspace_lookup, role=role)

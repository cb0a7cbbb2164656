"""Users with roles: the building blocks of the access tests (and of other apps' tests)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, Permission, User

from apps.access.actions import do_grant_role
from apps.access.models import Role


def make_user(name: str, *perms: str, **fields: Any) -> User:
    """A user with the given ``app_label.codename`` permissions (a fresh instance: no stale cache)."""
    # No password: hashing one costs most of a second, and these users log in by force_login.
    user = User.objects.create_user(name, **fields)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return User.objects.get(pk=user.pk)


def grant(workspace: Any, role: Role | str, *, user: User | None = None, group: Group | None = None) -> None:
    if isinstance(role, str):
        role = Role.from_name(role)
    do_grant_role(actor=None, workspace=workspace, role=role, user=user, group=group)


def api_token(user: User) -> str:
    """A fresh API token of ``user`` (apps/access/tokens.py), raw."""
    from apps.access.tokens import do_create_token

    return do_create_token(user=user)[1]

"""The permission rule: roles per workspace for users and teams, platform admins, visibility."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User

from apps.access import policy
from apps.access.models import Role
from apps.workspaces.models import Task, Workspace
from tests.access.fixtures import grant, make_user
from tests.agents.fixtures import Pool

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_workspaces(agent_pool: Pool) -> tuple[Workspace, Workspace]:
    return (
        Workspace.objects.create(name="net", pool=agent_pool.pool),
        Workspace.objects.create(name="db", pool=agent_pool.pool),
    )


def test_a_user_without_grants_sees_nothing(two_workspaces: tuple[Workspace, Workspace]) -> None:
    user = make_user("nobody")
    net, _ = two_workspaces
    Task.objects.create(workspace=net, type="plan")
    assert policy.role_of(user, net.pk) is None
    assert policy.check(user, net.pk, Role.READ) is policy.Verdict.INVISIBLE
    assert not Workspace.objects.visible_to(user).exists()
    assert not Task.objects.visible_to(user).exists()


def test_roles_are_ordered_and_the_highest_of_user_and_teams_counts(
    two_workspaces: tuple[Workspace, Workspace],
) -> None:
    net, db = two_workspaces
    user = make_user("dev")
    team = Group.objects.create(name="platform-team")
    user.groups.add(team)
    grant(net, "read", user=user)
    grant(net, "write", group=team)
    grant(db, "plan", user=user)
    assert policy.role_of(user, net.pk) == Role.WRITE
    assert policy.check(user, net.pk, Role.WRITE) is policy.Verdict.ALLOWED
    assert policy.check(user, net.pk, Role.ADMIN) is policy.Verdict.FORBIDDEN
    assert policy.check(user, db.pk, Role.PLAN) is policy.Verdict.ALLOWED
    assert policy.check(user, db.pk, Role.WRITE) is policy.Verdict.FORBIDDEN
    assert list(Workspace.objects.visible_to(user).order_by("name")) == [db, net]
    assert list(Workspace.objects.visible_to(user, Role.WRITE)) == [net]


def test_platform_admins_and_superusers_are_admin_everywhere(two_workspaces: tuple[Workspace, Workspace]) -> None:
    net, _ = two_workspaces
    operator = make_user("operator", "access.platform_admin")
    root = User.objects.create_superuser("root", password="pw-root-long")
    for user in (operator, root):
        assert policy.is_platform_admin(user)
        assert policy.role_of(user, net.pk) == Role.ADMIN
        assert Workspace.objects.visible_to(user).count() == 2
        assert policy.can_create_workspace(user)


def test_inactive_users_have_no_role(two_workspaces: tuple[Workspace, Workspace]) -> None:
    net, _ = two_workspaces
    user = make_user("gone", "access.platform_admin", is_active=False)
    grant(net, "admin", user=user)
    assert policy.role_of(user, net.pk) is None
    assert not policy.is_platform_admin(user)
    assert not Workspace.objects.visible_to(user).exists()


def test_creating_workspaces_is_a_permission_of_its_own() -> None:
    assert not policy.can_create_workspace(make_user("plain"))
    creator = make_user("creator", "access.create_workspace")
    assert policy.can_create_workspace(creator)
    assert not policy.is_platform_admin(creator)


def test_unlocking_someone_elses_lock_needs_admin(two_workspaces: tuple[Workspace, Workspace]) -> None:
    net, _ = two_workspaces
    writer, other = make_user("writer"), make_user("other")
    grant(net, "write", user=writer)
    assert policy.can_unlock(writer, workspace_id=net.pk, locked_by_id=writer.pk) is policy.Verdict.ALLOWED
    assert policy.can_unlock(writer, workspace_id=net.pk, locked_by_id=other.pk) is policy.Verdict.FORBIDDEN
    assert policy.can_unlock(writer, workspace_id=net.pk, locked_by_id=None) is policy.Verdict.FORBIDDEN
    grant(net, "admin", user=writer)
    assert policy.can_unlock(writer, workspace_id=net.pk, locked_by_id=other.pk) is policy.Verdict.ALLOWED

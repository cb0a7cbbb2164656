"""The admin is for platform admins; grants made there are audited like the API's."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from apps.access.models import AccessEvent, Role, WorkspaceAccess
from apps.workspaces.models import Task, Workspace
from tests.access.fixtures import grant, make_user

pytestmark = pytest.mark.django_db


def _admin(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_staff_without_platform_admin_cannot_open_the_admin(workspace: Workspace) -> None:
    staff = make_user("staff", "workspaces.change_workspace", is_staff=True)
    grant(workspace, "admin", user=staff)  # even a workspace admin: the admin bypasses roles
    assert _admin(staff).get("/admin/workspaces/workspace/").status_code == 302  # to the login page
    operator = make_user("operator", "access.platform_admin", "workspaces.view_workspace", is_staff=True)
    assert _admin(operator).get("/admin/workspaces/workspace/").status_code == 200


def test_grants_made_and_revoked_in_the_admin_are_audited(workspace: Workspace) -> None:
    root = User.objects.create_superuser("root")
    dev = make_user("dev")
    client = _admin(root)
    added = client.post(
        "/admin/access/workspaceaccess/add/", {"workspace": workspace.pk, "user": dev.pk, "role": Role.PLAN}
    )
    assert added.status_code == 302, added.content
    grant_row = WorkspaceAccess.objects.get(user=dev)
    assert grant_row.role == Role.PLAN and grant_row.granted_by == root
    deleted = client.post("/admin/access/workspaceaccess/%d/delete/" % grant_row.pk, {"post": "yes"})
    assert deleted.status_code == 302
    assert not WorkspaceAccess.objects.exists()
    assert [(e.action, e.actor_name, e.subject_name) for e in AccessEvent.objects.order_by("pk")] == [
        ("grant", "root", "user dev"),
        ("revoke", "root", "user dev"),
    ]
    assert client.get("/admin/access/accessevent/").status_code == 200
    assert client.get("/admin/access/accessevent/add/").status_code == 403


def test_the_task_list_shows_who_queued_each_task(workspace: Workspace) -> None:
    planner = make_user("planner")
    Task.objects.create(workspace=workspace, type="plan", created_by=planner)
    page = _admin(User.objects.create_superuser("root")).get("/admin/workspaces/task/")
    assert page.status_code == 200 and b"planner" in page.content

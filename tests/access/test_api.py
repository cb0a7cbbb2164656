"""Granting and revoking roles over the API, the audit of it, and what each role may do."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from rest_framework.test import APIClient

from apps.access.models import AccessEvent, Role, WorkspaceAccess
from apps.workspaces.models import Task, Workspace
from tests.access.fixtures import grant, make_user
from tests.agents.fixtures import OUTPUTS_ONLY, Pool

pytestmark = pytest.mark.django_db


def _client(user: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_the_creator_of_a_workspace_is_its_admin_and_others_do_not_see_it(agent_pool: Pool) -> None:
    creator, stranger = make_user("creator", "access.create_workspace"), make_user("stranger")
    body = {"name": "net", "pool": "pool-a", "terraform_files": OUTPUTS_ONLY}
    assert _client(stranger).post("/api/v1/workspaces/", body, format="json").status_code == 403
    created = _client(creator).post("/api/v1/workspaces/", body, format="json")
    assert created.status_code == 201, created.content
    ws_id = created.json()["id"]
    assert WorkspaceAccess.objects.get(workspace_id=ws_id).role == Role.ADMIN
    assert _client(stranger).get("/api/v1/workspaces/").json()["results"] == []
    missing = _client(stranger).get("/api/v1/workspaces/%d/" % ws_id)
    assert missing.status_code == 404
    assert missing.json() == _client(stranger).get("/api/v1/workspaces/999999/").json()  # nothing leaks


def test_a_workspace_admin_grants_and_revokes_roles_and_each_change_is_audited(workspace: Workspace) -> None:
    admin, dev = make_user("admin"), make_user("dev")
    Group.objects.create(name="sre")
    grant(workspace, "admin", user=admin)
    api = _client(admin)
    url = "/api/v1/workspaces/%d/access/" % workspace.pk

    assert _client(dev).get("/api/v1/workspaces/%d/" % workspace.pk).status_code == 404
    made = api.post(url, {"user": "dev", "role": "read"}, format="json")
    assert made.status_code == 201, made.content
    assert made.json()["user"] == "dev" and made.json()["role"] == "read" and made.json()["granted_by"] == "admin"
    assert _client(dev).get("/api/v1/workspaces/%d/" % workspace.pk).status_code == 200
    # read may not queue a plan; plan may
    assert _client(dev).post("/api/v1/tasks/", {"workspace": workspace.pk, "type": "plan"}).status_code == 403
    assert api.post(url, {"user": "dev", "role": "plan"}, format="json").status_code == 200
    assert _client(dev).post("/api/v1/tasks/", {"workspace": workspace.pk, "type": "plan"}).status_code == 201
    assert _client(dev).post("/api/v1/tasks/", {"workspace": workspace.pk, "type": "apply"}).status_code == 403
    # a reader may not grant
    assert _client(dev).post(url, {"user": "dev", "role": "admin"}, format="json").status_code == 403
    assert api.post(url, {"team": "sre", "role": "write"}, format="json").status_code == 201

    grants = api.get(url).json()
    assert {(g["user"], g["team"], g["role"]) for g in grants} == {
        ("admin", None, "admin"),
        ("dev", None, "plan"),
        (None, "sre", "write"),
    }
    dev_grant = next(g for g in grants if g["user"] == "dev")
    assert api.delete("%s%d/" % (url, dev_grant["id"])).status_code == 204
    assert api.delete("%s%d/" % (url, dev_grant["id"])).status_code == 404
    assert _client(dev).get("/api/v1/workspaces/%d/" % workspace.pk).status_code == 404

    events = api.get("/api/v1/workspaces/%d/access-events/" % workspace.pk).json()
    assert [(e["action"], e["actor"], e["subject"], e["role"], e["previous_role"]) for e in events] == [
        ("revoke", "admin", "user dev", None, "plan"),
        ("grant", "admin", "team sre", "write", None),
        ("change", "admin", "user dev", "plan", "read"),
        ("grant", "admin", "user dev", "read", None),
        ("grant", "(system)", "user admin", "admin", None),
    ]
    assert api.get("/api/v1/workspaces/%d/access-events/" % workspace.pk, {"limit": "x"}).status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        {"role": "read"},
        {"user": "dev", "team": "sre", "role": "read"},
        {"user": "nobody-by-that-name", "role": "read"},
        {"user": "dev", "role": "owner"},
        {"user": "dev"},
    ],
)
def test_bad_grants_are_400_and_change_nothing(workspace: Workspace, body: dict[str, str]) -> None:
    admin = make_user("admin")
    make_user("dev")
    Group.objects.create(name="sre")
    grant(workspace, "admin", user=admin)
    before = AccessEvent.objects.count()
    response = _client(admin).post("/api/v1/workspaces/%d/access/" % workspace.pk, body, format="json")
    assert response.status_code == 400, response.content
    assert WorkspaceAccess.objects.count() == 1
    assert AccessEvent.objects.count() == before


def test_the_audit_outlives_the_workspace(workspace: Workspace) -> None:
    grant(workspace, "read", user=make_user("dev"))
    workspace.delete()
    event = AccessEvent.objects.get()
    assert (event.workspace, event.workspace_name, event.subject_name) == (None, "ws-a", "user dev")


def test_lists_show_only_visible_workspaces_and_their_tasks(agent_pool: Pool) -> None:
    mine = Workspace.objects.create(name="mine", pool=agent_pool.pool)
    theirs = Workspace.objects.create(name="theirs", pool=agent_pool.pool)
    mine_task = Task.objects.create(workspace=mine, type="plan")
    theirs_task = Task.objects.create(workspace=theirs, type="plan")
    dev = make_user("dev")
    grant(mine, "read", user=dev)
    api = _client(dev)
    assert [w["name"] for w in api.get("/api/v1/workspaces/").json()["results"]] == ["mine"]
    assert [t["id"] for t in api.get("/api/v1/tasks/").json()["results"]] == [mine_task.pk]
    assert api.get("/api/v1/tasks/", {"workspace": theirs.pk}).json()["results"] == []
    for path in ("/api/v1/tasks/%d/", "/api/v1/tasks/%d/log/"):
        assert api.get(path % theirs_task.pk).status_code == 404
        assert api.get(path % mine_task.pk).status_code == 200
    # queueing on an invisible workspace reads like a missing one
    refused = api.post("/api/v1/tasks/", {"workspace": theirs.pk, "type": "plan"}, format="json")
    missing = api.post("/api/v1/tasks/", {"workspace": 999999, "type": "plan"}, format="json")
    assert refused.status_code == missing.status_code == 400
    assert refused.json()["workspace"][0].replace(str(theirs.pk), "N") == missing.json()["workspace"][0].replace(
        "999999", "N"
    )


def test_moving_a_workspace_to_another_pool_needs_admin(workspace: Workspace, agent_pool: Pool) -> None:
    from apps.agents.models import AgentPool

    other = AgentPool(name="pool-b")
    other.set_new_token()
    other.save()
    writer = make_user("writer")
    grant(workspace, "write", user=writer)
    api = _client(writer)
    url = "/api/v1/workspaces/%d/" % workspace.pk
    assert api.patch(url, {"description": "edited"}, format="json").status_code == 200
    assert api.patch(url, {"pool": "pool-b"}, format="json").status_code == 403
    assert api.patch(url, {"pool": "pool-a", "description": "same pool"}, format="json").status_code == 200
    grant(workspace, "admin", user=writer)
    assert api.patch(url, {"pool": "pool-b"}, format="json").status_code == 200
    workspace.refresh_from_db()
    assert workspace.pool == other


def test_only_admins_lift_someone_elses_lock(workspace: Workspace) -> None:
    owner, writer, admin = make_user("owner"), make_user("writer"), make_user("admin")
    grant(workspace, "write", user=owner)
    grant(workspace, "write", user=writer)
    grant(workspace, "admin", user=admin)
    url = "/api/v1/workspaces/%d/" % workspace.pk
    assert _client(owner).post(url + "lock/", {"reason": "mine"}, format="json").status_code == 200
    assert _client(writer).post(url + "unlock/").status_code == 403
    workspace.refresh_from_db()
    assert workspace.locked
    assert _client(admin).post(url + "unlock/").status_code == 200
    assert _client(owner).post(url + "lock/", {}, format="json").status_code == 200
    assert _client(owner).post(url + "unlock/").json()["locked"] is False


def test_tasks_show_who_queued_them(workspace: Workspace) -> None:
    planner = make_user("planner")
    grant(workspace, "plan", user=planner)
    created = _client(planner).post("/api/v1/tasks/", {"workspace": workspace.pk, "type": "plan"}, format="json")
    assert created.json()["created_by"] == "planner"
    Task.objects.create(workspace=workspace, type="drift_check")  # the leader's jobs: nobody
    listed = _client(planner).get("/api/v1/tasks/").json()["results"]
    assert [t["created_by"] for t in listed] == [None, "planner"]

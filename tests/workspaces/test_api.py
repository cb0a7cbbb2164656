"""The REST API: CRUD, lock/unlock, tasks, cancel, logs; bad input is a 400 with field errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from rest_framework.test import APIClient

from apps.agents.models import Agent
from apps.workspaces.models import Task, TaskLogChunk, Workspace
from tests.access.fixtures import api_token, grant, make_user
from tests.agents.fixtures import OUTPUTS_ONLY, Pool

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice(db: None) -> User:
    return make_user("alice", "access.create_workspace")


@pytest.fixture
def client(alice: User) -> APIClient:
    token = api_token(alice)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION="Token " + token)
    return api


@pytest.fixture
def workspace(workspace: Workspace, alice: User) -> Workspace:
    """The shared fixture's workspace, with alice its admin."""
    grant(workspace, "admin", user=alice)
    return workspace


def test_anonymous_requests_are_refused(agent_pool: Pool) -> None:
    assert APIClient().get("/api/v1/workspaces/").status_code in (401, 403)


def test_workspace_crud_and_lock(client: APIClient, agent_pool: Pool) -> None:
    body = {"name": "net", "pool": "pool-a", "terraform_files": OUTPUTS_ONLY}
    created = client.post("/api/v1/workspaces/", body, format="json")
    assert created.status_code == 201, created.content
    ws_id = created.json()["id"]
    assert client.get("/api/v1/workspaces/%d/" % ws_id).json()["terraform_files"] == OUTPUTS_ONLY
    patched = client.patch("/api/v1/workspaces/%d/" % ws_id, {"description": "d"}, format="json")
    assert patched.json()["description"] == "d"
    locked = client.post("/api/v1/workspaces/%d/lock/" % ws_id, {"reason": "maintenance"}, format="json")
    assert locked.json()["locked"] is True
    assert locked.json()["lock_reason"] == "maintenance"
    assert client.post("/api/v1/workspaces/%d/lock/" % ws_id, {}, format="json").status_code == 409
    assert client.post("/api/v1/workspaces/%d/unlock/" % ws_id).json()["locked"] is False
    assert client.delete("/api/v1/workspaces/%d/" % ws_id).status_code == 204


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "", "pool": "pool-a", "terraform_files": {}}, "name"),
        ({"name": "has space", "pool": "pool-a", "terraform_files": {}}, "name"),
        ({"name": "x", "pool": "nope", "terraform_files": {}}, "pool"),
        ({"name": "x", "pool": "pool-a", "terraform_files": {"../evil.tf": ""}}, "terraform_files"),
        ({"name": "x", "pool": "pool-a", "terraform_files": {"terraform.tfstate": "{}"}}, "terraform_files"),
        ({"name": "x", "pool": "pool-a", "terraform_files": {"a.tf": 5}}, "terraform_files"),
        ({"name": "x", "pool": "pool-a", "terraform_files": ["a.tf"]}, "terraform_files"),
        ({"name": "x", "pool": "pool-a", "terraform_files": {"a.tf": "nul\x00"}}, "terraform_files"),
        (
            {"name": "x", "pool": "pool-a", "terraform_files": {}, "drift_check_interval_minutes": 0},
            "drift_check_interval_minutes",
        ),
        (
            {"name": "x", "pool": "pool-a", "terraform_files": {}, "drift_check_interval_minutes": "soon"},
            "drift_check_interval_minutes",
        ),
        ({"name": "x", "pool": "pool-a"}, "terraform_files"),
    ],
)
def test_invalid_workspace_bodies_get_400_with_the_field(
    client: APIClient, agent_pool: Pool, body: Any, field: str
) -> None:
    response = client.post("/api/v1/workspaces/", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert Workspace.objects.count() == 0


@pytest.mark.parametrize("raw", ["{not json", "[1, 2]", '"text"', "null", json.dumps({"name": ["x"]})])
def test_garbage_bodies_get_400(client: APIClient, agent_pool: Pool, raw: str) -> None:
    response = client.post("/api/v1/workspaces/", raw, content_type="application/json")
    assert response.status_code == 400
    response = client.post("/api/v1/tasks/", raw, content_type="application/json")
    assert response.status_code == 400


def test_tasks_create_list_retrieve_cancel_and_log(client: APIClient, workspace: Workspace) -> None:
    created = client.post("/api/v1/tasks/", {"workspace": workspace.pk, "type": "plan"}, format="json")
    assert created.status_code == 201, created.content
    task_id = created.json()["id"]
    assert created.json()["status"] == "pending"  # no agent online
    listed = client.get("/api/v1/tasks/", {"workspace": str(workspace.pk), "status": "pending"}).json()
    assert [t["id"] for t in listed["results"]] == [task_id]
    assert client.get("/api/v1/tasks/", {"status": "bogus"}).status_code == 400
    assert client.get("/api/v1/tasks/", {"workspace": "x"}).status_code == 400
    TaskLogChunk.objects.bulk_create([TaskLogChunk(task_id=task_id, seq=i, text="l%d\n" % i) for i in range(3)])
    log = client.get("/api/v1/tasks/%d/log/" % task_id, {"after": 0}).json()
    assert [c["seq"] for c in log["chunks"]] == [1, 2]
    assert log["complete"] is False
    assert client.get("/api/v1/tasks/%d/log/" % task_id, {"after": "x"}).status_code == 400
    cancelled = client.post("/api/v1/tasks/%d/cancel/" % task_id)
    assert cancelled.status_code == 202
    assert cancelled.json()["status"] == "cancelled"
    assert client.post("/api/v1/tasks/%d/cancel/" % task_id).status_code == 409
    assert client.get("/api/v1/tasks/%d/log/" % task_id).json()["complete"] is True


@pytest.mark.parametrize(
    "body",
    [
        {"workspace": 999999, "type": "plan"},
        {"workspace": "abc", "type": "plan"},
        {"type": "plan"},
        {"workspace": 1, "type": "destroy-everything"},
        {"workspace": 1, "type": "plan", "timeout_seconds": 0},
    ],
)
def test_invalid_task_bodies_get_400(client: APIClient, workspace: Workspace, body: dict[str, Any]) -> None:
    if body.get("workspace") == 1:
        body = {**body, "workspace": workspace.pk}
    response = client.post("/api/v1/tasks/", body, format="json")
    assert response.status_code == 400, response.content
    assert Task.objects.count() == 0


def test_agents_are_listed_read_only_with_connected_pod(client: APIClient, alice: User, agent_pool: Pool) -> None:
    assert client.get("/api/v1/agents/").status_code == 403  # platform admins only
    alice.is_superuser = True
    alice.save()
    Agent.objects.create(agent_id="a1", pool=agent_pool.pool, connected_pod="web-2", status="online")
    agents = client.get("/api/v1/agents/").json()["results"]
    assert [(a["agent_id"], a["connected_pod"], a["pool"]) for a in agents] == [("a1", "web-2", "pool-a")]
    assert client.post("/api/v1/agents/", {"agent_id": "x"}, format="json").status_code == 405


def test_schema_documents_the_api(client: APIClient) -> None:
    schema = client.get("/api/v1/schema/", HTTP_ACCEPT="application/json").json()
    for route in ("/api/v1/workspaces/{id}/lock/", "/api/v1/tasks/{id}/cancel/", "/api/v1/tasks/{id}/log/"):
        assert route in schema["paths"]


def test_createagentpool_prints_a_token_once_that_authenticates(capsys: pytest.CaptureFixture[str]) -> None:
    from apps.agents.actions import authenticate_pool

    call_command("createagentpool", "builders")
    token = capsys.readouterr().out.strip()
    pool = authenticate_pool(token)
    assert pool is not None
    assert pool.name == "builders"
    assert token not in pool.token_hash
    with pytest.raises(Exception, match="exists"):
        call_command("createagentpool", "builders")
    call_command("createagentpool", "builders", "--rotate")
    assert authenticate_pool(token) is None


def test_list_counts_are_bounded_yet_every_page_links_to_the_next(
    client: APIClient, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from iacplatform.api import pagination

    Task.objects.bulk_create([Task(workspace=workspace, type="plan", status="succeeded") for _ in range(12)])
    assert client.get("/api/v1/tasks/?limit=5").json()["count"] == 12  # exact below the bound
    monkeypatch.setattr(pagination, "CAP", 2)
    with CaptureQueriesContext(connection) as queries:
        page = client.get("/api/v1/tasks/?limit=2&offset=6").json()
    counts = [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].startswith("SELECT COUNT(") and "workspaces_task" in q["sql"]  # not the throttle's
    ]
    assert counts and all("LIMIT 11" in sql for sql in counts)  # offset + limit + CAP + 1 rows at most
    assert len(page["results"]) == 2 and page["count"] >= 11 and page["next"] is not None


def test_cmdb_resources_and_state_versions_are_searchable(client: APIClient, workspace: Workspace) -> None:
    from apps.workspaces.models import Resource, StateVersion

    for address, type in (("aws_instance.web", "aws_instance"), ("module.net.aws_vpc.main", "aws_vpc")):
        Resource.objects.create(workspace=workspace, address=address, type=type, name="x", state_serial=1)
    StateVersion.objects.create(workspace=workspace, serial=1, lineage="L", state={"secret": "s3cr3t"})
    found = client.get("/api/v1/resources/", {"type": "aws_vpc"}).json()["results"]
    assert [r["address"] for r in found] == ["module.net.aws_vpc.main"]
    found = client.get("/api/v1/resources/", {"address": "web", "workspace": str(workspace.pk)}).json()["results"]
    assert [r["address"] for r in found] == ["aws_instance.web"]
    assert client.get("/api/v1/resources/", {"mode": "bogus"}).status_code == 400
    assert client.get("/api/v1/resources/", {"address": "a\x00b"}).status_code == 400
    versions = client.get("/api/v1/state-versions/", {"workspace": workspace.pk}).json()["results"]
    assert [(v["workspace"], v["serial"]) for v in versions] == [(workspace.pk, 1)]
    assert "s3cr3t" not in json.dumps(versions)  # listings never carry the state's content
    assert client.get("/api/v1/state-versions/", {"status": "bogus"}).status_code == 400

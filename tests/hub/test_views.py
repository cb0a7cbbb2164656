from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from apps.hub.models import Draft, EditingSession, TakeoverRequest
from apps.workspaces.models import Workspace

pytestmark = pytest.mark.django_db

ADDR = "module.net.aws_vpc.main"


def _client(user: User | None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


def _open(client: APIClient, workspace: Workspace) -> dict[str, Any]:
    response = client.post("/api/v1/hub/sessions/", {"workspace": workspace.pk, "resource_address": ADDR})
    assert response.status_code == 201, response.content
    return response.json()


def test_the_api_needs_a_login(workspace: Workspace) -> None:
    response = _client(None).post("/api/v1/hub/sessions/", {"workspace": workspace.pk, "resource_address": ADDR})
    assert response.status_code == 403
    assert not EditingSession.objects.exists()


def test_open_tells_a_waiting_session_who_edits(workspace: Workspace, alice: User, bob: User) -> None:
    first = _open(_client(alice), workspace)
    second = _open(_client(bob), workspace)
    assert first["mode"] == "editor" and first["editor"] is None
    assert second["mode"] == "waiting"
    assert second["editor"]["username"] == "alice"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"resource_address": ADDR}, "workspace"),
        ({"workspace": 999999, "resource_address": ADDR}, "workspace"),
        ({"workspace": "abc", "resource_address": ADDR}, "workspace"),
        ({"workspace": None, "resource_address": ""}, "resource_address"),
        ({"workspace": None, "resource_address": "x" * 1001}, "resource_address"),
    ],
)
def test_open_rejects_bad_input_clearly(workspace: Workspace, alice: User, body: dict[str, Any], field: str) -> None:
    if body.get("workspace", 0) is None:
        body = {**body, "workspace": workspace.pk}
    response = _client(alice).post("/api/v1/hub/sessions/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert not EditingSession.objects.exists()


def test_session_calls_are_for_the_owner_only(workspace: Workspace, alice: User, bob: User) -> None:
    session = _open(_client(alice), workspace)
    sid = session["session_id"]
    for method, path in [
        ("get", "/api/v1/hub/sessions/%s/" % sid),
        ("post", "/api/v1/hub/sessions/%s/heartbeat/" % sid),
        ("post", "/api/v1/hub/sessions/%s/close/" % sid),
        ("post", "/api/v1/hub/sessions/%s/claim/" % sid),
    ]:
        response = getattr(_client(bob), method)(path)
        assert response.status_code == 404, (path, response.content)
        assert response.json()["code"] == "not_found"
    assert EditingSession.objects.get(session_id=sid).active
    assert _client(alice).get("/api/v1/hub/sessions/not-a-uuid/").status_code == 404


def test_heartbeat_and_close(workspace: Workspace, alice: User) -> None:
    client = _client(alice)
    sid = _open(client, workspace)["session_id"]
    assert client.post("/api/v1/hub/sessions/%s/heartbeat/" % sid).status_code == 200
    closed = client.post("/api/v1/hub/sessions/%s/close/" % sid)
    assert closed.status_code == 200 and closed.json()["ended_reason"] == "closed"
    late = client.post("/api/v1/hub/sessions/%s/heartbeat/" % sid)
    assert late.status_code == 409 and late.json()["code"] == "conflict"


def test_takeover_request_respond_and_status(workspace: Workspace, alice: User, bob: User) -> None:
    holder, taker = _client(alice), _client(bob)
    editor_sid = _open(holder, workspace)["session_id"]
    waiting_sid = _open(taker, workspace)["session_id"]

    created = taker.post("/api/v1/hub/takeovers/", {"session_id": waiting_sid, "message": "please"}, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["status"] == "pending" and body["session_id"] == editor_sid and body["expires_at"]
    again = taker.post("/api/v1/hub/takeovers/", {"session_id": waiting_sid}, format="json")
    assert again.status_code == 200 and again.json()["id"] == body["id"]

    assert taker.post("/api/v1/hub/takeovers/%d/respond/" % body["id"], {"approve": True}).status_code == 403
    bad = holder.post("/api/v1/hub/takeovers/%d/respond/" % body["id"], {"approve": "perhaps"}, format="json")
    assert bad.status_code == 400 and "approve" in bad.json()
    answered = holder.post("/api/v1/hub/takeovers/%d/respond/" % body["id"], {"approve": True}, format="json")
    assert answered.status_code == 200 and answered.json()["status"] == "approved"

    status = taker.get("/api/v1/hub/takeovers/%d/" % body["id"])
    assert status.status_code == 200 and status.json()["status"] == "approved"
    assert status.json()["expires_at"] is None
    assert taker.get("/api/v1/hub/sessions/%s/" % waiting_sid).json()["mode"] == "editor"
    assert holder.get("/api/v1/hub/sessions/%s/" % editor_sid).json()["ended_reason"] == "taken_over"


def test_takeover_of_a_bad_session_id_is_a_clear_error(workspace: Workspace, alice: User) -> None:
    response = _client(alice).post("/api/v1/hub/takeovers/", {"session_id": "nope"}, format="json")
    assert response.status_code == 400 and "session_id" in response.json()
    assert not TakeoverRequest.objects.exists()


def test_force_needs_the_permission(workspace: Workspace, alice: User, bob: User, carol: User) -> None:
    _open(_client(alice), workspace)
    bob_sid = _open(_client(bob), workspace)["session_id"]
    carol_sid = _open(_client(carol), workspace)["session_id"]
    refused = _client(bob).post("/api/v1/hub/takeovers/force/", {"session_id": bob_sid}, format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    forced = _client(carol).post("/api/v1/hub/takeovers/force/", {"session_id": carol_sid}, format="json")
    assert forced.status_code == 201 and forced.json()["status"] == "forced"


def test_drafts_round_trip(workspace: Workspace, alice: User, bob: User) -> None:
    client = _client(alice)
    key: dict[str, Any] = {"workspace": workspace.pk, "resource_address": ADDR}
    assert client.get("/api/v1/hub/drafts/", key).status_code == 404
    saved = client.put("/api/v1/hub/drafts/", {**key, "content": {"ami": "ami-1"}}, format="json")
    assert saved.status_code == 200 and saved.json()["content"] == {"ami": "ami-1"}
    assert client.get("/api/v1/hub/drafts/", key).json()["content"] == {"ami": "ami-1"}
    assert _client(bob).get("/api/v1/hub/drafts/", key).status_code == 404
    assert (
        client.delete("/api/v1/hub/drafts/?workspace=%d&resource_address=%s" % (workspace.pk, ADDR)).status_code == 204
    )
    assert client.get("/api/v1/hub/drafts/", key).status_code == 404


@pytest.mark.parametrize(
    ("content", "message"),
    [(["a", "list"], "JSON object"), ("text", "JSON object"), ({"big": "x" * 300}, "larger than 200 bytes")],
)
def test_bad_drafts_are_refused_and_lose_nothing(
    workspace: Workspace, alice: User, settings: Any, content: Any, message: str
) -> None:
    settings.HUB_DRAFT_MAX_BYTES = 200
    client = _client(alice)
    key = {"workspace": workspace.pk, "resource_address": ADDR}
    client.put("/api/v1/hub/drafts/", {**key, "content": {"kept": True}}, format="json")
    response = client.put("/api/v1/hub/drafts/", {**key, "content": content}, format="json")
    assert response.status_code == 400
    assert message in str(response.json()["content"])
    assert Draft.objects.get().content == {"kept": True}


def test_draft_lookup_needs_its_key(workspace: Workspace, alice: User) -> None:
    response = _client(alice).get("/api/v1/hub/drafts/", {"workspace": workspace.pk})
    assert response.status_code == 400 and "resource_address" in response.json()


def test_the_schema_describes_the_hub(alice: User) -> None:
    response = _client(alice).get("/api/v1/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ("/api/v1/hub/sessions/", "/api/v1/hub/takeovers/force/", "/api/v1/hub/drafts/"):
        assert path in paths

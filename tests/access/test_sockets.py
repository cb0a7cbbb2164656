"""Both hub sockets per role, by the same rule as REST: the task log socket needs read on the
task's workspace, an editing session's socket is its owner's while they hold write."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User
from django.db import connections
from rest_framework.test import APIClient

from apps.access.models import WorkspaceAccess
from apps.hub.models import EditingSession, TakeoverRequest
from apps.hub.routing import websocket_urlpatterns
from apps.workspaces.models import Task, Workspace
from tests.access.fixtures import grant, make_user

pytestmark = pytest.mark.django_db(transaction=True)

app = URLRouter(websocket_urlpatterns)
ADDR = "aws_instance.web"
LOG_SOCKET = {"anonymous": 4403, "none": 4404, "read": "open", "plan": "open", "write": "open", "admin": "open"}
LOG_SOCKET["platform"] = "open"
SESSION_SOCKET = {"anonymous": 4403, "none": 4404, "read": 4403, "plan": 4403, "write": "open", "admin": "open"}
SESSION_SOCKET["platform"] = "open"


@pytest.fixture(autouse=True)
def memory_layer(settings: Any) -> Iterator[None]:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    yield
    async_to_sync(get_channel_layer().flush)()


@pytest.fixture(autouse=True)
async def _close_consumer_connections() -> AsyncIterator[None]:
    yield
    await database_sync_to_async(connections.close_all)()


def _principal(workspace: Workspace, role: str) -> User:
    if role == "platform":
        return make_user("p-platform", "access.platform_admin")
    user = make_user("p-" + role)
    if role != "none":
        grant(workspace, role, user=user)
    return user


async def _first(path: str, user: Any) -> dict[str, Any]:
    """Connect and return the first message: a frame ({"type": "websocket.send"}) or the close."""
    communicator = WebsocketCommunicator(app, path)
    communicator.scope["user"] = user
    connected, _ = await communicator.connect()
    assert connected  # accepted first, so that a close code reaches the client
    message = await communicator.receive_output(timeout=5)
    await communicator.disconnect()
    return dict(message)


@pytest.mark.parametrize(
    ("role", "outcome"),
    list(LOG_SOCKET.items()),
)
async def test_the_log_socket_per_role(workspace: Workspace, role: str, outcome: int | str) -> None:
    task = await database_sync_to_async(Task.objects.create)(workspace=workspace, type="plan", status="running")
    user = AnonymousUser() if role == "anonymous" else await database_sync_to_async(_principal)(workspace, role)
    message = await _first("/ws/tasks/%d/logs/" % task.pk, user)
    if outcome == "open":
        assert message["type"] == "websocket.send" and '"task.status"' in message["text"]
    else:
        assert message == {"type": "websocket.close", "code": outcome}
    # A task that does not exist gets the same code as one the user may not see.
    if role == "none":
        assert (await _first("/ws/tasks/%d/logs/" % (task.pk + 1000), user))["code"] == 4404


@pytest.mark.parametrize(
    ("role", "outcome"),
    list(SESSION_SOCKET.items()),
)
async def test_the_session_socket_per_role(workspace: Workspace, role: str, outcome: int | str) -> None:
    owner_role = "none" if role == "anonymous" else role

    def setup() -> tuple[User, EditingSession]:
        owner = _principal(workspace, owner_role)
        # Made directly: the owner may have lost write since opening it (a role revoked).
        return owner, EditingSession.objects.create(workspace=workspace, resource_address=ADDR, user=owner)

    owner, session = await database_sync_to_async(setup)()
    user = AnonymousUser() if role == "anonymous" else owner
    message = await _first("/ws/sessions/%s/" % session.session_id, user)
    if outcome == "open":
        assert message["type"] == "websocket.send" and '"session.state"' in message["text"]
    else:
        assert message == {"type": "websocket.close", "code": outcome}


async def test_a_session_socket_closes_4403_once_write_is_revoked(workspace: Workspace) -> None:
    def setup() -> tuple[User, EditingSession]:
        user = _principal(workspace, "write")
        return user, EditingSession.objects.create(workspace=workspace, resource_address=ADDR, user=user)

    user, session = await database_sync_to_async(setup)()
    communicator = WebsocketCommunicator(app, "/ws/sessions/%s/" % session.session_id)
    communicator.scope["user"] = user
    assert (await communicator.connect())[0]
    assert (await communicator.receive_json_from(timeout=5))["type"] == "session.state"
    await database_sync_to_async(WorkspaceAccess.objects.filter(user=user).update)(role=10)  # now read
    await communicator.send_json_to({"type": "heartbeat"})
    assert await communicator.receive_output(timeout=5) == {"type": "websocket.close", "code": 4403}
    await communicator.disconnect()


def test_a_takeover_by_a_read_user_is_refused_and_changes_nothing(workspace: Workspace) -> None:
    editor, reader = make_user("editor"), make_user("reader")
    grant(workspace, "write", user=editor)
    grant(workspace, "read", user=reader)
    EditingSession.objects.create(workspace=workspace, resource_address=ADDR, user=editor, mode="editor")
    # The reader's waiting session from when they still had write.
    waiting = EditingSession.objects.create(workspace=workspace, resource_address=ADDR, user=reader, mode="waiting")
    client = APIClient()
    client.force_authenticate(reader)
    for path in ("/api/v1/hub/takeovers/", "/api/v1/hub/takeovers/force/"):
        refused = client.post(path, {"session_id": str(waiting.session_id)}, format="json")
        assert refused.status_code == 403, refused.content
        assert refused.json()["code"] == "forbidden"
    assert not TakeoverRequest.objects.exists()
    assert EditingSession.objects.get(user=editor).active
    # Nor may the reader open a session in the first place.
    opened = client.post("/api/v1/hub/sessions/", {"workspace": workspace.pk, "resource_address": ADDR}, format="json")
    assert opened.status_code == 403

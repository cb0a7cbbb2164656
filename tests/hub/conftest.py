from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

import pytest
from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.contrib.auth.models import Permission, User

from apps.agents.models import AgentPool
from apps.hub.events import session_group
from apps.workspaces.models import Workspace
from tests.access.fixtures import grant


@pytest.fixture(autouse=True)
def memory_layer(settings: Any) -> Iterator[InMemoryChannelLayer]:
    """Unit tests run on the in-memory layer; tests/integration cover the real one across replicas."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    layer = get_channel_layer()
    assert isinstance(layer, InMemoryChannelLayer)
    yield layer
    async_to_sync(layer.flush)()


class Inbox:
    """A channel in a session's group: what that session's socket would receive."""

    def __init__(self, layer: InMemoryChannelLayer, session_id: UUID | str) -> None:
        self.layer = layer
        self.channel = async_to_sync(layer.new_channel)()
        async_to_sync(layer.group_add)(session_group(session_id), self.channel)

    def events(self) -> list[dict[str, Any]]:
        # The in-memory layer enqueues synchronously in group_send, so after the on_commit
        # callbacks ran everything sent is already here: no waiting needed.
        queue = self.layer.channels.get(self.channel)
        found = []
        while queue is not None and not queue.empty():
            _, message = queue.get_nowait()
            assert message["type"] == "hub.event"
            found.append(message["event"])
        return found

    def types(self) -> list[str]:
        return [event["type"] for event in self.events()]


@pytest.fixture
def inbox(memory_layer: InMemoryChannelLayer) -> Callable[[UUID | str], Inbox]:
    return lambda session_id: Inbox(memory_layer, session_id)


@pytest.fixture
def workspace(db: None) -> Workspace:
    pool = AgentPool(name="hub-pool")
    pool.set_new_token()
    pool.save()
    return Workspace.objects.create(name="hub-ws", pool=pool)


@pytest.fixture
def alice(workspace: Workspace) -> User:
    """A user with write (editing) on the workspace."""
    user = User.objects.create_user("alice", password="pw-alice-123")
    grant(workspace, "write", user=user)
    return user


@pytest.fixture
def bob(workspace: Workspace) -> User:
    user = User.objects.create_user("bob", password="pw-bob-123")
    grant(workspace, "write", user=user)
    return user


@pytest.fixture
def carol(workspace: Workspace) -> User:
    """A user with write and the hub.force_takeover permission (not a workspace admin)."""
    user = User.objects.create_user("carol", password="pw-carol-123")
    user.user_permissions.add(Permission.objects.get(codename="force_takeover", content_type__app_label="hub"))
    grant(workspace, "write", user=user)
    return User.objects.get(pk=user.pk)  # fresh instance: no stale permission cache

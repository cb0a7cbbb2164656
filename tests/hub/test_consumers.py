"""The hub's consumers in one process (in-memory layer, Channels' WebsocketCommunicator).
tests/integration/test_hub*.py run the same across real daphne replicas."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any
from unittest import mock

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User
from django.db import connections

from apps.agents.protocol import task_group
from apps.hub import actions
from apps.hub.consumers import TaskLogConsumer
from apps.hub.events import session_group
from apps.hub.models import EditingSession
from apps.hub.routing import websocket_urlpatterns
from apps.workspaces.models import Task, TaskLogChunk, Workspace
from tests.access.fixtures import grant

pytestmark = pytest.mark.django_db(transaction=True)

ADDR = "aws_instance.web"
app = URLRouter(websocket_urlpatterns)


@pytest.fixture(autouse=True)
async def _close_consumer_connections() -> AsyncIterator[None]:
    yield
    # The consumers' database thread keeps its connection; close it so the test database can go.
    await database_sync_to_async(connections.close_all)()


def _communicator(path: str, user: Any) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(app, path)
    communicator.scope["user"] = user
    return communicator


async def _closed_with(communicator: WebsocketCommunicator) -> int:
    connected, _ = await communicator.connect()
    assert connected  # accepted first, so that the close code reaches the client
    message = await communicator.receive_output(timeout=5)
    assert message["type"] == "websocket.close", message
    return int(message["code"])


@database_sync_to_async
def _open(user: User, workspace: Workspace) -> EditingSession:
    return actions.do_open_session(user=user, workspace=workspace, resource_address=ADDR)


@pytest.fixture
def viewer(workspace: Workspace) -> User:
    """A user with the read role on the workspace: enough for its task logs."""
    user = User.objects.create_user("viewer", password="pw-viewer-123")
    grant(workspace, "read", user=user)
    return user


@pytest.fixture
def task(workspace: Workspace) -> Task:
    return Task.objects.create(workspace=workspace, type="plan", status="running")


# --- session socket -------------------------------------------------------------------------------


async def test_the_owner_gets_the_session_state(workspace: Workspace, alice: User) -> None:
    session = await _open(alice, workspace)
    communicator = _communicator("/ws/sessions/%s/" % session.session_id, alice)
    connected, _ = await communicator.connect()
    assert connected
    state = await communicator.receive_json_from(timeout=5)
    assert state["type"] == "session.state"
    assert (state["mode"], state["active"], state["pending_requests"]) == ("editor", True, [])
    refreshed = await database_sync_to_async(EditingSession.objects.get)(pk=session.pk)
    assert refreshed.last_seen_at > session.last_seen_at  # connecting counts as a sign of life
    await communicator.disconnect()


async def test_anyone_but_the_owner_is_refused(workspace: Workspace, alice: User, bob: User) -> None:
    """Someone else's session reads as a missing one (4404, REST's 404); no login is 4403."""
    session = await _open(alice, workspace)
    path = "/ws/sessions/%s/" % session.session_id
    assert await _closed_with(_communicator(path, bob)) == 4404
    assert await _closed_with(_communicator(path, AnonymousUser())) == 4403
    assert await _closed_with(_communicator("/ws/sessions/6f1c1f7e-0000-4000-8000-000000000000/", alice)) == 4404


async def test_an_ended_session_is_told_so_and_closed(workspace: Workspace, alice: User) -> None:
    session = await _open(alice, workspace)
    await database_sync_to_async(actions.do_close_session)(user=alice, session_id=session.session_id)
    communicator = _communicator("/ws/sessions/%s/" % session.session_id, alice)
    await communicator.connect()
    assert (await communicator.receive_json_from(timeout=5))["active"] is False
    ended = await communicator.receive_json_from(timeout=5)
    assert (ended["type"], ended["reason"]) == ("session.ended", "closed")
    assert (await communicator.receive_output(timeout=5))["code"] == 4410


async def test_heartbeats_update_last_seen_and_bad_frames_get_errors(workspace: Workspace, alice: User) -> None:
    session = await _open(alice, workspace)
    communicator = _communicator("/ws/sessions/%s/" % session.session_id, alice)
    await communicator.connect()
    await communicator.receive_json_from(timeout=5)

    await communicator.send_to(text_data="{not json")
    assert (await communicator.receive_json_from(timeout=5))["error"].startswith("frame is not valid JSON")
    await communicator.send_json_to(["heartbeat"])
    assert "object" in (await communicator.receive_json_from(timeout=5))["error"]
    await communicator.send_json_to({"type": "takeover"})
    assert "unknown frame type" in (await communicator.receive_json_from(timeout=5))["error"]
    await communicator.send_to(bytes_data=b"\x00")
    assert "JSON text" in (await communicator.receive_json_from(timeout=5))["error"]

    await communicator.send_json_to({"type": "heartbeat"})
    ack = await communicator.receive_json_from(timeout=5)
    assert ack["type"] == "heartbeat.ack"
    refreshed = await database_sync_to_async(EditingSession.objects.get)(pk=session.pk)
    assert refreshed.last_seen_at > session.last_seen_at
    assert ack["last_seen_at"] == refreshed.last_seen_at.isoformat()
    await communicator.disconnect()


@pytest.mark.parametrize(
    "frame",
    [
        "[" * 5000,
        '{"type": "heartbeat", "x": ' + "[" * 100 + "]" * 100 + "}",
        '{"type": "heart\\u0000beat"}',
        '{"type": "\\ud800"}',
        "NaN",
        '{"type": "heartbeat", "n": ' + "9" * 5000 + "}",
        "\udc80",
    ],
)
async def test_hostile_frames_get_an_error_frame_and_the_socket_keeps_serving(
    workspace: Workspace, alice: User, frame: str
) -> None:
    session = await _open(alice, workspace)
    communicator = _communicator("/ws/sessions/%s/" % session.session_id, alice)
    await communicator.connect()
    await communicator.receive_json_from(timeout=5)
    await communicator.send_to(text_data=frame)
    assert (await communicator.receive_json_from(timeout=5))["type"] == "error"
    await communicator.send_json_to({"type": "heartbeat"})
    assert (await communicator.receive_json_from(timeout=5))["type"] == "heartbeat.ack"
    await communicator.disconnect()


async def test_a_heartbeat_on_a_session_ended_meanwhile_reports_why_and_closes(
    workspace: Workspace, alice: User
) -> None:
    session = await _open(alice, workspace)
    communicator = _communicator("/ws/sessions/%s/" % session.session_id, alice)
    await communicator.connect()
    await communicator.receive_json_from(timeout=5)
    # Ended behind the socket's back, and the event lost (the layer is at-most-once).
    await database_sync_to_async(EditingSession.objects.filter(pk=session.pk).update)(
        active=False, ended_reason="expired"
    )
    await communicator.send_json_to({"type": "heartbeat"})
    ended = await communicator.receive_json_from(timeout=5)
    assert (ended["type"], ended["reason"]) == ("session.ended", "expired")
    assert (await communicator.receive_output(timeout=5))["code"] == 4410


async def test_heartbeats_renew_the_group_membership_past_group_expiry(
    workspace: Workspace, alice: User, settings: Any
) -> None:
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"group_expiry": 100}}
    }
    session = await _open(alice, workspace)
    communicator = _communicator("/ws/sessions/%s/" % session.session_id, alice)
    await communicator.connect()
    await communicator.receive_json_from(timeout=5)
    later = time.time() + 150  # the membership made at connect has expired by then
    with mock.patch("channels.layers.time.time", return_value=later):
        await communicator.send_json_to({"type": "heartbeat"})
        assert (await communicator.receive_json_from(timeout=5))["type"] == "heartbeat.ack"
        await get_channel_layer().group_send(
            session_group(session.session_id), {"type": "hub.event", "event": {"type": "probe"}}
        )
        assert (await communicator.receive_json_from(timeout=5)) == {"type": "probe"}
    await communicator.disconnect()


async def test_takeover_events_reach_the_sockets_and_session_ended_closes(
    workspace: Workspace, alice: User, bob: User
) -> None:
    editor, waiting = await _open(alice, workspace), await _open(bob, workspace)
    holder = _communicator("/ws/sessions/%s/" % editor.session_id, alice)
    taker = _communicator("/ws/sessions/%s/" % waiting.session_id, bob)
    for communicator in (holder, taker):
        await communicator.connect()
        await communicator.receive_json_from(timeout=5)

    request, _ = await database_sync_to_async(actions.do_request_takeover)(user=bob, session_id=waiting.session_id)
    requested = await holder.receive_json_from(timeout=5)
    assert (requested["type"], requested["request_id"]) == ("takeover.requested", request.pk)

    await database_sync_to_async(actions.do_respond_takeover)(user=alice, request_id=request.pk, approve=True)
    approved = await taker.receive_json_from(timeout=5)
    assert (approved["type"], approved["mode"]) == ("takeover.approved", "editor")
    ended = await holder.receive_json_from(timeout=5)
    assert (ended["type"], ended["reason"]) == ("session.ended", "taken_over")
    assert (await holder.receive_output(timeout=5))["code"] == 4410
    await taker.disconnect()


# --- task log socket ------------------------------------------------------------------------------


@database_sync_to_async
def _store(task: Task, *seqs: int) -> None:
    TaskLogChunk.objects.bulk_create([TaskLogChunk(task=task, seq=s, text="line %d\n" % s) for s in seqs])


async def _publish(task: Task, seq: int, *, store: bool = True) -> None:
    """What the agents' consumer does: store the chunk, then (after commit) announce it."""
    if store:
        await _store(task, seq)
    await get_channel_layer().group_send(
        task_group(task.pk), {"type": "task.log", "task_id": task.pk, "seq": seq, "text": "line %d\n" % seq}
    )


async def _receive_logs(communicator: WebsocketCommunicator, count: int) -> list[int]:
    seqs: list[int] = []
    while len(seqs) < count:
        frame = await communicator.receive_json_from(timeout=5)
        if frame["type"] == "task.log":
            assert frame["text"] == "line %d\n" % frame["seq"]
            seqs.append(frame["seq"])
    return seqs


def _burst(layer: Any, task: Task, seqs: range) -> int:
    """Announces ``seqs`` to the task's group without yielding to the event loop, the way a burst
    lands between two reads of a busy consumer; returns how many the layer dropped (ChannelFull).
    (InMemoryChannelLayer.group_send of channels 4.3 sends through a task per member, so it is not used:
    the consumer would read between sends and what is dropped would depend on timing.)"""
    dropped = 0
    for seq in seqs:
        for channel in list(layer.groups.get(task_group(task.pk), {})):
            coro = layer.send(channel, {"type": "task.log", "task_id": task.pk, "seq": seq, "text": "line %d\n" % seq})
            try:
                coro.send(None)  # InMemoryChannelLayer.send never awaits: it completes in this step
            except StopIteration:
                pass
            except ChannelFull:
                dropped += 1
            else:
                raise AssertionError("InMemoryChannelLayer.send awaited")
    return dropped


async def test_a_user_without_a_role_on_the_workspace_is_refused(task: Task) -> None:
    """No role: the task reads as missing (4404, as REST's 404); no login: 4403."""
    stranger = await database_sync_to_async(User.objects.create_user)("stranger", password="pw-stranger-1")
    assert await _closed_with(_communicator("/ws/tasks/%d/logs/" % task.pk, stranger)) == 4404
    assert await _closed_with(_communicator("/ws/tasks/%d/logs/" % task.pk, AnonymousUser())) == 4403


async def test_unknown_tasks_and_bad_from_seq_get_their_codes(task: Task, viewer: User) -> None:
    assert await _closed_with(_communicator("/ws/tasks/%d/logs/" % (task.pk + 999), viewer)) == 4404
    for bad in ("-1", "x", "1.5", "", "%C2%B2", "\u00b2", "1" * 5000, str(2**31), "%00", "1%00"):
        assert await _closed_with(_communicator("/ws/tasks/%d/logs/?from_seq=%s" % (task.pk, bad), viewer)) == 4400
    highest = _communicator("/ws/tasks/%d/logs/?from_seq=%d" % (task.pk, 2**31 - 1), viewer)
    assert (await highest.connect())[0]
    assert (await highest.receive_json_from(timeout=5))["type"] == "task.status"
    await highest.disconnect()


async def test_stored_log_from_the_asked_seq_then_live_chunks(task: Task, viewer: User) -> None:
    await _store(task, *range(5))
    communicator = _communicator("/ws/tasks/%d/logs/?from_seq=2" % task.pk, viewer)
    await communicator.connect()
    assert await _receive_logs(communicator, 3) == [2, 3, 4]
    status = await communicator.receive_json_from(timeout=5)
    assert status == {"type": "task.status", "task_id": task.pk, "status": "running"}

    await _publish(task, 5)
    await _publish(task, 3, store=False)  # a duplicate announcement: skipped
    await _publish(task, 6)
    assert await _receive_logs(communicator, 2) == [5, 6]

    # A gap: 7 and 8 were stored but their announcements lost; 9's announcement arrives.
    await _store(task, 7, 8)
    await _publish(task, 9)
    assert await _receive_logs(communicator, 3) == [7, 8, 9]

    # An announcement without its text (kept small on the layer): read from the database.
    await _store(task, 10)
    await get_channel_layer().group_send(task_group(task.pk), {"type": "task.log", "task_id": task.pk, "seq": 10})
    assert await _receive_logs(communicator, 1) == [10]

    await get_channel_layer().group_send(
        task_group(task.pk), {"type": "task.status", "task_id": task.pk, "status": "succeeded"}
    )
    assert (await communicator.receive_json_from(timeout=5))["status"] == "succeeded"
    await communicator.disconnect()


async def test_chunks_the_layer_dropped_are_read_from_the_database(task: Task, viewer: User, settings: Any) -> None:
    """A burst beyond the channel's capacity: the layer drops messages (ChannelFull). The next
    announcement that arrives (a later chunk, or the status change that ends the task) makes the
    consumer fill the gap from the database."""
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 3}}
    }
    layer = get_channel_layer()
    communicator = _communicator("/ws/tasks/%d/logs/" % task.pk, viewer)
    await communicator.connect()
    assert (await communicator.receive_json_from(timeout=5))["type"] == "task.status"

    await _store(task, *range(40))
    # Nothing else runs during the burst, so the consumer reads nothing meanwhile: its channel takes
    # the first three and the other 37 announcements are dropped.
    assert _burst(layer, task, range(40)) == 37
    assert await _receive_logs(communicator, 3) == [0, 1, 2]
    await _publish(task, 40)
    assert await _receive_logs(communicator, 38) == list(range(3, 41))

    # The tail of a task dropped: the final status change catches it up before it is reported.
    await _store(task, *range(41, 50))
    assert _burst(layer, task, range(41, 50)) == 6
    assert await _receive_logs(communicator, 3) == [41, 42, 43]
    await layer.group_send(task_group(task.pk), {"type": "task.status", "task_id": task.pk, "status": "succeeded"})
    assert await _receive_logs(communicator, 6) == list(range(44, 50))
    assert (await communicator.receive_json_from(timeout=5))["status"] == "succeeded"
    await communicator.disconnect()


async def test_a_superuser_sees_any_task_log(task: Task) -> None:
    root = await database_sync_to_async(User.objects.create_superuser)("root", password="pw-root-123")
    await _store(task, 0)
    communicator = _communicator("/ws/tasks/%d/logs/" % task.pk, root)
    await communicator.connect()
    assert await _receive_logs(communicator, 1) == [0]
    await communicator.disconnect()


async def test_chunks_landing_while_the_stored_log_is_read_arrive_exactly_once(task: Task, viewer: User) -> None:
    """The race at the switch from stored to live, on both sides of the read."""
    await _store(task, 0, 1)
    original = TaskLogConsumer._stored
    layer = get_channel_layer()

    def stored_during_a_race(self: TaskLogConsumer, from_seq: int) -> list[tuple[int, str]]:
        rows = original(self, from_seq)
        if from_seq == 0:
            # Chunk 1 was committed before the read but is announced only now (a duplicate to
            # skip), and chunk 2 is committed and announced just after the read (must be sent).
            TaskLogChunk.objects.create(task=task, seq=2, text="line 2\n")
            for seq in (1, 2):
                _announce_from_a_thread(layer, task.pk, seq)
        return rows

    with mock.patch.object(TaskLogConsumer, "_stored", stored_during_a_race):
        communicator = _communicator("/ws/tasks/%d/logs/" % task.pk, viewer)
        await communicator.connect()
        assert await _receive_logs(communicator, 2) == [0, 1]
        assert (await communicator.receive_json_from(timeout=5))["type"] == "task.status"
        await _publish(task, 3)
        assert await _receive_logs(communicator, 2) == [2, 3]
    await communicator.disconnect()


def _announce_from_a_thread(layer: Any, task_id: int, seq: int) -> None:
    async_to_sync(layer.group_send)(
        task_group(task_id), {"type": "task.log", "task_id": task_id, "seq": seq, "text": "line %d\n" % seq}
    )


async def test_a_reconnecting_client_resumes_after_its_last_seq(task: Task, viewer: User) -> None:
    await _store(task, *range(3))
    first = _communicator("/ws/tasks/%d/logs/" % task.pk, viewer)
    await first.connect()
    assert await _receive_logs(first, 3) == [0, 1, 2]
    await first.disconnect()
    await _store(task, 3, 4)  # written while the client was away
    second = _communicator("/ws/tasks/%d/logs/?from_seq=3" % task.pk, viewer)
    await second.connect()
    assert await _receive_logs(second, 2) == [3, 4]
    await _publish(task, 5)
    assert await _receive_logs(second, 1) == [5]
    await second.disconnect()


async def test_a_log_deleted_by_retention_is_said_to_be_pruned_not_sent_empty(task: Task, viewer: User) -> None:
    """A finished task's log past TASK_LOG_RETENTION_DAYS: a task.log.pruned frame, then the status;
    a partly deleted one (a batch ended inside its log) sends none of its remaining chunks."""
    from datetime import timedelta

    from django.utils import timezone

    from apps.workspaces import retention

    await _store(task, *range(5))
    old = timezone.now() - timedelta(days=40)
    await database_sync_to_async(Task.objects.filter(pk=task.pk).update)(status="succeeded", finished_at=old)
    await database_sync_to_async(retention.prune_task_logs_batch)(cutoff=timezone.now() - timedelta(days=30), batch=2)
    assert await database_sync_to_async(TaskLogChunk.objects.filter(task=task).count)() == 3
    communicator = _communicator("/ws/tasks/%d/logs/" % task.pk, viewer)
    await communicator.connect()
    pruned = await communicator.receive_json_from(timeout=5)
    assert pruned["type"] == "task.log.pruned" and pruned["task_id"] == task.pk
    assert pruned["chunks"] == 2 and pruned["bytes"] == 2 * len("line 0\n") and pruned["pruned_at"]
    assert await communicator.receive_json_from(timeout=5) == {
        "type": "task.status",
        "task_id": task.pk,
        "status": "succeeded",
    }
    await communicator.disconnect()


async def test_the_log_socket_only_sends(task: Task, viewer: User) -> None:
    communicator = _communicator("/ws/tasks/%d/logs/" % task.pk, viewer)
    await communicator.connect()
    assert (await communicator.receive_json_from(timeout=5))["type"] == "task.status"
    await communicator.send_json_to({"type": "task.log", "seq": 1, "text": "forged"})
    assert (await communicator.receive_json_from(timeout=5))["type"] == "error"
    await communicator.disconnect()


async def test_a_frame_flood_is_cut_off_with_4429(workspace: Workspace, alice: User, settings: Any) -> None:
    settings.HUB_FRAME_BURST = 3
    settings.HUB_FRAME_RATE = 0.001
    session = await _open(alice, workspace)
    communicator = _communicator("/ws/sessions/%s/" % session.session_id, alice)
    await communicator.connect()
    await communicator.receive_json_from(timeout=5)
    for _ in range(10):
        await communicator.send_json_to({"type": "heartbeat"})
    types = [(await communicator.receive_json_from(timeout=5))["type"] for _ in range(4)]
    assert types == ["heartbeat.ack"] * 3 + ["error"]
    assert (await communicator.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4429}


async def test_a_frame_above_the_hub_limit_closes_with_4009(workspace: Workspace, alice: User, settings: Any) -> None:
    settings.HUB_MAX_FRAME_BYTES = 100
    session = await _open(alice, workspace)
    communicator = _communicator("/ws/sessions/%s/" % session.session_id, alice)
    await communicator.connect()
    await communicator.receive_json_from(timeout=5)
    await communicator.send_to(text_data='{"type": "heartbeat", "pad": "%s"}' % ("x" * 200))
    assert (await communicator.receive_json_from(timeout=5))["type"] == "error"
    assert (await communicator.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4009}


async def test_concurrent_sockets_per_user_are_capped(workspace: Workspace, alice: User, settings: Any) -> None:
    settings.WS_MAX_CONNECTIONS_PER_USER = 1
    session = await _open(alice, workspace)
    first = _communicator("/ws/sessions/%s/" % session.session_id, alice)
    await first.connect()
    await first.receive_json_from(timeout=5)
    assert await _closed_with(_communicator("/ws/sessions/%s/" % session.session_id, alice)) == 4429
    await first.disconnect()
    again = _communicator("/ws/sessions/%s/" % session.session_id, alice)
    await again.connect()
    assert (await again.receive_json_from(timeout=5))["type"] == "session.state"
    await again.disconnect()

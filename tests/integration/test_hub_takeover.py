"""Takeover across two real daphne replicas on the project's default channel layer: the requester
is connected to one replica, the editor to the other, and every event must reach the right socket."""

from __future__ import annotations

import time

import pytest
from django.contrib.auth.models import User

from apps.agents.models import AgentPool
from apps.workspaces.models import Task, Workspace
from harness.processes import ProcessGroup
from tests.access.fixtures import grant, make_user
from tests.integration.hubclient import Listener, Login, closed_with

pytestmark = pytest.mark.slow

ADDR = 'aws_instance.web["blue"]'
DEADLINE = 0.2  # seconds from the HTTP call to the event on the other replica's socket


def _workspace() -> Workspace:
    pool = AgentPool(name="hub-it")
    pool.set_new_token()
    pool.save()
    return Workspace.objects.create(name="hub-it", pool=pool)


def _user(name: str, workspace: Workspace, role: str | None, *perms: str) -> User:
    user = make_user(name, *perms)
    if role is not None:
        grant(workspace, role, user=user)
    return user


def test_takeover_events_cross_replicas_within_200_ms(processes: ProcessGroup) -> None:
    replica_a, replica_b = processes.daphne("web-a"), processes.daphne("web-b")
    workspace = _workspace()
    holder = Login.of(_user("holder", workspace, "write"))
    requester = Login.of(_user("requester", workspace, "write"))
    admin = Login.of(_user("admin", workspace, "write", "hub.force_takeover"))

    status, editor = holder.call(
        replica_b, "POST", "/api/v1/hub/sessions/", {"workspace": workspace.pk, "resource_address": ADDR}
    )
    assert status == 201 and editor["mode"] == "editor", editor
    status, waiting = requester.call(
        replica_a, "POST", "/api/v1/hub/sessions/", {"workspace": workspace.pk, "resource_address": ADDR}
    )
    assert status == 201 and waiting["mode"] == "waiting", waiting

    holder_socket = Listener(holder.websocket(replica_b, "/ws/sessions/%s/" % editor["session_id"]))
    requester_socket = Listener(requester.websocket(replica_a, "/ws/sessions/%s/" % waiting["session_id"]))
    assert holder_socket.wait_for("session.state")[1]["mode"] == "editor"
    assert requester_socket.wait_for("session.state")[1]["mode"] == "waiting"

    # request (replica A) -> the editor's socket (replica B)
    started = time.monotonic()
    status, request = requester.call(
        replica_a, "POST", "/api/v1/hub/takeovers/", {"session_id": waiting["session_id"], "message": "hotfix"}
    )
    assert status == 201, request
    arrived, event = holder_socket.wait_for("takeover.requested")
    assert event["request_id"] == request["id"] and event["message"] == "hotfix"
    assert arrived - started < DEADLINE, "takeover.requested took %.0f ms" % ((arrived - started) * 1000)

    # approve (replica B) -> the requester's socket (replica A); the editor's own socket ends
    started = time.monotonic()
    status, answered = holder.call(
        replica_b, "POST", "/api/v1/hub/takeovers/%d/respond/" % request["id"], {"approve": True}
    )
    assert status == 200 and answered["status"] == "approved", answered
    arrived, event = requester_socket.wait_for("takeover.approved")
    assert event["request_id"] == request["id"] and event["mode"] == "editor"
    assert arrived - started < DEADLINE, "takeover.approved took %.0f ms" % ((arrived - started) * 1000)
    assert holder_socket.wait_for("session.ended")[1]["reason"] == "taken_over"
    assert holder_socket.wait_closed() == 4410

    # force (replica B) -> the new editor's socket (replica A) receives session.ended
    status, admin_session = admin.call(
        replica_b, "POST", "/api/v1/hub/sessions/", {"workspace": workspace.pk, "resource_address": ADDR}
    )
    assert status == 201 and admin_session["mode"] == "waiting"
    status, refused = requester.call(
        replica_a, "POST", "/api/v1/hub/takeovers/force/", {"session_id": waiting["session_id"]}
    )
    assert status == 403 and refused["code"] == "forbidden", refused  # no hub.force_takeover
    started = time.monotonic()
    status, forced = admin.call(
        replica_b, "POST", "/api/v1/hub/takeovers/force/", {"session_id": admin_session["session_id"]}
    )
    assert status == 201 and forced["status"] == "forced", forced
    arrived, event = requester_socket.wait_for("session.ended")
    assert event["reason"] == "forced" and event["by"]["username"] == "admin"
    assert arrived - started < DEADLINE, "session.ended took %.0f ms" % ((arrived - started) * 1000)
    assert requester_socket.wait_closed() == 4410

    status, state = requester.call(replica_b, "GET", "/api/v1/hub/takeovers/%d/" % request["id"])
    assert status == 200 and state["status"] == "approved"


def test_nobody_opens_another_users_session_or_a_task_log_it_may_not_see(processes: ProcessGroup) -> None:
    replica_a, replica_b = processes.daphne("web-a"), processes.daphne("web-b")
    workspace = _workspace()
    task = Task.objects.create(workspace=workspace, type="plan", status="running")
    owner = Login.of(_user("owner", workspace, "write"))
    intruder = Login.of(_user("intruder", workspace, None))
    viewer = Login.of(_user("viewer", workspace, "read"))
    status, session = owner.call(
        replica_a, "POST", "/api/v1/hub/sessions/", {"workspace": workspace.pk, "resource_address": ADDR}
    )
    assert status == 201

    for replica in (replica_a, replica_b):
        # Without a role the session and the task read as missing, as over REST.
        assert closed_with(intruder.websocket(replica, "/ws/sessions/%s/" % session["session_id"])) == 4404
        assert closed_with(intruder.websocket(replica, "/ws/tasks/%d/logs/" % task.pk)) == 4404
        assert intruder.call(replica, "GET", "/api/v1/tasks/%d/log/" % task.pk)[0] == 404
        # A reader sees the log but not someone else's session.
        assert closed_with(viewer.websocket(replica, "/ws/sessions/%s/" % session["session_id"])) == 4404
        status, _ = intruder.call(replica, "GET", "/api/v1/hub/sessions/%s/" % session["session_id"])
        assert status == 404

    # The same sockets open for those allowed, on either replica.
    own = owner.websocket(replica_b, "/ws/sessions/%s/" % session["session_id"])
    assert '"session.state"' in str(own.recv(timeout=10))
    own.close()
    logs = viewer.websocket(replica_b, "/ws/tasks/%d/logs/" % task.pk)
    assert '"task.status"' in str(logs.recv(timeout=10))
    logs.close()

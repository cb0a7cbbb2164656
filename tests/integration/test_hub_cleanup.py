"""lock_draft_cleanup in a real runleader: stale sessions and their requests expire, and the
sockets on a daphne replica are told."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from apps.agents.models import AgentPool
from apps.coordination.models import JobRun
from apps.hub import actions
from apps.hub.models import EditingSession, TakeoverRequest
from apps.workspaces.models import Workspace
from harness.processes import ProcessGroup, free_port, wait_http
from tests.access.fixtures import grant
from tests.integration.hubclient import Listener, Login

pytestmark = pytest.mark.slow


def test_the_leader_expires_a_stale_editor_and_both_sockets_hear_it(processes: ProcessGroup) -> None:
    replica = processes.daphne("web-a")
    pool = AgentPool(name="cleanup-it")
    pool.set_new_token()
    pool.save()
    workspace = Workspace.objects.create(name="cleanup-it", pool=pool)
    holder = Login.of(User.objects.create_user("holder", password="pw-holder-123"))
    waiter = Login.of(User.objects.create_user("waiter", password="pw-waiter-123"))
    for login in (holder, waiter):  # editing needs the workspace's write role
        grant(workspace, "write", user=login.user)
    editor = actions.do_open_session(user=holder.user, workspace=workspace, resource_address="a.b")
    waiting = actions.do_open_session(user=waiter.user, workspace=workspace, resource_address="a.b")
    request, _ = actions.do_request_takeover(user=waiter.user, session_id=waiting.session_id)

    editor_socket = Listener(holder.websocket(replica, "/ws/sessions/%s/" % editor.session_id))
    waiting_socket = Listener(waiter.websocket(replica, "/ws/sessions/%s/" % waiting.session_id))
    assert editor_socket.wait_for("session.state")[1]["pending_requests"][0]["request_id"] == request.pk
    waiting_socket.wait_for("session.state")
    # The editor's tab went away without closing (after its socket's connect heartbeat).
    EditingSession.objects.filter(pk=editor.pk).update(last_seen_at=timezone.now() - timedelta(hours=1))

    port = free_port()
    leader = processes.manage(
        "leader",
        ["runleader", "--backend=postgres", "--http-addr=127.0.0.1:%d" % port],
        role="leader",
        port=port,
    )
    wait_http(leader, "/healthz")

    ended = editor_socket.wait_for("session.ended", timeout=20)[1]
    assert ended["reason"] == "expired"
    assert editor_socket.wait_closed() == 4410
    expired = waiting_socket.wait_for("takeover.expired", timeout=10)[1]
    assert (expired["request_id"], expired["reason"]) == (request.pk, "editor_left")
    assert TakeoverRequest.objects.get(pk=request.pk).status == "expired"
    assert EditingSession.objects.get(pk=waiting.pk).active
    # The tick is recorded as finished just after its transaction (and so its events) went out.
    deadline = time.monotonic() + 10
    while not JobRun.objects.filter(job="lock_draft_cleanup", outcome="ok").exists():
        assert time.monotonic() < deadline, "no finished lock_draft_cleanup tick recorded"
        time.sleep(0.05)

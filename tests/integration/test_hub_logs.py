"""A task's live log across real daphne replicas on the project's default channel layer.

First with a controlled producer (this test process doing what the agents' consumer does: store
the chunk, commit, then ``group_send("task.<id>", task.log)``), so that the reader can drop
mid-stream and resume on the other replica; then with the real producer, a runagent running
Terraform on one replica and the UI socket on the other.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth.models import User
from django.db import connection, transaction

from apps.agents.models import AgentPool
from apps.workspaces.models import Task, TaskLogChunk, Workspace
from harness.processes import ProcessGroup
from tests.access.fixtures import grant
from tests.integration.agentkit import (
    FAST_ENV,
    enqueue,
    make_pool,
    make_workspace,
    start_agent,
    wait_connected,
    wait_terminal,
)
from tests.integration.hubclient import Listener, Login

pytestmark = pytest.mark.slow

CHUNKS = 400


def _produce(task_id: int, count: int, started: threading.Event) -> None:
    layer = get_channel_layer()
    assert layer is not None
    send = async_to_sync(layer.group_send)
    try:
        for seq in range(count):
            with transaction.atomic():
                TaskLogChunk.objects.create(task_id=task_id, seq=seq, text="line %d\n" % seq)
            send("task.%d" % task_id, {"type": "task.log", "task_id": task_id, "seq": seq, "text": "line %d\n" % seq})
            if seq == 20:
                started.set()
            time.sleep(0.003)  # an agent streaming output, not a bulk load
        Task.objects.filter(pk=task_id).update(status="succeeded")
        send("task.%d" % task_id, {"type": "task.status", "task_id": task_id, "status": "succeeded"})
    finally:
        connection.close()


def _collect(listener: Listener, seqs: list[int], *, until: int) -> None:
    while not seqs or seqs[-1] < until:
        _, frame = listener.next(timeout=15)
        if frame["type"] == "task.log":
            assert frame["text"] == "line %d\n" % frame["seq"]
            seqs.append(frame["seq"])


def test_a_live_log_is_complete_and_in_order_across_replicas_and_a_reconnect(processes: ProcessGroup) -> None:
    replica_a, replica_b = processes.daphne("web-a"), processes.daphne("web-b")
    pool = AgentPool(name="logs-it")
    pool.set_new_token()
    pool.save()
    workspace = Workspace.objects.create(name="logs-it", pool=pool)
    task = Task.objects.create(workspace=workspace, type="apply", status="running")
    user = User.objects.create_user("reader", password="pw-reader-123")
    grant(workspace, "read", user=user)
    reader = Login.of(user)

    started = threading.Event()
    producer = threading.Thread(target=_produce, args=(task.pk, CHUNKS, started), daemon=True)
    producer.start()
    assert started.wait(30)

    # Joins mid-stream on replica B, from the beginning: stored part, then live part.
    first = Listener(reader.websocket(replica_b, "/ws/tasks/%d/logs/?from_seq=0" % task.pk))
    received: list[int] = []
    _collect(first, received, until=CHUNKS // 2)
    first.close()

    # Resumes on replica A from the last seq it saw, while the producer is still writing.
    resume_from = received[-1] + 1
    assert producer.is_alive(), "the producer finished before the reconnect: nothing was live"
    second = Listener(reader.websocket(replica_a, "/ws/tasks/%d/logs/?from_seq=%d" % (task.pk, resume_from)))
    resumed: list[int] = []
    _collect(second, resumed, until=CHUNKS - 1)
    _, status = second.wait_for("task.status", timeout=15)
    while status["status"] != "succeeded":
        _, status = second.wait_for("task.status", timeout=15)
    second.close()
    producer.join(30)

    assert received == list(range(len(received)))
    assert resumed == list(range(resume_from, CHUNKS))


def test_a_real_agents_terraform_log_reaches_a_ui_socket_on_the_other_replica(
    processes: ProcessGroup, tmp_path: Path
) -> None:
    """The real producer: runagent (connected to replica A) runs Terraform; the UI reads on B."""
    pool, token = make_pool("hub-e2e")
    workspace = make_workspace(pool, "hub-e2e")
    replica_a = processes.daphne("web-a", env=FAST_ENV)
    replica_b = processes.daphne("web-b", env=FAST_ENV)
    agent = start_agent(processes, "agent-1", urls=[replica_a.ws_url], token=token, tmp_path=tmp_path)
    wait_connected(agent, "web-a")
    user = User.objects.create_user("watcher", password="pw-watcher-123")
    grant(workspace, "read", user=user)
    watcher = Login.of(user)

    task_id = enqueue(replica_a.url, workspace, "plan")
    socket = Listener(watcher.websocket(replica_b, "/ws/tasks/%d/logs/?from_seq=0" % task_id))
    seqs: list[int] = []
    text: list[str] = []
    while True:
        _, frame = socket.next(timeout=60)
        if frame["type"] == "task.log":
            seqs.append(frame["seq"])
            text.append(frame["text"])
        elif frame["type"] == "task.status" and frame["status"] in Task.TERMINAL:
            break
    socket.close()
    wait_terminal(task_id, 30, [agent, replica_a, replica_b])

    assert frame["status"] == "succeeded"
    stored = list(TaskLogChunk.objects.filter(task_id=task_id).order_by("seq").values_list("seq", "text"))
    assert seqs == [seq for seq, _ in stored] and seqs == sorted(set(seqs))
    assert "".join(text) == "".join(t for _, t in stored)
    assert "$ terraform plan" in "".join(text)

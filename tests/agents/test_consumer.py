"""The C&C consumer in-process (WebsocketCommunicator, in-memory layer, real PostgreSQL)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings

from apps.agents.models import Agent, AgentPool
from apps.agents.protocol import PROTOCOL_VERSION
from apps.workspaces import actions
from apps.workspaces.models import StateVersion, Task, TaskLogChunk, Workspace
from iacplatform.asgi import application
from tests.agents.fixtures import Pool

pytestmark = pytest.mark.django_db(transaction=True)


def communicator(token: str | None) -> WebsocketCommunicator:
    headers = [(b"authorization", ("Bearer %s" % token).encode())] if token else []
    return WebsocketCommunicator(application, "/ws/agents/", headers=headers)


async def send(comm: WebsocketCommunicator, frame: dict[str, Any]) -> None:
    await comm.send_to(text_data=json.dumps(frame))


async def recv(comm: WebsocketCommunicator, wait: float = 5) -> dict[str, Any]:
    return json.loads(await comm.receive_from(timeout=wait))


def hello(agent_id: str = "agent-1", **fields: Any) -> dict[str, Any]:
    return {"type": "hello", "protocol": PROTOCOL_VERSION, "agent_id": agent_id, "capacity": 1, **fields}


async def connect_agent(pool: Pool, agent_id: str = "agent-1", **fields: Any) -> WebsocketCommunicator:
    """Register (first time) or reconnect with the credential registration gave."""
    known = pool.credentials.get(agent_id)
    comm = communicator(known or pool.token)
    connected, _ = await comm.connect()
    assert connected
    await send(comm, hello(agent_id, **fields))
    welcome = await recv(comm)
    assert welcome["type"] == "welcome", welcome
    if known is None:
        pool.credentials[agent_id] = welcome["credential"]
    else:
        assert "credential" not in welcome
    return comm


async def test_a_bad_or_missing_token_is_refused_before_accept(agent_pool: Pool) -> None:
    for token in (None, "iacp_wrong", agent_pool.token + "x"):
        comm = communicator(token)
        connected, code = await comm.connect()
        assert not connected
        assert code == 4401


async def test_hello_gets_welcome_and_records_connected_pod(agent_pool: Pool) -> None:
    comm = await connect_agent(agent_pool, name="n", version="1.2", labels={"zone": "a"})
    agent = await database_sync_to_async(Agent.objects.get)(agent_id="agent-1")
    assert agent.connected_pod == settings.POD_NAME
    assert agent.status == Agent.Status.ONLINE
    assert (agent.name, agent.version, agent.labels) == ("n", "1.2", {"zone": "a"})
    await comm.disconnect()
    agent = await database_sync_to_async(Agent.objects.get)(agent_id="agent-1")
    assert agent.connected_pod is None
    assert agent.status == Agent.Status.OFFLINE


async def test_disconnect_does_not_wipe_an_agent_that_reconnected_elsewhere(agent_pool: Pool) -> None:
    comm = await connect_agent(agent_pool)
    # The agent has meanwhile reconnected to another replica.
    await database_sync_to_async(Agent.objects.filter(agent_id="agent-1").update)(connected_pod="web-other")
    await comm.disconnect()
    agent = await database_sync_to_async(Agent.objects.get)(agent_id="agent-1")
    assert agent.connected_pod == "web-other"


async def test_frames_before_hello_are_refused(agent_pool: Pool) -> None:
    comm = communicator(agent_pool.token)
    await comm.connect()
    await send(comm, {"type": "heartbeat"})
    assert (await recv(comm))["code"] == "hello_required"
    await comm.disconnect()


async def test_an_agent_id_of_another_pool_is_refused(agent_pool: Pool) -> None:
    other = AgentPool(name="other")
    await database_sync_to_async(other.set_new_token)()
    await database_sync_to_async(other.save)()
    await database_sync_to_async(Agent.objects.create)(agent_id="agent-1", pool=other)
    comm = communicator(agent_pool.token)
    await comm.connect()
    await send(comm, hello())
    assert (await recv(comm))["code"] == "agent_conflict"
    assert (await comm.receive_output(timeout=2))["type"] == "websocket.close"


async def test_a_frame_over_the_configured_limit_gets_an_error_and_a_close(agent_pool: Pool, settings: Any) -> None:
    settings.AGENT_MAX_FRAME_BYTES = 1000
    comm = await connect_agent(agent_pool)
    await comm.send_to(text_data="é" * 600)  # 600 characters, 1200 bytes
    assert (await recv(comm))["code"] == "frame_too_big"
    output = await comm.receive_output(timeout=2)
    assert output == {"type": "websocket.close", "code": 4009}


async def test_a_task_runs_through_dispatch_accept_log_and_result(agent_pool: Pool, workspace: Workspace) -> None:
    comm = await connect_agent(agent_pool)
    task = await database_sync_to_async(actions.enqueue_task)(workspace=workspace, type="apply")
    dispatch = await recv(comm)
    assert dispatch["type"] == "task.dispatch"
    assert dispatch["task_id"] == task.pk
    assert dispatch["files"] == workspace.terraform_files
    assert dispatch["task_type"] == "apply"
    assert dispatch["log_seq_start"] == 0
    await send(comm, {"type": "task.accept", "task_id": task.pk, "attempt": 1})
    assert await recv(comm) == {"type": "task.accepted", "task_id": task.pk}
    for seq in (0, 1, 1):  # a resent chunk is stored once
        await send(comm, {"type": "task.log", "task_id": task.pk, "attempt": 1, "seq": seq, "text": "line %d\n" % seq})
    state = {"version": 4, "serial": 1, "lineage": "abc", "outputs": {}, "resources": []}
    result = {"type": "task.result", "task_id": task.pk, "attempt": 1, "status": "succeeded", "exit_code": 0}
    await send(comm, {**result, "plan_summary": {"add": 1, "change": 0, "destroy": 0}, "state": state})
    assert await recv(comm) == {"type": "task.ack", "task_id": task.pk}
    await send(comm, {**result, "state": state})  # resent after a reconnect: acknowledged, stored once
    assert await recv(comm) == {"type": "task.ack", "task_id": task.pk}
    task = await database_sync_to_async(Task.objects.get)(pk=task.pk)
    assert task.status == "succeeded"
    assert task.plan_summary == {"add": 1, "change": 0, "destroy": 0}
    texts = await database_sync_to_async(lambda: list(TaskLogChunk.objects.values_list("text", flat=True)))()
    assert texts == ["line 0\n", "line 1\n"]
    versions = await database_sync_to_async(lambda: list(StateVersion.objects.values_list("serial", "lineage")))()
    assert versions == [(1, "abc")]
    await comm.disconnect()


async def test_an_accept_that_lost_is_told_to_drop(agent_pool: Pool, workspace: Workspace) -> None:
    comm = await connect_agent(agent_pool)
    task = await database_sync_to_async(actions.enqueue_task)(workspace=workspace, type="plan")
    assert (await recv(comm))["type"] == "task.dispatch"
    await database_sync_to_async(actions.cancel_task)(task.pk)
    assert (await recv(comm)) == {"type": "task.cancel", "task_id": task.pk}
    await send(comm, {"type": "task.accept", "task_id": task.pk, "attempt": 1})
    assert (await recv(comm))["type"] == "task.drop"
    await comm.disconnect()


async def test_reports_about_another_agents_task_change_nothing(agent_pool: Pool, workspace: Workspace) -> None:
    owner = await connect_agent(agent_pool, agent_id="owner")
    task = await database_sync_to_async(actions.enqueue_task)(workspace=workspace, type="plan")
    assert (await recv(owner))["type"] == "task.dispatch"
    intruder = await connect_agent(agent_pool, agent_id="intruder")
    await send(intruder, {"type": "task.accept", "task_id": task.pk, "attempt": 1})
    assert (await recv(intruder))["type"] == "task.drop"
    for frame in (
        {"type": "task.log", "task_id": task.pk, "attempt": 1, "seq": 0, "text": "evil"},
        {"type": "task.result", "task_id": task.pk, "attempt": 1, "status": "failed"},
        {"type": "task.reject", "task_id": task.pk, "attempt": 1},
    ):
        await send(intruder, frame)
        reply = await recv(intruder)
        assert reply["code"] == "not_owned", reply
        assert (reply["task_id"], reply["attempt"]) == (task.pk, 1)  # which attempt it was about
    task = await database_sync_to_async(Task.objects.get)(pk=task.pk)
    assert task.status == "dispatched"
    assert await database_sync_to_async(TaskLogChunk.objects.count)() == 0
    await owner.disconnect()
    await intruder.disconnect()


async def test_a_reconnecting_agent_gets_its_unaccepted_dispatch_again(agent_pool: Pool, workspace: Workspace) -> None:
    comm = await connect_agent(agent_pool)
    task = await database_sync_to_async(actions.enqueue_task)(workspace=workspace, type="plan")
    assert (await recv(comm))["type"] == "task.dispatch"
    await comm.disconnect()
    comm = await connect_agent(agent_pool)
    again = await recv(comm)
    assert (again["type"], again["task_id"]) == ("task.dispatch", task.pk)
    await comm.disconnect()


async def test_a_restarted_agent_that_forgot_its_running_plan_gets_it_requeued(
    agent_pool: Pool, workspace: Workspace
) -> None:
    comm = await connect_agent(agent_pool)
    task = await database_sync_to_async(actions.enqueue_task)(workspace=workspace, type="plan")
    await recv(comm)
    await send(comm, {"type": "task.accept", "task_id": task.pk, "attempt": 1})
    await recv(comm)
    await comm.disconnect()
    # Same agent id, new process: its hello lists no tasks, so the running plan is lost; it is
    # re-queued (attempt 2) and, the agent being free, dispatched to it again.
    comm = await connect_agent(agent_pool)
    again = await recv(comm)
    assert (again["type"], again["task_id"], again["attempt"]) == ("task.dispatch", task.pk, 2)
    await comm.disconnect()


async def test_a_connection_that_never_says_hello_is_closed(agent_pool: Pool, settings: Any) -> None:
    settings.AGENT_HELLO_TIMEOUT = 0.2
    comm = communicator(agent_pool.token)
    assert (await comm.connect())[0]
    assert await comm.receive_output(timeout=3) == {"type": "websocket.close", "code": 4408}


async def test_binary_frames_and_unsupported_versions_are_refused(agent_pool: Pool) -> None:
    comm = communicator(agent_pool.token)
    await comm.connect()
    await comm.send_to(bytes_data=b"\x00\x01")
    assert (await recv(comm))["code"] == "binary_not_supported"
    await send(comm, {**hello("a-1"), "protocol": PROTOCOL_VERSION + 1})
    assert (await recv(comm))["code"] == "unsupported_version"
    assert (await comm.receive_output(timeout=2)) == {"type": "websocket.close", "code": 4400}
    assert not await database_sync_to_async(Agent.objects.exists)()


async def test_a_heartbeat_flood_is_cut_off_after_the_burst_with_4429(agent_pool: Pool, settings: Any) -> None:
    settings.AGENT_FRAME_BURST = 5
    settings.AGENT_FRAME_RATE = 0.001
    comm = await connect_agent(agent_pool)  # hello is the first frame of the burst
    for _ in range(10):
        await send(comm, {"type": "heartbeat"})
    error = await recv(comm)
    assert error["type"] == "error" and error["code"] == "rate_limited", error
    assert await comm.receive_output(timeout=2) == {"type": "websocket.close", "code": 4429}
    agent = await database_sync_to_async(Agent.objects.get)(agent_id="agent-1")
    assert agent.status == "online"  # the frames before the cut-off were served


async def test_concurrent_connections_per_pool_are_capped(agent_pool: Pool, settings: Any) -> None:
    settings.WS_MAX_CONNECTIONS_PER_POOL = 1
    first = await connect_agent(agent_pool)
    second = communicator(agent_pool.token)
    connected, _ = await second.connect()
    assert connected
    assert await second.receive_output(timeout=2) == {"type": "websocket.close", "code": 4429}
    await first.disconnect()
    third = communicator(agent_pool.token)
    assert (await third.connect())[0]
    await send(third, hello("agent-2"))
    assert (await recv(third))["type"] == "welcome"
    await third.disconnect()


async def test_heartbeats_closer_than_a_second_cost_no_write_unless_draining_changes(
    agent_pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from apps.agents import actions as agent_actions

    calls: list[bool] = []
    original = agent_actions.do_heartbeat

    def counting(**kwargs: Any) -> Any:
        calls.append(kwargs["draining"])
        return original(**kwargs)

    monkeypatch.setattr(agent_actions, "do_heartbeat", counting)
    comm = await connect_agent(agent_pool)
    for _ in range(20):
        await send(comm, {"type": "heartbeat"})
    await send(comm, {"type": "heartbeat", "draining": True})
    await send(comm, {"type": "ping"})  # answered after every frame before it was handled
    assert (await recv(comm))["code"] == "unknown_type"
    assert calls == [False, True]
    agent = await database_sync_to_async(Agent.objects.get)(agent_id="agent-1")
    assert agent.capacity == 0
    await comm.disconnect()

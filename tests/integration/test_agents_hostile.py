"""200 malformed or hostile frames at a real daphne replica's C&C socket; an impersonated agent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import stat
from pathlib import Path
from typing import Any

import pytest
import websockets

from apps.agents.models import Agent
from apps.agents.protocol import PROTOCOL_VERSION
from apps.workspaces.models import StateVersion, Task, TaskLogChunk, Workspace
from harness.processes import ProcessGroup
from tests.integration.agentkit import (
    FAST_ENV,
    enqueue,
    make_pool,
    make_workspace,
    slow_terraform,
    start_agent,
    task_status,
    wait_connected,
    wait_credential,
    wait_for,
    wait_terminal,
)

pytestmark = pytest.mark.slow

# The default AGENT_MAX_FRAME_BYTES; daphne runs with twice that (harness/processes.py, as deployed).
MAX_FRAME = 1024 * 1024
DAPHNE_MAX_FRAME = 2 * MAX_FRAME
INTRUDER_HELLO = {"type": "hello", "protocol": PROTOCOL_VERSION, "agent_id": "intruder", "capacity": 1}


def snapshot() -> dict[str, Any]:
    return {
        "tasks": list(Task.objects.order_by("pk").values()),
        "logs": list(TaskLogChunk.objects.order_by("pk").values()),
        "states": list(StateVersion.objects.order_by("pk").values()),
        "workspaces": list(Workspace.objects.order_by("pk").values()),
        "agents": list(Agent.objects.exclude(agent_id="intruder").order_by("pk").values()),
    }


def hostile_frames(victim_task: int, rng: random.Random) -> list[str]:
    """Bad JSON, wrong types, unknown types and fields, huge values, and reports about a task that
    belongs to another agent."""
    ref = {"task_id": victim_task, "attempt": 1}
    base: list[Any] = [
        "{",
        "",
        "null",
        "[]",
        '"hello"',
        "NaN",
        '{"type": "heartbeat", "tasks": NaN}',
        "[" * 5000,
        "\u00ff\u0000 not json",
        {"type": None},
        INTRUDER_HELLO,  # already said hello
        {"type": "launch"},
        {"type": "task.accept", **ref},
        {"type": "task.accept", "task_id": "1", "attempt": 1},
        {"type": "task.accept", "task_id": victim_task, "attempt": True},
        {"type": "task.reject", **ref},
        {"type": "task.log", **ref, "seq": 0, "text": "owned"},
        {"type": "task.log", **ref, "seq": -1, "text": "x"},
        {"type": "task.log", **ref, "seq": 0, "text": "x" * 70000},
        {"type": "task.log", **ref, "seq": 0, "text": {"nested": "x"}},
        {"type": "task.result", **ref, "status": "succeeded", "state": {"lineage": "evil", "serial": 9}},
        {"type": "task.result", **ref, "status": "hacked"},
        {"type": "task.result", **ref, "status": "failed", "exit_code": 10**30},
        {"type": "task.result", "task_id": 10**20, "attempt": 1, "status": "failed"},
        {"type": "heartbeat", "tasks": [{"task_id": victim_task}]},
        {"type": "heartbeat", "draining": "yes"},
        {"type": "heartbeat", "extra": 1},
    ]
    frames: list[str] = []
    while len(frames) < 195:
        frame = rng.choice(base)
        frames.append(frame if isinstance(frame, str) else json.dumps(frame))
    frames += ["x" * (MAX_FRAME + 1)] * 4  # oversized: frame_too_big, close 4009
    frames += ["x" * (DAPHNE_MAX_FRAME + 1)]  # above daphne's own limit: it drops the connection
    rng.shuffle(frames)
    return frames


async def attack(url: str, token: str, frames: list[str]) -> dict[str, int]:
    bearer = token  # the pool token registers the intruder; its own credential reconnects it
    counts = {"error": 0, "closed_4009": 0, "dropped": 0, "other": 0}
    ws = None
    for frame in frames:
        if ws is None:
            ws = await websockets.connect(url, additional_headers={"Authorization": "Bearer " + bearer}, max_size=None)
            await ws.send(json.dumps(INTRUDER_HELLO))
            welcome = json.loads(await ws.recv())
            assert welcome["type"] == "welcome"
            bearer = welcome.get("credential", bearer)
        await ws.send(frame)
        closed: websockets.exceptions.ConnectionClosed | None = None
        try:
            reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if reply.get("code") == "frame_too_big":
                assert MAX_FRAME < len(frame) <= DAPHNE_MAX_FRAME, frame[:100]
                await asyncio.wait_for(ws.wait_closed(), 5)
                assert ws.close_code == 4009, ws.close_code
                counts["closed_4009"] += 1
                ws = None
                continue
            counts["error" if reply.get("type") in ("error", "task.drop") else "other"] += 1
        except websockets.exceptions.ConnectionClosed as exc:
            closed = exc
        if closed is not None:
            # autobahn (under daphne) fails an over-limit message by dropping the TCP connection:
            # no close frame (1006 at the client).
            assert closed.rcvd is None, closed
            assert len(frame) > DAPHNE_MAX_FRAME, (frame[:100], closed)
            counts["dropped"] += 1
            ws = None
    if ws is not None:
        # Still serving: a valid heartbeat is accepted silently, then an unknown type is refused.
        await ws.send(json.dumps({"type": "heartbeat"}))
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["code"] == "unknown_type"
        await ws.close()
    return counts


def test_two_hundred_hostile_frames_change_nothing_and_crash_nothing(processes: ProcessGroup) -> None:
    pool, token = make_pool()
    workspace = make_workspace(pool, "victim")
    web = processes.daphne("web-1", env=FAST_ENV)
    # A task dispatched to another agent of the same pool (the intruder's pool-mate).
    owner = Agent.objects.create(agent_id="owner", pool=pool, status="online", connected_pod="web-9", capacity=0)
    task_id = enqueue(web.url, workspace, "plan")
    Task.objects.filter(pk=task_id).update(status="dispatched", agent=owner)
    before = snapshot()
    frames = hostile_frames(task_id, random.Random(5))
    assert len(frames) == 200
    counts = asyncio.run(attack(web.ws_url + "/ws/agents/", token, frames))
    assert counts["closed_4009"] == 4
    assert counts["dropped"] == 1
    assert counts["error"] == 195
    assert counts["other"] == 0
    wait_for(
        "intruder disconnected",
        lambda: not Agent.objects.filter(agent_id="intruder").exclude(connected_pod=None).exists(),
        10,
    )
    assert snapshot() == before
    log = web.log()
    assert "Traceback" not in log
    assert " ERROR " not in log
    assert web.alive()


async def impersonate(url: str, token: str, agent_id: str) -> tuple[dict[str, Any], int | None]:
    """A pool-token holder says hello as a registered agent, listing no tasks (which, were it
    believed, would settle the real agent's running task as lost)."""
    async with websockets.connect(url, additional_headers={"Authorization": "Bearer " + token}) as ws:
        await ws.send(json.dumps({**INTRUDER_HELLO, "agent_id": agent_id, "tasks": []}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        return reply, ws.close_code


def test_a_pool_token_cannot_speak_for_a_registered_agent(processes: ProcessGroup, tmp_path: Path) -> None:
    pool, token = make_pool()
    workspace = make_workspace(pool, "victim")
    web = processes.daphne("web-1", env=FAST_ENV)
    agent = start_agent(
        processes,
        "agent-1",
        urls=[web.ws_url],
        token=token,
        tmp_path=tmp_path,
        env={"SLOW_SECONDS": "4"},
        terraform_bin=slow_terraform(tmp_path),
    )
    wait_connected(agent, "web-1")
    wait_credential(agent, tmp_path)
    assert stat.S_IMODE((tmp_path / "agent-1.credential").stat().st_mode) == 0o600
    task_id = enqueue(web.url, workspace, "apply")
    wait_for("running", lambda: task_status(task_id) == "running", 30, [agent])
    watched = ("status", "connected_pod", "connected_at")
    before = Agent.objects.values_list(*watched).get(agent_id="agent-1")

    reply, close_code = asyncio.run(impersonate(web.ws_url + "/ws/agents/", token, "agent-1"))
    assert reply["type"] == "error" and reply["code"] == "credential_required", reply
    assert close_code == 4401

    assert Agent.objects.values_list(*watched).get(agent_id="agent-1") == before
    assert task_status(task_id) == "running"
    # The refused connection's end marked nothing offline; the real agent finishes its apply.
    assert wait_terminal(task_id, 60, [agent, web]) == "succeeded"
    assert Agent.objects.get(agent_id="agent-1").connected_pod == "web-1"
    assert StateVersion.objects.filter(task_id=task_id).exists()
    assert "Traceback" not in web.log()

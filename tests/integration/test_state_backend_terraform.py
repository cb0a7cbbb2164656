"""Real Terraform 1.0.3 against the platform's http state backend on a real daphne replica: the
lock is Terraform's own, and a Terraform resumed after its attempt was settled writes nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest
from django.utils import timezone

from apps.agents.terraform import BACKEND_OVERRIDE, backend_override
from apps.workspaces import statebackend
from apps.workspaces.models import StateLock, StateTransition, StateVersion, Task
from harness.processes import ProcessGroup
from tests.integration.agentkit import (
    FAST_ENV,
    OUTPUTS_TF,
    enqueue,
    make_pool,
    make_workspace,
    start_agent,
    task_status,
    terraform_path,
    wait_connected,
    wait_for,
    wait_terminal,
)

pytestmark = pytest.mark.slow


def terraform(workdir: Path, *args: str, **popen: Any) -> subprocess.Popen[bytes]:
    env = {"PATH": os.environ["PATH"], "HOME": str(workdir), "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1"}
    return subprocess.Popen(
        [terraform_path(), *args, "-no-color"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **popen,
    )


def prepared(tmp_path: Path, name: str, backend: dict[str, Any], origin: str) -> Path:
    workdir = tmp_path / name
    workdir.mkdir()
    (workdir / "main.tf").write_text(OUTPUTS_TF)
    (workdir / BACKEND_OVERRIDE).write_text(backend_override(backend, origin=origin))
    init = terraform(workdir, "init", "-input=false")
    output, _ = init.communicate(timeout=60)
    assert init.returncode == 0, output.decode()
    return workdir


def test_terraform_locks_through_the_platform_and_a_second_terraform_fails_on_the_lock(
    processes: ProcessGroup, tmp_path: Path
) -> None:
    pool, _ = make_pool()
    workspace = make_workspace(pool, "two-terraforms")
    web = processes.daphne("web-1", env=FAST_ENV)
    task = Task.objects.create(workspace=workspace, type="apply", status="running", started_at=timezone.now())
    backend = statebackend.mint(task)  # the suite signs with the replicas' key
    first = prepared(tmp_path, "first", backend, web.url)
    second = prepared(tmp_path, "second", backend, web.url)

    # Without -auto-approve Terraform holds the lock while it waits for "yes".
    holder = terraform(first, "apply", stdin=subprocess.PIPE)
    lock = wait_for("the first Terraform's lock", lambda: StateLock.objects.held().first(), 60)
    assert (lock.task_id, lock.attempt, lock.info["Operation"]) == (task.pk, 1, "OperationTypeApply")
    loser = terraform(second, "apply", "-auto-approve", "-input=false", "-lock-timeout=0s")
    output = loser.communicate(timeout=60)[0].decode()
    assert loser.returncode == 1, output
    assert "Error acquiring the state lock" in output
    assert "already locked: ID=%s" % lock.lock_id in " ".join(output.split())  # Terraform wraps lines
    assert not StateVersion.objects.exists()

    output = holder.communicate(b"yes\n", timeout=60)[0].decode()
    assert holder.returncode == 0, output
    version = StateVersion.objects.get(workspace=workspace)
    assert version.state["outputs"]["greeting"]["value"] == "hello world"
    workspace.refresh_from_db()
    assert workspace.current_state == version
    assert StateLock.objects.get(pk=lock.pk).release_reason == "unlocked"
    assert not StateLock.objects.held().exists()


# A data source that makes Terraform wait, after it locked the state and before it writes it: its
# remote state is served by a test server that answers only once the test opens the gate.
GATED_TF = (
    OUTPUTS_TF
    + """
data "terraform_remote_state" "gate" {
  backend = "http"
  config = {
    address = "%s"
  }
}

output "gate" {
  value = data.terraform_remote_state.gate.outputs
}
"""
)
GATE_STATE = {
    "version": 4,
    "terraform_version": "1.0.3",
    "serial": 1,
    "lineage": "gate",
    "outputs": {},
    "resources": [],
}


@contextmanager
def gate() -> Iterator[tuple[str, threading.Event]]:
    opened = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_GET(self) -> None:
            opened.wait(120)
            body = json.dumps(GATE_STATE).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield "http://127.0.0.1:%d/gate" % server.server_address[1], opened
    finally:
        opened.set()
        server.shutdown()
        server.server_close()


def terraform_group(agent_pid: int) -> int:
    """The process group of the agent's Terraform (it runs in a session of its own)."""
    for child in psutil.Process(agent_pid).children():
        if os.getpgid(child.pid) == child.pid:
            return child.pid
    raise AssertionError("the agent runs no Terraform")


def test_a_terraform_resumed_after_its_attempt_was_settled_writes_no_state(
    processes: ProcessGroup, tmp_path: Path
) -> None:
    pool, token = make_pool()
    workspace = make_workspace(pool, "frozen")
    web = processes.daphne("web-1", env=FAST_ENV)
    processes.manage("leader-1", ["runleader", "--http-addr="], role="leader", env=FAST_ENV)
    frozen = start_agent(processes, "agent-1", urls=[web.ws_url], token=token, tmp_path=tmp_path)
    wait_connected(frozen, "web-1")
    base = enqueue(web.url, workspace, "apply")  # so that A starts from a state
    assert wait_terminal(base, 60, [frozen]) == "succeeded"

    with gate() as (gate_url, opened):
        workspace.terraform_files = {"main.tf": GATED_TF % gate_url}
        workspace.save(update_fields=["terraform_files"])
        first = enqueue(web.url, workspace, "apply")
        lock = wait_for(
            "A's Terraform holding the lock",
            lambda: StateLock.objects.held().filter(task_id=first).first(),
            60,
            [frozen],
        )
        # Freeze the machine mid-apply: Terraform (locked, reading its data source) and the agent.
        group = terraform_group(frozen.pid)
        os.killpg(group, signal.SIGSTOP)
        frozen.signal(signal.SIGSTOP)
        try:
            wait_for("A settled as agent lost", lambda: task_status(first) == "errored", 30)
            assert StateLock.objects.get(pk=lock.pk).release_reason.startswith("settled")
            other = start_agent(processes, "agent-2", urls=[web.ws_url], token=token, tmp_path=tmp_path)
            wait_connected(other, "web-1")
            # B applies another greeting than A's (A's files came with its dispatch).
            workspace.terraform_files = {"main.tf": (GATED_TF % gate_url).replace("hello", "bye")}
            workspace.save(update_fields=["terraform_files"])
            second = enqueue(web.url, workspace, "apply")
            opened.set()
            assert wait_terminal(second, 60, [other]) == "succeeded"
        finally:
            os.killpg(group, signal.SIGCONT)
            frozen.signal(signal.SIGCONT)
        workspace.refresh_from_db()
        current = workspace.current_state
        assert current is not None and current.task_id == second
        assert current.state["outputs"]["greeting"]["value"] == "bye world"
        # A's Terraform resumes: its state write and its unlock are refused, as the replica's access
        # log shows (A's own log is closed: the task was settled, so the agent's chunks are refused
        # and the agent stops the task, which Terraform answers by persisting and unlocking anyway).

        def refused() -> list[str]:
            return [line for line in web.log().splitlines() if "terraform-state" in line and '" 409 ' in line]

        wait_for("A's refused unlock", lambda: any('"UNLOCK ' in line for line in refused()), 60, [frozen])
        assert any('"POST ' in line for line in refused()), refused()
    # Nothing regressed: B's state is current; A's is kept as a conflict, which holds applies.
    workspace.refresh_from_db()
    assert workspace.current_state == current
    conflict = wait_for(
        "A's state kept as a conflict",
        lambda: StateVersion.objects.filter(workspace=workspace, status="conflict").first(),
        30,
    )
    assert (conflict.task_id, conflict.attempt, conflict.lineage) == (first, 1, current.lineage)
    assert conflict.state["outputs"]["greeting"]["value"] == "hello world"
    assert StateVersion.objects.filter(workspace=workspace, status="conflict").count() == 1
    moves = list(StateTransition.objects.filter(workspace=workspace).values_list("task_id", "to_serial"))
    start = StateVersion.objects.get(task_id=base).terraform_serial
    assert moves == [(base, start), (second, start + 1)]
    assert task_status(first) == "errored"

"""A hostile workspace's Terraform, run by a real runagent, looks for the agent's secrets: its pool
token, its credential, the platform's database URL and signing key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from apps.workspaces.models import Task, TaskLogChunk, Variable
from harness.processes import NOBODY, ProcessGroup
from tests.integration.agentkit import (
    FAST_ENV,
    enqueue,
    make_pool,
    make_workspace,
    start_agent,
    wait_connected,
    wait_credential,
    wait_terminal,
)

pytestmark = pytest.mark.slow

# What `local-exec` or a malicious provider could do: print its environment and read its
# parent's (the agent's) environment and command line through /proc.
SNOOP = """\
#!/bin/sh
echo "== env"
env
echo "== environ of $PPID"
cat /proc/$PPID/environ 2>&1 | tr '\\000' '\\n'
echo "== cmdline of $PPID"
tr '\\000' ' ' < /proc/$PPID/cmdline
echo
grep CapEff /proc/self/status
echo "== end"
"""
CAP_SYS_PTRACE = 19


def test_terraform_reads_no_token_no_platform_secret_and_not_the_agents_environ(
    processes: ProcessGroup, tmp_path: Path
) -> None:
    files = tmp_path / "agent"
    files.mkdir()
    if os.geteuid() == 0:
        os.chown(files, NOBODY, NOBODY)  # the agent runs as nobody, below, and writes here
    snoop = files / "terraform"
    snoop.write_text(SNOOP)
    snoop.chmod(0o755)
    pool, token = make_pool()
    workspace = make_workspace(pool, "hostile")
    Variable.objects.create(workspace=workspace, key="name", value="given")
    web = processes.daphne("web-1", env=FAST_ENV)
    secrets = {
        "AGENT_TOKEN": token,
        "DATABASE_URL": "postgresql://platform:db-password-0451@db/platform",
        "SECRET_KEY": "platform-signing-key-7781",
    }
    agent = start_agent(
        processes,
        "agent-1",
        urls=[web.ws_url],
        token=token,
        tmp_path=files,
        env=secrets,
        terraform_bin=str(snoop),
        # The agent, and so its Terraform, as one ordinary user: the case guarded against.
        unprivileged=True,
    )
    wait_connected(agent, "web-1")
    secrets["credential"] = wait_credential(agent, files)
    assert secrets["credential"].startswith("iacpa_")
    task_id = enqueue(web.url, workspace, "plan")
    assert wait_terminal(task_id, 60, [agent, web]) == "succeeded", Task.objects.get(pk=task_id).error
    log = "".join(TaskLogChunk.objects.filter(task_id=task_id).order_by("seq").values_list("text", flat=True))
    # The stand-in ran (twice: init and plan), as the agent's child, and saw the workspace's variable.
    assert log.count("== end") == 2, log
    assert "== environ of %d\n" % agent.pid in log
    assert "TF_VAR_name=given" in log
    effective = int(log.split("CapEff:")[1].split()[0], 16)
    assert not effective & (1 << CAP_SYS_PTRACE), "the stand-in holds CAP_SYS_PTRACE: the test proves nothing"
    assert "Permission denied" in log.split("== environ of")[1].split("== cmdline")[0]
    for name, value in secrets.items():
        assert value not in log, name
    assert "AGENT_TOKEN" not in log
    assert "SECRET_KEY" not in log

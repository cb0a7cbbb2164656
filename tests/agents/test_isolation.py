"""What Terraform sees of the agent: an allowlisted environment and a non-dumpable agent."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from apps.agents.isolation import TASK_SETTINGS, terraform_environment
from apps.agents.terraform import TaskSpec, TerraformRun

AGENT_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/agent",
    "TMPDIR": "/var/tmp",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "https_proxy": "http://proxy:3128",
    "NO_PROXY": "localhost",
    "SSL_CERT_FILE": "/etc/ssl/proxy-ca.pem",
    "TF_PLUGIN_CACHE_DIR": "/cache",
    "AGENT_TOKEN": "iacp_pool-token",
    "DATABASE_URL": "postgresql://u:p@db/x",
    "SECRET_KEY": "signing-key",
    "AWS_SECRET_ACCESS_KEY": "agent-host-credential",
    "TF_VAR_leaked": "from-the-agent",
}


def test_only_the_allowlist_and_the_workspace_reach_terraform() -> None:
    env = terraform_environment(
        agent_env=AGENT_ENV, passthrough=(), terraform_vars={"region": "eu-1"}, env_vars={"AWS_PROFILE": "ws"}
    )
    assert env == {
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/agent",
        "TMPDIR": "/var/tmp",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "https_proxy": "http://proxy:3128",
        "NO_PROXY": "localhost",
        "SSL_CERT_FILE": "/etc/ssl/proxy-ca.pem",
        "TF_VAR_region": "eu-1",
        "AWS_PROFILE": "ws",
        **TASK_SETTINGS,
    }


def test_the_operator_passes_extra_names_through_by_name() -> None:
    env = terraform_environment(
        agent_env=AGENT_ENV, passthrough=("TF_PLUGIN_CACHE_DIR", "NOT_SET"), terraform_vars={}, env_vars={}
    )
    assert env["TF_PLUGIN_CACHE_DIR"] == "/cache"
    assert "NOT_SET" not in env
    assert "AGENT_TOKEN" not in env


def test_a_workspace_cannot_turn_prompts_back_on() -> None:
    env = terraform_environment(agent_env={}, passthrough=(), terraform_vars={}, env_vars={"TF_INPUT": "1"})
    assert env["TF_INPUT"] == "0"


def test_a_real_terraform_child_gets_no_agent_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in AGENT_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
    dump = tmp_path / "dump-env"
    dump.write_text("#!/bin/sh\nenv\n")
    dump.chmod(dump.stat().st_mode | stat.S_IXUSR)
    spec = TaskSpec(
        task_id=1,
        attempt=1,
        task_type="plan",
        workspace_id=1,
        files={},
        variables={"name": "v"},
        state_backend={"address": "http://127.0.0.1:9/", "username": "task-1", "password": "p"},
        env={"PLAIN": "p"},
    )
    output: list[str] = []
    run = TerraformRun(spec=spec, terraform_bin=str(dump), on_output=output.append, work_root=str(tmp_path))
    outcome = asyncio.run(run.run())
    assert outcome.status == "succeeded", outcome.error
    text = "".join(output)
    assert "TF_VAR_name=v" in text
    assert "PLAIN=p" in text
    assert "HOME=/home/agent" in text
    for secret in ("iacp_pool-token", "postgresql://u:p@db/x", "signing-key", "agent-host-credential"):
        assert secret not in text
    assert "TF_VAR_leaked" not in text


def test_make_non_dumpable_clears_the_flag() -> None:
    """In a child process: the flag is per process, and the test runner should stay debuggable."""
    code = (
        "from apps.agents.isolation import is_dumpable, make_non_dumpable;"
        "before = is_dumpable(); ok = make_non_dumpable(); print(before, ok, is_dumpable())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.split() == ["True", "True", "False"]

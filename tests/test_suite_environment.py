"""The suite runs as `pytest` on a fresh clone, on its own settings whatever the caller exported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness.processes import ROOT
from tests.plugins.environment import SECRET_KEY

PROBE = """
import json, os, pathlib, tempfile
import tests.plugins.environment
from harness.processes import ProcessGroup
group = ProcessGroup(
    pathlib.Path(tempfile.gettempdir()), os.environ["DATABASE_URL"], secret_key=tests.plugins.environment.SECRET_KEY
)
print(json.dumps({"suite": dict(os.environ), "web": group.env("web-1", "web"), "agent": group.env("agent-1", "agent")}))
"""


def test_plain_pytest_imports_the_tests_package() -> None:
    """`pytest` (the script, which does not put the working directory on sys.path) finds `tests`."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "pytest"), "--collect-only", "-q", "tests/test_settings.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tests collected" in result.stdout


def test_settings_exported_by_the_caller_reach_neither_the_suite_nor_its_processes() -> None:
    caller = {
        **os.environ,
        "SECRET_KEY": "the-callers-key",
        "DEBUG": "1",
        "CHANNEL_LAYER_BACKEND": "memory",
        "LOG_FORMAT": "json",
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "LEADER_ELECTION_BACKEND": "kubernetes",
        "DB_CONNECT_TIMEOUT": "7",
        "DATABASE_TEST_NAME": "test_elsewhere",
    }
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=caller, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    for env in (seen["suite"], seen["web"]):
        assert env["SECRET_KEY"] == SECRET_KEY
        for name in (
            "DEBUG",
            "CHANNEL_LAYER_BACKEND",
            "LOG_FORMAT",
            "KUBERNETES_SERVICE_HOST",
            "LEADER_ELECTION_BACKEND",
        ):
            assert name not in env, name
        # Where the suite's database is, and how to reach it, is the caller's to say.
        assert env["DATABASE_URL"] == caller["DATABASE_URL"]
        assert env["DB_CONNECT_TIMEOUT"] == "7"
        assert env["DATABASE_TEST_NAME"] == "test_elsewhere"
    assert seen["web"]["PROCESS_ROLE"] == "web"
    assert "SECRET_KEY" not in seen["agent"]

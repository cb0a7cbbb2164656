"""schemathesis against a real daphne replica (DEBUG off) as a platform admin, as a user without
any role and anonymously: every check, a fixed seed, no server error and no schema mismatch.

What the configuration relaxes, and why:
- strings carry no NUL and no lone surrogate (``allow-x00 = false``, ``codec = "utf-8"``): the API
  refuses both everywhere with a documented 400 (iacplatform/inputs.py), which a JSON Schema
  string cannot say;
- ``positive_data_acceptance`` also accepts 400: a schema cannot say which ids exist, and a
  reference to a missing object (``"workspace": 0``) is a 400 field error.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from harness.processes import ProcessGroup
from tests.access.fixtures import api_token

pytestmark = pytest.mark.slow

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
CONFIG = """
[generation]
allow-x00 = false
codec = "utf-8"
database = "none"

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429"]
"""
AUTH = """
[auth.openapi.tokenAuth]
api_key = "Token %s"
"""


def run_schemathesis(url: str, config: Path, report: Path, *, examples: int) -> subprocess.CompletedProcess[str]:
    argv = [
        SCHEMATHESIS,
        "--config-file",
        str(config),
        "run",
        url + "/api/v1/schema/",
        "--checks",
        "all",
        "--seed",
        "1",
        "--max-examples",
        str(examples),
        "--phases",
        "examples,coverage,fuzzing",
        "--no-shrink",
        "--request-timeout",
        "30",
    ]
    return subprocess.run(argv, cwd=report, capture_output=True, text=True, timeout=400, check=False)


def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(processes: ProcessGroup, tmp_path: Path) -> None:
    users = get_user_model().objects
    admin = users.create_superuser("st-admin", password="pw-long-enough")
    nobody = users.create_user("st-nobody", password="pw-long-enough")
    identities = {
        "admin": AUTH % api_token(admin),
        "no-roles": AUTH % api_token(nobody),
        "anonymous": "",
    }
    # Throttling would turn a fuzzer's burst into 429s (documented, but it hides what it tests), and
    # the CPU share and the background lane into waits (a fuzzer is the heaviest client there is).
    env = {"DEBUG": "0", "API_THROTTLE_USER_RATE": "", "API_THROTTLE_ANON_RATE": "", "API_CLIENT_CPU_SHARE": "0"}
    web = processes.daphne("web-st", env={**env, "API_CLIENT_BACKGROUND_USAGE": "0"})
    failures = []
    for name, auth in identities.items():
        workdir = tmp_path / name
        workdir.mkdir()
        config = workdir / "schemathesis.toml"
        config.write_text(CONFIG + auth)
        # Anonymous requests all end at the same 403: fewer examples find as much there.
        result = run_schemathesis(web.url, config, workdir, examples=3 if name == "anonymous" else 6)
        if result.returncode != 0 or " passed" not in result.stdout:
            failures.append(
                "===== as %s (exit %d) =====\n%s%s" % (name, result.returncode, result.stdout, result.stderr)
            )
    log = web.log()
    tracebacks = [block[:3000] for block in log.split("Traceback")[1:]]
    assert not failures, "\n".join([*failures, "===== server tracebacks =====", *tracebacks])
    assert not tracebacks, tracebacks

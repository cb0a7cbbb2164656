"""The README's `make` commands work as written, in a shell with nothing exported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from harness.processes import ROOT
from iacplatform.devdb import DATA_DIR, ensure_server, stop_servers

DATABASE = "iacplatform_make_manage_test"


def make(*args: str) -> subprocess.CompletedProcess[str]:
    # As in a new terminal: no DATABASE_URL (make picks the embedded server), no SECRET_KEY, no DEBUG.
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SECRET_KEY", "DEBUG", "PROCESS_ROLE")}
    return subprocess.run(
        ["make", "-s", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False
    )


@pytest.fixture
def dev_database() -> Iterator[str]:
    url = ensure_server(database=DATABASE)
    yield DATABASE
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE)))


@pytest.mark.slow
def test_make_manage_runs_manage_py_against_the_embedded_server(dev_database: str) -> None:
    """`make manage ARGS="..."` (README): the embedded server's database, DEBUG, the venv."""
    db = "DEV_DATABASE=%s" % dev_database
    migrated = make("manage", db, "ARGS=migrate --noinput -v0")
    assert migrated.returncode == 0, migrated.stderr
    pool = make("manage", db, "ARGS=createagentpool make-test-pool")
    assert pool.returncode == 0, pool.stderr
    assert pool.stdout.startswith("iacp_")  # the token, alone on stdout
    status = make("manage", db, "ARGS=clusterstatus --json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["lease"]["exists"] is False  # no runleader ever ran here
    url = make("db", db)
    assert url.returncode == 0, url.stderr
    with psycopg.connect(url.stdout.strip()) as conn:
        assert conn.execute("SELECT name FROM agents_agentpool").fetchall() == [("make-test-pool",)]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Under the project's .data, not tmp_path: the server runs as its own user when the suite runs as
    # root, and every pytest session (any worktree's) sets /tmp/pytest-of-<user> back to mode 0700.
    path = DATA_DIR / ("stop-test-%s" % uuid.uuid4().hex[:8])
    yield path
    stop_servers(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_stop_servers_stops_every_embedded_server_under_the_directory(data_dir: Path) -> None:
    """What `make stop` runs: the servers under the directory are stopped, and only those."""
    url = ensure_server(data_dir / "pg")
    with psycopg.connect(url) as conn:
        conn.execute("SELECT 1")
    assert stop_servers(data_dir / "elsewhere") == []
    assert stop_servers(data_dir) == [data_dir / "pg"]
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=3).close()
    assert stop_servers(data_dir) == []

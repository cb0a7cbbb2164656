"""The short chaos run again with the whole cluster behind a real PgBouncer: every process's
DATABASE_URL through transaction pooling, DATABASE_SESSION_URL through session pooling
(``make chaos PGBOUNCER=1`` is the long version)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from harness.processes import ROOT
from tests.fixtures import pgbouncer_binary

pytestmark = pytest.mark.slow


def test_a_few_rounds_of_faults_behind_pgbouncer_break_no_invariant() -> None:
    binary = pgbouncer_binary()  # installs the Debian package when missing (fails loudly if it cannot)
    workdir = ROOT / ".data" / ("chaos-pgbouncer-ci-%d" % os.getpid())
    env = {**os.environ, "PATH": os.path.dirname(binary) + os.pathsep + os.environ.get("PATH", "")}
    result = subprocess.run(
        [sys.executable, "-m", "chaos", "--rounds", "3", "--seed", "2026", "--pgbouncer", "--workdir", str(workdir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
    )
    logs = "\n".join(p.read_text(errors="replace")[-4000:] for p in (workdir / "logs").glob("*.log"))
    if result.returncode == 0:
        shutil.rmtree(workdir, ignore_errors=True)
    assert result.returncode == 0, result.stdout + result.stderr + logs
    assert "the cluster reaches PostgreSQL through PgBouncer" in result.stdout
    assert "chaos: no violations (seed 2026)" in result.stdout

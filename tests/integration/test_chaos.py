"""The short chaos run of CI: a whole local cluster, a few seeded rounds of faults, every
invariant checked after each round (``make chaos ROUNDS=200`` is the long version)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from harness.processes import ROOT

pytestmark = pytest.mark.slow


def test_a_few_rounds_of_faults_break_no_invariant() -> None:
    # Not under pytest's tmp_path: pytest re-tightens its base directory to 0700 whenever another
    # pytest session starts, and the embedded server runs as its own user (when run as root).
    workdir = ROOT / ".data" / ("chaos-ci-%d" % os.getpid())
    result = subprocess.run(
        [sys.executable, "-m", "chaos", "--rounds", "4", "--seed", "2026", "--workdir", str(workdir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=420,
    )
    logs = "\n".join(p.read_text(errors="replace")[-4000:] for p in (workdir / "logs").glob("*.log"))
    if result.returncode == 0:
        shutil.rmtree(workdir, ignore_errors=True)
    assert result.returncode == 0, result.stdout + result.stderr + logs
    assert "chaos: no violations (seed 2026)" in result.stdout
    # One timestamped line per round ("11:13:03 round   1  sigkill:web..."); the summary's lines
    # may say "round" too.
    assert len(re.findall(r"^\d\d:\d\d:\d\d round +\d+ ", result.stdout, re.MULTILINE)) == 4

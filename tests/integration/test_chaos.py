"""The short chaos run of CI: a whole local cluster, a few seeded rounds of faults, every
invariant checked after each round (``make chaos ROUNDS=200`` is the long version)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import ROOT

pytestmark = pytest.mark.slow


def test_a_few_rounds_of_faults_break_no_invariant(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chaos", "--rounds", "4", "--seed", "2026", "--workdir", str(tmp_path / "chaos")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=420,
    )
    logs = "\n".join(p.read_text(errors="replace")[-4000:] for p in (tmp_path / "chaos" / "logs").glob("*.log"))
    assert result.returncode == 0, result.stdout + result.stderr + logs
    assert "chaos: no violations (seed 2026)" in result.stdout
    assert result.stdout.count("\nround ") == 4

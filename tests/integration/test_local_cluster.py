"""`make run`'s process manager: honcho running the Procfile's own leader lines (each under
iacplatform/supervise.py) survives a SIGTERMed leader, and the leader comes back as a standby."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from harness.processes import ROOT, ProcessGroup, free_port
from tests.integration.test_runleader import holder, wait_for

pytestmark = pytest.mark.slow


def procfile_lines(*names: str) -> list[str]:
    lines = [line for line in (ROOT / "Procfile").read_text().splitlines() if line.strip()]
    return [line for line in lines if line.split(":", 1)[0] in names]


def pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def test_every_procfile_process_runs_under_the_restart_wrapper() -> None:
    lines = procfile_lines("web1", "web2", "leader1", "leader2", "agent")
    assert len(lines) == 5
    for line in lines:
        assert "python -m iacplatform.supervise " in line and "--pidfile .data/run/" in line, line


def test_honcho_survives_a_sigtermed_leader_and_the_leader_comes_back(processes: ProcessGroup, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    procfile = tmp_path / "Procfile"
    procfile.write_text(
        "\n".join(line.replace(".data/run/", str(run_dir) + "/") for line in procfile_lines("leader1", "leader2"))
        + "\n"
    )
    honcho = processes.start(
        "honcho",
        [str(Path(sys.executable).parent / "honcho"), "start", "-f", str(procfile), "-d", str(ROOT)],
        role="leader",
        env={"LEADER1_PORT": str(free_port()), "LEADER2_PORT": str(free_port())},
    )
    try:
        leading = wait_for(lambda: holder() in ("leader-1", "leader-2") and holder(), 60, "a leader")
        other = {"leader-1": "leader-2", "leader-2": "leader-1"}[str(leading)]
        killed = pid_in(run_dir / ("%s.pid" % leading))
        assert killed is not None
        os.kill(killed, signal.SIGTERM)
        wait_for(lambda: holder() == other, 10, "the standby to take over")
        restarted = wait_for(
            lambda: (p := pid_in(run_dir / ("%s.pid" % leading))) not in (None, killed) and p, 20, "the restart"
        )
        assert psutil.Process(int(str(restarted))).is_running()
        time.sleep(3)  # honcho used to stop everything ~1.5 s after the leader exited
        assert honcho.alive(), honcho.log()
        assert "supervise: %s exited with code 0" % leading.replace("-", "") in honcho.log()  # type: ignore[attr-defined]
    finally:
        # honcho's children run in sessions of their own: stop it gracefully so it stops them.
        honcho.signal(signal.SIGTERM)
        honcho.wait(30)
        for pidfile in run_dir.glob("*.pid"):
            pid = pid_in(pidfile)
            if pid is not None and psutil.pid_exists(pid):
                os.kill(pid, signal.SIGKILL)

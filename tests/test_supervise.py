"""`make run`'s restart wrapper starts an exited command again, the way Kubernetes restarts a pod,
and passes a stop on to it exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from harness.processes import ROOT
from iacplatform.supervise import FIRST_DELAY, MAX_DELAY, STABLE_AFTER, Supervisor, restart_delay

# Appends "ready <pid>" to the file named by argv[1] once it handles SIGTERM, then "term <pid>" for
# each SIGTERM it hears, and exits 0.
CHILD = """
import os, signal, sys, time
def note(what):
    with open(sys.argv[1], "a") as f:
        f.write("%s %d\\n" % (what, os.getpid()))
def on_term(signum, frame):
    note("term")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
note("ready")
while True:
    time.sleep(0.05)
"""


def test_the_delay_doubles_for_quick_exits_and_starts_over_after_a_stable_run() -> None:
    delays = []
    delay = 0.0
    for _ in range(7):
        delay = restart_delay(uptime=0.5, previous=delay)
        delays.append(delay)
    assert delays == [FIRST_DELAY, 2, 4, 8, 16, MAX_DELAY, MAX_DELAY]
    assert restart_delay(uptime=STABLE_AFTER, previous=MAX_DELAY) == FIRST_DELAY


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("not within %.0f s: %s" % (timeout, what))


def _ready(events: Path, pidfile: Path) -> int | None:
    """The pid of the command running now, once it handles SIGTERM."""
    pid = _pid(pidfile)
    if pid is None or not events.exists() or "ready %d\n" % pid not in events.read_text():
        return None
    return pid


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    pidfile, events = tmp_path / "child.pid", tmp_path / "events"
    # Its own session, as honcho starts each Procfile line, so the test can signal the group.
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "iacplatform.supervise", "--name", "leader1", "--pidfile", str(pidfile)),
            *("--grace", "5", "--", sys.executable, "-c", CHILD, str(events)),
        ],
        cwd=ROOT,
        start_new_session=True,
        stderr=subprocess.PIPE,
    )
    yield proc, pidfile, events
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    child = _pid(pidfile)
    if child is not None and psutil.pid_exists(child):
        os.kill(child, signal.SIGKILL)


def test_a_killed_command_is_started_again_with_a_new_pid(supervised) -> None:
    proc, pidfile, events = supervised
    first = _wait_for(lambda: _ready(events, pidfile), 10, "the first start")
    killed = first
    for sig in (signal.SIGTERM, signal.SIGKILL):
        os.kill(killed, sig)
        new = _wait_for(
            lambda killed=killed: (p := _ready(events, pidfile)) != killed and p,
            FIRST_DELAY * 2 + 10,
            "a restart after " + sig.name,
        )
        assert psutil.Process(new).is_running()
        killed = new
        assert proc.poll() is None, "the supervisor itself must keep running"
    assert new != first
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(10)
    stderr = proc.stderr.read().decode()
    assert "leader1 exited with code 0" in stderr  # the SIGTERMed child exits 0 from its handler
    assert "leader1 exited with SIGKILL" in stderr
    assert "(restart 2)" in stderr


def test_a_stop_of_the_supervisors_group_reaches_the_command_once_and_nothing_restarts(supervised) -> None:
    proc, pidfile, events = supervised
    child = _wait_for(lambda: _ready(events, pidfile), 10, "the first start")
    os.killpg(proc.pid, signal.SIGTERM)  # what honcho does on Ctrl-C or when another process exits
    assert proc.wait(10) == 0
    assert events.read_text() == "ready %d\nterm %d\n" % (child, child)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    assert not pidfile.exists()


def test_the_command_dies_with_its_supervisor(supervised) -> None:
    proc, pidfile, events = supervised
    child = _wait_for(lambda: _ready(events, pidfile), 10, "the first start")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    _wait_for(
        lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE,
        10,
        "the child to die",
    )


def test_a_command_that_ignores_the_stop_is_killed_after_the_grace(tmp_path: Path) -> None:
    lines: list[str] = []
    supervisor = Supervisor(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"],
        name="stubborn",
        grace=0.5,
        out=lines.append,
    )
    started = time.monotonic()
    # Stop as soon as the child runs: a timer signal in this (main) thread.
    signal.signal(signal.SIGALRM, lambda signum, frame: supervisor.stop(signal.SIGTERM))
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        code = supervisor.run()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert code == 128 + signal.SIGKILL
    assert time.monotonic() - started < 10
    assert lines == ["stubborn still running 0.5 s after the stop; SIGKILL"]

"""Run one command and start it again whenever it exits, as Kubernetes restarts a container
(``restartPolicy: Always``). ``make run`` starts every Procfile process through this, because
honcho stops every process as soon as one exits: without it, the first leader you SIGTERM to
watch a failover took the whole local cluster down with it.

``python -m iacplatform.supervise [--name N] [--pidfile F] [--grace S] -- COMMAND [ARG...]``

Guarantees: the command is started again after every exit, whatever its code, after a backoff
that starts at 1 s, doubles for each exit within 10 s of a start and is capped at 30 s (Kubernetes:
10 s doubling to 5 min, reset after 10 min); ``--pidfile`` always holds the pid of the command
running now, so ``kill $(cat F)`` kills the command, not its supervisor; SIGTERM or SIGINT to the
supervisor is passed on to the command, which gets ``--grace`` seconds before SIGKILL, and then
the supervisor exits with the command's code. The command runs in a process group of its own
(honcho signals the supervisor's group, so the command hears a stop once, from the supervisor)
and is SIGKILLed by the kernel if the supervisor dies (PR_SET_PDEATHSIG). Does NOT: supervise
more than one command, give up after many restarts, or run anywhere but a developer's machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

FIRST_DELAY = 1.0
MAX_DELAY = 30.0
STABLE_AFTER = 10.0


def restart_delay(*, uptime: float, previous: float) -> float:
    """Seconds to wait before the next start, given how long the command ran and the last delay."""
    if previous <= 0 or uptime >= STABLE_AFTER:
        return FIRST_DELAY
    return min(previous * 2, MAX_DELAY)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class Supervisor:
    def __init__(
        self,
        argv: list[str],
        *,
        name: str,
        pidfile: Path | None = None,
        grace: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        out: Callable[[str], None] | None = None,
    ) -> None:
        self.argv = argv
        self.name = name
        self.pidfile = pidfile
        self.grace = grace
        self.clock = clock
        self.out = out or (lambda line: print("supervise: " + line, file=sys.stderr, flush=True))
        self.child: subprocess.Popen[bytes] | None = None
        self.stop_signal: int | None = None
        self.kill_at: float | None = None
        self.restarts = 0

    def stop(self, signum: int, frame: FrameType | None = None) -> None:
        """Signal handler: pass the stop on to the command once, and start its grace period."""
        if self.stop_signal is not None:
            return
        self.stop_signal = signum
        self.kill_at = self.clock() + self.grace
        self._signal_child(signum)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        delay = 0.0
        returncode = 0
        try:
            while self.stop_signal is None:
                started = self.clock()
                returncode = self._run_once()
                if self.stop_signal is not None:
                    break
                uptime = self.clock() - started
                delay = restart_delay(uptime=uptime, previous=delay)
                self.restarts += 1
                self.out(
                    "%s exited with %s after %.1f s; starting it again in %.0f s (restart %d)"
                    % (self.name, _describe(returncode), uptime, delay, self.restarts)
                )
                self._sleep(delay)
        finally:
            if self.pidfile is not None:
                with contextlib.suppress(FileNotFoundError):
                    self.pidfile.unlink()
        return returncode if returncode >= 0 else 128 - returncode

    def _run_once(self) -> int:
        self.child = subprocess.Popen(self.argv, start_new_session=True, preexec_fn=_die_with_parent)
        if self.pidfile is not None:
            self.pidfile.parent.mkdir(parents=True, exist_ok=True)
            partial = self.pidfile.with_suffix(".tmp")
            partial.write_text("%d\n" % self.child.pid)
            partial.replace(self.pidfile)
        if self.stop_signal is not None:
            # The stop arrived between fork and the assignment above.
            self._signal_child(self.stop_signal)
        while True:
            try:
                return self.child.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                if self.kill_at is not None and self.clock() >= self.kill_at:
                    self.out("%s still running %g s after the stop; SIGKILL" % (self.name, self.grace))
                    self._signal_child(signal.SIGKILL)
                    self.kill_at = None

    def _signal_child(self, signum: int) -> None:
        if self.child is not None and self.child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.child.pid, signum)

    def _sleep(self, seconds: float) -> None:
        until = self.clock() + seconds
        while self.stop_signal is None and self.clock() < until:
            time.sleep(min(0.1, max(0.0, until - self.clock())))


def _describe(returncode: int) -> str:
    if returncode < 0:
        return signal.Signals(-returncode).name
    return "code %d" % returncode


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m iacplatform.supervise", description=__doc__.split("\n")[0])
    parser.add_argument("--name", help="how the messages name the command (default: its executable)")
    parser.add_argument("--pidfile", type=Path, help="file that holds the pid of the command running now")
    parser.add_argument("--grace", type=float, default=30.0, help="seconds between passing on a stop and SIGKILL")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv[1:])
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    supervisor = Supervisor(command, name=args.name or Path(command[0]).name, pidfile=args.pidfile, grace=args.grace)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))

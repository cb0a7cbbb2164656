"""Real processes of the platform for multi-process tests, benchmarks and chaos rounds.

Guaranteed: each process runs from the repository root in a process group (session) of its own,
with its output (stdout and stderr) in one log file; ``kill_all`` kills whole groups (an agent's
Terraform child with it), SIGCONT first so a stopped group dies too; a process's environment is
the caller's plus its identity (POD_NAME, PROCESS_ROLE), the database URL and the signing key, and
an agent gets neither of the last two (as in deploy/). Does NOT: isolate the network or the
filesystem, restart anything (chaos/cluster.py does), or kill a process it did not start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# As in the Procfile and the image: daphne's frame limit above the application's (see protocol.md).
DAPHNE_OPTIONS = [
    "--websocket-max-message-size",
    "2097152",
    "--websocket-max-frame-size",
    "2097152",
    "--http-timeout",
    "60",
]
# What an agent never gets (deploy/ gives its pods neither): the database and the signing key.
NOT_FOR_AGENTS = ("DATABASE_URL", "DATABASE_SESSION_URL", "SECRET_KEY")

NOBODY = 65534
UNPRIVILEGED = [
    "setpriv",
    "--reuid=%d" % NOBODY,
    "--regid=%d" % NOBODY,
    "--clear-groups",
    "--inh-caps=+dac_read_search",
    "--ambient-caps=+dac_read_search",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def daphne_argv(port: int) -> list[str]:
    """A web replica on 127.0.0.1:``port`` with the image's daphne options."""
    argv = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
    return [*argv, *DAPHNE_OPTIONS, "iacplatform.asgi:application"]


def process_env(
    *, pod: str, role: str, db_url: str, secret_key: str, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The caller's environment, then the process's identity, database and key, then ``extra``."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=db_url,
        POD_NAME=pod,
        PROCESS_ROLE=role,
        SECRET_KEY=secret_key,
        PYTHONUNBUFFERED="1",
        DJANGO_SETTINGS_MODULE="iacplatform.settings",
    )
    if role == "agent":
        for name in NOT_FOR_AGENTS:
            env.pop(name, None)
    # The venv's console scripts (daphne, terraform) before the system's.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(extra or {})
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        assert self.port is not None, "%s has no port" % self.name
        return "http://127.0.0.1:%d" % self.port

    @property
    def ws_url(self) -> str:
        assert self.port is not None, "%s has no port" % self.name
        return "ws://127.0.0.1:%d" % self.port

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        """``sig`` to the process itself (not its children)."""
        if self.alive():
            os.kill(self.popen.pid, sig)

    def signal_group(self, sig: int) -> None:
        """``sig`` to the process's whole group: its children share its fate, as in a pod."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)


def launch(
    name: str,
    argv: list[str],
    *,
    env: dict[str, str],
    log_path: Path,
    port: int | None = None,
    append: bool = False,
    unprivileged: bool = False,
) -> Proc:
    """Start ``argv`` in a new session; ``append``: after what ``log_path`` holds (a restart).

    ``unprivileged``: when running as root, as ``nobody`` (root reads every process's /proc,
    dumpable or not), keeping only CAP_DAC_READ_SEARCH so that it still reads the interpreter and
    files under root's private directories; it writes only where ``nobody`` may."""
    if unprivileged and os.geteuid() == 0:
        argv = [*UNPRIVILEGED, *argv]
    with log_path.open("ab" if append else "wb") as log:
        popen = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return Proc(name=name, popen=popen, log_path=log_path, port=port, env=env)


def kill_all(procs: Iterable[Proc], timeout: float = 10.0) -> None:
    """SIGKILL every live process's group (SIGCONT first: a stopped group), then reap them."""
    procs = list(procs)
    for proc in procs:
        if proc.alive():
            proc.signal_group(signal.SIGCONT)
            proc.signal_group(signal.SIGKILL)
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout)


def wait_http(proc: Proc, path: str, timeout: float = 30.0) -> None:
    """Until ``proc`` answers GET ``path`` with 200; raises with its log if it exits or never does."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError("%s exited with %s:\n%s" % (proc.name, proc.popen.returncode, proc.log()))
        try:
            with urllib.request.urlopen(proc.url + path, timeout=2) as response:  # noqa: S310 - a local URL
                if response.status == 200:
                    return
        except Exception as exc:  # connection refused while starting
            last = exc
        time.sleep(0.1)
    raise RuntimeError("%s did not answer %s within %ss (%s):\n%s" % (proc.name, path, timeout, last, proc.log()))


class ProcessGroup:
    """Processes on one database and one signing key, logs under ``workdir``; ``stop_all`` kills all."""

    def __init__(self, workdir: Path, db_url: str, *, secret_key: str) -> None:
        self.tmp_path = workdir
        self.db_url = db_url
        self.secret_key = secret_key
        self.procs: list[Proc] = []

    def env(self, pod: str, role: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        return process_env(pod=pod, role=role, db_url=self.db_url, secret_key=self.secret_key, extra=extra)

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        role: str,
        port: int | None = None,
        env: dict[str, str] | None = None,
        unprivileged: bool = False,
    ) -> Proc:
        """Start ``argv`` as pod ``name`` (see ``launch`` for ``unprivileged``)."""
        log_path = self.tmp_path / ("%s.log" % name)
        proc = launch(
            name, argv, env=self.env(name, role, env), log_path=log_path, port=port, unprivileged=unprivileged
        )
        self.procs.append(proc)
        return proc

    def daphne(self, name: str, env: dict[str, str] | None = None, *, ready: bool = True) -> Proc:
        port = free_port()
        proc = self.start(name, daphne_argv(port), role="web", port=port, env=env)
        if ready:
            wait_http(proc, "/healthz")
        return proc

    def manage(
        self,
        name: str,
        args: list[str],
        *,
        role: str,
        env: dict[str, str] | None = None,
        port: int | None = None,
        unprivileged: bool = False,
    ) -> Proc:
        argv = [sys.executable, "manage.py", *args]
        return self.start(name, argv, role=role, env=env, port=port, unprivileged=unprivileged)

    def stop_all(self) -> None:
        kill_all(self.procs)

    def logs(self) -> str:
        return "\n".join("===== %s =====\n%s" % (p.name, p.log()[-6000:]) for p in self.procs)


def migrate_database(url: str, *, secret_key: str) -> None:
    """Create the project's schema (and migration history) in the database at ``url`` with
    ``manage.py migrate``, as a deploy's migrate Job does. Copying a schema with the embedded
    pg_dump instead breaks when the source server is another major version (the suite's second
    CI run is on PostgreSQL 15, the throwaway servers run the embedded 18)."""
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "SECRET_KEY": secret_key,
        "PROCESS_ROLE": "migrate",
        "DJANGO_SETTINGS_MODULE": "iacplatform.settings",
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )

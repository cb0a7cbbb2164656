"""Real processes for multi-process tests: daphne replicas, runleader, runagent.

Each process gets the test database's URL, its own POD_NAME, and its output in a log file that is
printed when a test fails. Everything started is killed (process group) at teardown.
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from django.db import connection

from tests.plugins.environment import SECRET_KEY as SUITE_SECRET_KEY

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


def test_database_url() -> str:
    """The URL of the database the suite runs on (pytest-django's test database).

    Hosts and ports go in the query (``?host=h1,h2&port=p1,p2``), with every other libpq option
    of the suite's URL (e.g. ``target_session_attrs``): a multi-host DATABASE_URL stays one.
    """
    s = connection.settings_dict
    auth = quote(s["USER"] or "", safe="")
    if s.get("PASSWORD"):
        auth += ":" + quote(s["PASSWORD"], safe="")
    options = {
        key: str(value)
        for key, value in s.get("OPTIONS", {}).items()
        if key not in _NOT_LIBPQ and isinstance(value, str | int) and not isinstance(value, bool)
    }
    query = {**options, "host": s.get("HOST") or options.get("host", ""), "port": str(s.get("PORT") or "")}
    return "postgresql://%s@/%s?%s" % (
        auth,
        quote(s["NAME"], safe=""),
        urlencode({k: v for k, v in query.items() if v}, quote_via=quote),
    )


# Django's own OPTIONS, and the process's name (each process sets its own).
_NOT_LIBPQ = ("isolation_level", "server_side_binding", "pool", "assume_role", "prepare_threshold", "application_name")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
        if self.alive():
            os.kill(self.popen.pid, sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)


NOBODY = 65534
UNPRIVILEGED = [
    "setpriv",
    "--reuid=%d" % NOBODY,
    "--regid=%d" % NOBODY,
    "--clear-groups",
    "--inh-caps=+dac_read_search",
    "--ambient-caps=+dac_read_search",
]


class ProcessGroup:
    def __init__(self, tmp_path: Path, db_url: str) -> None:
        self.tmp_path = tmp_path
        self.db_url = db_url
        self.procs: list[Proc] = []

    def env(self, pod: str, role: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DATABASE_URL=self.db_url,
            POD_NAME=pod,
            PROCESS_ROLE=role,
            SECRET_KEY=SUITE_SECRET_KEY,
            PYTHONUNBUFFERED="1",
            DJANGO_SETTINGS_MODULE="iacplatform.settings",
        )
        if role == "agent":
            # As in deploy/: an agent gets neither the database nor the platform's signing key.
            for name in ("DATABASE_URL", "SECRET_KEY"):
                env.pop(name, None)
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        env.update(extra or {})
        return env

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
        """Start ``argv``; ``unprivileged``: when the suite runs as root, as ``nobody`` (root reads
        every process's /proc, dumpable or not), keeping only CAP_DAC_READ_SEARCH so that it still
        reads the interpreter and files under root's private directories; it writes only where
        ``nobody`` may."""
        log_path = self.tmp_path / ("%s.log" % name)
        full_env = self.env(name, role, env)
        if unprivileged and os.geteuid() == 0:
            argv = [*UNPRIVILEGED, *argv]
        popen = subprocess.Popen(
            argv, cwd=ROOT, env=full_env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
        )
        proc = Proc(name=name, popen=popen, log_path=log_path, port=port, env=full_env)
        self.procs.append(proc)
        return proc

    def daphne(self, name: str, env: dict[str, str] | None = None, *, ready: bool = True) -> Proc:
        port = free_port()
        proc = self.start(
            name,
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                *DAPHNE_OPTIONS,
                "iacplatform.asgi:application",
            ],
            role="web",
            port=port,
            env=env,
        )
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
        for proc in self.procs:
            if proc.alive():
                try:
                    os.killpg(proc.popen.pid, signal.SIGCONT)
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(10)

    def logs(self) -> str:
        return "\n".join("===== %s =====\n%s" % (p.name, p.log()[-6000:]) for p in self.procs)


def wait_http(proc: Proc, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError("%s exited with %s:\n%s" % (proc.name, proc.popen.returncode, proc.log()))
        try:
            with urllib.request.urlopen(proc.url + path, timeout=2) as response:  # noqa: S310 - local test URL
                if response.status == 200:
                    return
        except Exception as exc:  # connection refused while starting
            last = exc
        time.sleep(0.1)
    raise RuntimeError("%s did not answer %s within %ss (%s):\n%s" % (proc.name, path, timeout, last, proc.log()))


@pytest.fixture
def processes(transactional_db: None, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ProcessGroup]:
    group = ProcessGroup(tmp_path, test_database_url())
    yield group
    group.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(group.logs())


def migrate_database(url: str) -> None:
    """Create the project's schema (and migration history) in the database at ``url`` with
    ``manage.py migrate``, as a deploy's migrate Job does. Copying the suite's schema with the
    embedded pg_dump instead breaks when the suite's server is another major version (the
    suite's second CI run is on PostgreSQL 15, the throwaway servers run the embedded 18)."""
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "SECRET_KEY": SUITE_SECRET_KEY,
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

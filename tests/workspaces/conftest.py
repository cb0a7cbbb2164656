from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from tests.agents.fixtures import agent_pool, workspace  # noqa: F401  (fixtures)


@pytest.fixture(autouse=True)
async def _close_worker_connections() -> AsyncIterator[None]:
    # Consumers reach the database from asgiref's shared worker thread; close its connection so the
    # test database can be dropped at the end of the session.
    yield
    await sync_to_async(connections.close_all)()

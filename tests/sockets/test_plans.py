"""The caps' statements on a large table (200,000 rows: 100 replicas, half of them dead and not
yet swept, 20,000 keys): each is an index probe or a range bounded by one key or one replica,
never a scan of the table."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection

from apps.sockets import slots
from tests.plans import assert_indexed, nodes, plan

pytestmark = pytest.mark.django_db

ROWS = 200_000
REPLICAS = 100
TABLE = "sockets_opensocket"


@pytest.fixture
def large_table() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO sockets_socketreplica (process, pod, started_at, seen_at)"
            " SELECT md5('r' || i)::uuid, 'web-' || i, now(), now() - make_interval(secs => (i %% 2) * 3600)"
            " FROM generate_series(1, %s) AS i",
            [REPLICAS],
        )
        cursor.execute(
            "INSERT INTO sockets_opensocket (socket, key, kind, replica, opened_at)"
            " SELECT md5('s' || i)::uuid, 'user:' || (i %% 20000), 'hub', md5('r' || (1 + i %% %s))::uuid, now()"
            " FROM generate_series(1, %s) AS i",
            [REPLICAS, ROWS],
        )
        cursor.execute("ANALYZE sockets_opensocket")
        cursor.execute("ANALYZE sockets_socketreplica")


def test_every_caps_statement_is_indexed_on_a_large_table(large_table: None) -> None:
    replica = uuid.UUID(bytes=bytes(16))
    assert_indexed(slots.COUNT, [["user:7", "source:10.0.0.1"], 30.0], "sockets_opensocket_key_idx", table=TABLE)
    assert_indexed(slots.GIVE_BACK, [[uuid.uuid4()]], "sockets_opensocket_once", table=TABLE)
    assert_indexed(slots.SWEEP_DELETE, [replica, slots.SWEEP_BATCH], "sockets_opensocket_replica_idx", table=TABLE)
    assert_indexed(
        "DELETE FROM sockets_opensocket WHERE replica = %s", [replica], "sockets_opensocket_replica_idx", table=TABLE
    )  # recover
    # The replica table holds one row per web process (live, or dead and not yet swept): the
    # planner may scan its few pages; it never touches the sockets.
    renew = nodes(plan(slots.RENEW, [replica, 30.0]))
    assert {n.get("Relation Name") for n in renew} <= {None, "sockets_socketreplica"}, renew

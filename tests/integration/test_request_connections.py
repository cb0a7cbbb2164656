"""A real daphne replica leaves no database connection open after its HTTP requests
(iacplatform/requestconn.py): each request runs on a thread of its own, and its connection used
to stay open, idle, until the garbage collector found it (7 -> 33 idle connections in 7 s of a
REST flood in bench_isolation)."""

from __future__ import annotations

import http.client

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from harness.processes import ProcessGroup
from tests.access.fixtures import api_token

pytestmark = pytest.mark.slow

REQUESTS = 60


def idle_connections_of(pod: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state = 'idle'", [pod + ":web"]
        )
        return int(cursor.fetchone()[0])


def test_requests_leave_no_idle_connection_behind(processes: ProcessGroup) -> None:
    token = api_token(get_user_model().objects.create_superuser("conn-admin", password="x" * 20))
    web = processes.daphne("web-conns", env={"API_THROTTLE_USER_RATE": ""})
    before = idle_connections_of("web-conns")  # the channel layer's and the consumers' thread's, if any
    conn = http.client.HTTPConnection("127.0.0.1", web.port or 0, timeout=30)
    for _ in range(REQUESTS):
        conn.request("GET", "/api/v1/workspaces/", headers={"Authorization": "Token " + token})
        response = conn.getresponse()
        response.read()
        assert response.status == 200
    after = idle_connections_of("web-conns")
    assert after <= before + 1, "%d idle connections after %d requests (%d before)" % (after, REQUESTS, before)

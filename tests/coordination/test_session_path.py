"""The elector's LISTEN connects through the session path and does not retry a permanent refusal."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from apps.coordination.leaselock.postgres import PostgresLeaseLock
from iacplatform.sessiondb import django_connection_params, session_connection_params


@pytest.mark.django_db
def test_the_session_url_reaches_the_test_database_and_names_its_purpose(settings: Any) -> None:
    params = django_connection_params()
    settings.DATABASE_SESSION_PARAMS = {**params, "dbname": settings.DATABASE_CONFIGURED_NAME}
    session = session_connection_params(purpose="lease-listen")
    # pytest-django renamed the database; a session URL naming the configured one follows it.
    assert session["dbname"] == params["dbname"] != settings.DATABASE_CONFIGURED_NAME
    assert session["application_name"] == "pytest:test/lease-listen"
    assert session["keepalives"] == 1


def test_the_lease_listener_stops_on_a_permanent_refusal_with_the_servers_message(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.DATABASE_SESSION_PARAMS = {**django_connection_params(), "dbname": "no_such_database"}
    lock = PostgresLeaseLock(name="session-path-test")
    changes: list[None] = []
    with caplog.at_level(logging.ERROR, logger="apps.coordination.leaselock.postgres"):
        lock.watch(lambda: changes.append(None))
        listener = lock._listener
        assert listener is not None
        deadline = time.monotonic() + 10
        while listener._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not listener._thread.is_alive(), "a permanent refusal is not retried"
    lock.close()
    assert 'FATAL: database "no_such_database" does not exist' in caplog.text
    assert changes == []

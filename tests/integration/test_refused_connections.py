"""Permanent refusals by a real server with password authentication (pg_hba.conf requires
scram-sha-256 for the application's role): a wrong password and a missing database fail the elector
(runleader), a web replica, the channel layer and Django's connection at once, with the server's
own message, never retried like an outage, and the password appears in no log and no exception."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from django.db.utils import ConnectionHandler, OperationalError
from pytest_django import DjangoDbBlocker

from apps.pglayer.core import PostgresChannelLayer
from harness.pg import PgCluster, PgServer
from harness.processes import ProcessGroup, daphne_argv, free_port
from iacplatform.dburl import django_database
from iacplatform.pgerrors import PermanentConnectionError

pytestmark = pytest.mark.slow

ROLE = "iacp_app"
RIGHT = "right-Pa55word-4b7e"
WRONG = "wrong-Pa55word-9c3d"
# A process that starts, reads its settings and is refused exits well within this (Python and
# Django start in a few seconds on a loaded machine); an outage is retried far longer (60 s).
PROCESS_BOUND = 20.0

REFUSALS = {
    "wrong password": (WRONG, "app", 'FATAL: password authentication failed for user "iacp_app"'),
    "missing database": (RIGHT, "no_such_db", 'FATAL: database "no_such_db" does not exist'),
}


@pytest.fixture(scope="module")
def guarded(pgcluster: PgCluster) -> PgServer:
    server = pgcluster.server("scram")
    server.execute("SET password_encryption = 'scram-sha-256'; CREATE ROLE %s LOGIN PASSWORD '%s'" % (ROLE, RIGHT))
    server.execute("CREATE DATABASE app OWNER %s" % ROLE)
    # First match wins: the role's line goes before initdb's "trust" lines.
    hba = server.pgdata / "pg_hba.conf"
    hba.write_text("local all %s scram-sha-256\n" % ROLE + hba.read_text())
    server.execute("SELECT pg_reload_conf()")
    return server


def url(server: PgServer, *, password: str, database: str) -> str:
    return "postgresql://%s:%s@/%s?host=%s" % (ROLE, quote(password, safe=""), database, quote(server.host, safe=""))


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[ProcessGroup]:
    """Processes whose database URLs each test gives (the suite's fixture of this name needs the
    suite's database, which none of these reach)."""
    group = ProcessGroup(tmp_path, "", secret_key="refused-connections-test-key")
    yield group
    group.stop_all()


def test_the_right_password_is_let_in_and_a_wrong_one_is_refused_by_scram(guarded: PgServer) -> None:
    """The refusals below are the server's authentication, not some other failure."""
    with psycopg.connect(url(guarded, password=RIGHT, database="app")) as conn:
        row = conn.execute("SELECT current_user").fetchone()
        assert row == (ROLE,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(url(guarded, password=WRONG, database="app")).close()
    assert "scram-sha-256" in (guarded.pgdata / "pg_hba.conf").read_text().splitlines()[0]


@pytest.mark.parametrize("case", list(REFUSALS))
def test_django_connection_fails_at_once_with_the_servers_message(
    guarded: PgServer, case: str, django_db_blocker: DjangoDbBlocker
) -> None:
    password, database, message = REFUSALS[case]
    handler = ConnectionHandler({"default": django_database(url(guarded, password=password, database=database))})
    started = time.monotonic()
    with django_db_blocker.unblock():
        try:
            with pytest.raises(OperationalError) as excinfo:
                handler["default"].ensure_connection()
        finally:
            handler.close_all()
    assert time.monotonic() - started < 5
    assert message in " ".join(str(excinfo.value).split())  # libpq writes "FATAL:  ..."
    assert RIGHT not in str(excinfo.value) and WRONG not in str(excinfo.value)


@pytest.mark.parametrize("case", list(REFUSALS))
def test_the_channel_layer_fails_at_once_with_the_servers_message(
    guarded: PgServer, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    password, database, message = REFUSALS[case]
    layer = PostgresChannelLayer(
        database=url(guarded, password=password, database=database), prefix="refused", event_loop="own", expiry=30
    )

    async def use() -> tuple[BaseException, BaseException]:
        with pytest.raises(PermanentConnectionError) as sent:
            await layer.send("test.refused", {"type": "x"})
        with pytest.raises(PermanentConnectionError) as received:
            await layer.receive("test.refused")
        return sent.value, received.value

    started = time.monotonic()
    with caplog.at_level(logging.DEBUG):
        try:
            errors = asyncio.run(use())
        finally:
            asyncio.run(layer.close())
    assert time.monotonic() - started < 5  # one attempt each, not the 30 s an outage is retried for
    for error in errors:
        assert message in str(error)
        assert RIGHT not in str(error) and WRONG not in str(error)
    assert RIGHT not in caplog.text and WRONG not in caplog.text


def _refused_process(processes: ProcessGroup, name: str, argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    proc = processes.start(name, argv, role="leader" if "runleader" in argv else "web", env=env)
    try:
        code = proc.wait(PROCESS_BOUND)
    except Exception:
        pytest.fail("%s was still running %.0fs after a permanent refusal:\n%s" % (name, PROCESS_BOUND, proc.log()))
    return code, proc.log()


@pytest.mark.parametrize("case", list(REFUSALS))
def test_runleader_exits_at_start_with_the_servers_message(
    guarded: PgServer, processes: ProcessGroup, case: str
) -> None:
    password, database, message = REFUSALS[case]
    refused = url(guarded, password=password, database=database)
    argv = [sys.executable, "manage.py", "runleader", "--backend=postgres", "--http-addr=127.0.0.1:%d" % free_port()]
    code, log = _refused_process(processes, "leader", argv, {"DATABASE_URL": refused, "DATABASE_SESSION_URL": ""})
    assert code != 0, log
    assert message in log, log
    assert RIGHT not in log and WRONG not in log, log


@pytest.mark.parametrize("case", list(REFUSALS))
def test_runleader_with_a_good_session_url_exits_at_start_when_database_url_is_refused(
    guarded: PgServer, processes: ProcessGroup, case: str
) -> None:
    """PgBouncer's layout: the session path works, the pooled DATABASE_URL is the one refused."""
    password, database, message = REFUSALS[case]
    env = {
        "DATABASE_URL": url(guarded, password=password, database=database),
        "DATABASE_SESSION_URL": url(guarded, password=RIGHT, database="app"),
    }
    argv = [sys.executable, "manage.py", "runleader", "--backend=postgres", "--http-addr=127.0.0.1:%d" % free_port()]
    code, log = _refused_process(processes, "leader", argv, env)
    assert code != 0, log
    assert "DATABASE_URL: the server refused the connection: " + message in log, log
    assert RIGHT not in log and WRONG not in log, log


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_web_replica_exits_at_start_with_the_servers_message(
    guarded: PgServer, processes: ProcessGroup, case: str
) -> None:
    password, database, message = REFUSALS[case]
    refused = url(guarded, password=password, database=database)
    env = {"DATABASE_URL": refused, "DATABASE_SESSION_URL": ""}
    code, log = _refused_process(processes, "web", daphne_argv(free_port()), env)
    assert code != 0, log
    assert message in log, log
    assert RIGHT not in log and WRONG not in log, log


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_web_replica_with_a_good_session_url_exits_at_start_when_database_url_is_refused(
    guarded: PgServer, processes: ProcessGroup, case: str
) -> None:
    password, database, message = REFUSALS[case]
    env = {
        "DATABASE_URL": url(guarded, password=password, database=database),
        "DATABASE_SESSION_URL": url(guarded, password=RIGHT, database="app"),
    }
    code, log = _refused_process(processes, "web", daphne_argv(free_port()), env)
    assert code != 0, log
    assert "DATABASE_URL: the server refused the connection: " + message in log, log
    assert RIGHT not in log and WRONG not in log, log


@pytest.mark.parametrize("case", list(REFUSALS))
def test_the_elector_counts_a_refusal_that_begins_after_start_as_permanent(
    guarded: PgServer, processes: ProcessGroup, case: str
) -> None:
    """A password rotated under a running leader: each attempt fails with the server's message as a
    permanent error (logged as an error; /healthz fails once it lasts), not as an outage."""
    password, database, message = REFUSALS[case]
    script = (
        "from apps.coordination.elector import ElectionConfig, LeaderElector\n"
        "from apps.coordination.leaselock.postgres import PostgresLeaseLock\n"
        "elector = LeaderElector(lock=PostgresLeaseLock(name='refused'), identity='x', config=ElectionConfig())\n"
        "assert not elector.try_acquire_or_renew()\n"
        "error = elector.state.last_error\n"
        "print('transient=%s reason=%s: %s' % (error.transient, error.reason, error))\n"
    )
    argv = [sys.executable, "manage.py", "shell", "-c", script]
    env = {"DATABASE_URL": url(guarded, password=password, database=database), "DATABASE_SESSION_URL": ""}
    code, log = _refused_process(processes, "shell", argv, env)
    assert code == 0, log
    assert "transient=False reason=PermanentConnectionError: " in log, log
    assert message in log, log
    assert RIGHT not in log and WRONG not in log, log

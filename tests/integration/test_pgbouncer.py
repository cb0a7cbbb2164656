"""The cluster behind a real PgBouncer: DATABASE_URL through transaction pooling, DATABASE_SESSION_URL
through session pooling; a session path through the transaction pooler is refused at start."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
import urllib.request
import uuid
from typing import Any

import psycopg
import pytest
import websockets
from channels.layers import channel_layers
from django.test import Client

from apps.coordination.joblocks import JobLocks
from apps.coordination.leaselock.postgres import PostgresLeaseLock
from apps.coordination.lockkeys import job_key
from apps.coordination.models import JobRun
from apps.coordination.overlaps import overlapping_ticks
from apps.coordination.selfcheck import session_problems
from apps.pglayer.core import PostgresChannelLayer
from harness.pgbouncer import PgBouncer
from harness.processes import ProcessGroup, free_port, wait_http
from iacplatform.dburl import libpq_params
from iacplatform.pgerrors import NotificationLost, PermanentConnectionError
from iacplatform.sessioncheck import session_path_problem
from tests.integration.test_runleader import JOB, holder, leader_running_jobs, start_leader, wait_for

pytestmark = pytest.mark.slow


def behind(pgbouncer: PgBouncer) -> dict[str, str]:
    return {"DATABASE_URL": pgbouncer.url("pooled"), "DATABASE_SESSION_URL": pgbouncer.url("session")}


def test_the_session_check_refuses_a_transaction_pooler_and_passes_session_mode(
    pgbouncer: PgBouncer, settings: Any
) -> None:
    settings.DATABASE_SESSION_URL = pgbouncer.url("pooled")
    settings.DATABASE_SESSION_PARAMS = libpq_params(pgbouncer.url("pooled"))
    problem = session_path_problem()
    assert problem is not None
    assert "DATABASE_SESSION_URL goes through a transaction pooler" in problem
    assert "pool_mode = session" in problem
    settings.DATABASE_SESSION_URL = pgbouncer.url("session")
    settings.DATABASE_SESSION_PARAMS = libpq_params(pgbouncer.url("session"))
    assert session_path_problem() is None
    settings.DATABASE_SESSION_URL, settings.DATABASE_SESSION_PARAMS = "", {}
    assert session_path_problem() is None  # PostgreSQL itself


def test_leader_and_web_refuse_to_start_with_their_session_path_on_the_transaction_pooler(
    processes: ProcessGroup, pgbouncer: PgBouncer
) -> None:
    env = {"DATABASE_URL": pgbouncer.url("pooled")}
    leader = start_leader(processes, "leader-txn", env=env, ready=False)
    web = processes.daphne("web-txn", env=env, ready=False)
    assert leader.wait(60) != 0
    assert web.wait(60) != 0
    for proc in (leader, web):
        log = proc.log()
        assert "DATABASE_URL (DATABASE_SESSION_URL is unset) goes through a transaction pooler" in log, log
        assert "point DATABASE_SESSION_URL at PostgreSQL directly or at a PgBouncer database" in log
        assert "with pool_mode = session" in log
    assert not JobRun.objects.exists()


def _echo_daphne(processes: ProcessGroup, name: str, prefix: str, env: dict[str, str]) -> Any:
    port = free_port()
    proc = processes.start(
        name,
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "tests.pglayer.asgi_echo:application"],
        role="web",
        port=port,
        env={**env, "CHANNEL_LAYER_BACKEND": "postgres", "CHANNEL_LAYER_PREFIX": prefix},
    )
    wait_http(proc, "/healthz")
    return proc


async def test_layer_messages_cross_replicas_behind_pgbouncer(processes: ProcessGroup, pgbouncer: PgBouncer) -> None:
    prefix = "b%s" % uuid.uuid4().hex[:8]
    env = behind(pgbouncer)
    replica_a = _echo_daphne(processes, "web-a", prefix, env)
    replica_b = _echo_daphne(processes, "web-b", prefix, env)
    async with (
        websockets.connect(replica_b.ws_url + "/ws/echo/room/") as on_b,
        websockets.connect(replica_a.ws_url + "/ws/echo/room/") as on_a,
    ):
        for n in range(20):
            await on_a.send(json.dumps({"n": n, "pad": ""}))
        heard_on_b = [json.loads(await asyncio.wait_for(on_b.recv(), 10)) for _ in range(20)]
    assert [m["n"] for m in heard_on_b] == list(range(20))
    assert all(m["from"] == "web-a" and m["to"] == "web-b" for m in heard_on_b)
    assert "got packet" not in pgbouncer.logs()


def test_jobs_keep_ticking_across_a_handover_behind_pgbouncer_and_nobody_kills_pooled_connections(
    processes: ProcessGroup, pgbouncer: PgBouncer
) -> None:
    env = behind(pgbouncer)
    leaders = [start_leader(processes, "leader-%d" % i, env=env, ready=False) for i in range(2)]
    for proc in leaders:
        wait_http(proc, "/healthz")
    web = processes.daphne("web-pooled", env=env)
    first = leader_running_jobs(leaders)
    second = next(p for p in leaders if p is not first)
    time.sleep(2.0)  # many ticks of one term: each takes and releases its lock on the session path
    first.signal(signal.SIGTERM)
    assert first.wait(15) == 0
    wait_for(lambda: holder() == second.name, 10, "the standby to lead")
    wait_for(lambda: JobRun.objects.filter(job=JOB, holder=second.name, outcome="ok").count() >= 10, 20, "ticks")
    time.sleep(1.0)
    ticks = JobRun.objects.filter(job=JOB)
    assert ticks.filter(holder=first.name, outcome="ok").count() >= 10, "ticks kept running in the first term"
    finished = ticks.filter(holder=second.name).exclude(outcome="running").order_by("-started_at")
    latest = list(finished.values_list("outcome", flat=True)[:5])
    assert latest == ["ok"] * 5, "the second term's ticks are not skipped for a lock left on a pooled connection"
    assert overlapping_ticks() == 0
    # Nobody terminated a pooled server connection: no eviction happened at all, and PgBouncer saw
    # none of its server connections die.
    for proc in leaders:
        assert "terminated session" not in proc.log(), proc.log()
    assert not re.search(r"server conn crashed|administrator command", pgbouncer.logs())
    with urllib.request.urlopen(web.url + "/readyz", timeout=5) as response:  # noqa: S310 - local test URL
        assert response.status == 200


async def test_a_layer_whose_listen_goes_through_the_transaction_pooler_hears_no_round_trip(
    pgbouncer: PgBouncer,
) -> None:
    pooled = PostgresChannelLayer(database=pgbouncer.url("pooled"), prefix="bpool", event_loop="own")
    session = PostgresChannelLayer(database=pgbouncer.url("session"), prefix="bsess", event_loop="own")
    try:
        assert 0 < await session.notify_round_trip(5.0) < 5.0
        with pytest.raises(NotificationLost, match="did not come back over its LISTEN connection"):
            await pooled.notify_round_trip(1.0)
    finally:
        await pooled.close()
        await session.close()


def test_readyz_fails_when_the_layers_notifications_do_not_come_back(pgbouncer: PgBouncer, settings: Any) -> None:
    settings.DATABASE_SESSION_URL = pgbouncer.url("pooled")
    settings.DATABASE_SESSION_PARAMS = libpq_params(pgbouncer.url("pooled"))
    previous = channel_layers.backends.get("default")
    layer = channel_layers.backends["default"] = PostgresChannelLayer(prefix="breadyz", event_loop="own")
    try:
        response = Client().get("/readyz")
    finally:
        layer.close_sync()
        if previous is None:
            channel_layers.backends.pop("default", None)
        else:
            channel_layers.backends["default"] = previous
    assert response.status_code == 503
    assert response.json()["error"] == "notifications lost"


def test_a_leaders_session_problems_name_a_lost_listen_and_a_job_lock_on_another_session(
    pgbouncer: PgBouncer, settings: Any
) -> None:
    def problems_with_session_path(url: str) -> list[str]:
        settings.DATABASE_SESSION_URL = url
        settings.DATABASE_SESSION_PARAMS = libpq_params(url)
        lock, locks = PostgresLeaseLock(name="bouncer-check"), JobLocks()
        try:
            lock.watch(lambda: None)
            assert lock._listener is not None
            assert lock._listener.connected.wait(10)
            return session_problems(lock, locks, within=1.0)
        finally:
            lock.close()
            locks.close()

    assert problems_with_session_path(pgbouncer.url("session")) == []
    [problem] = problems_with_session_path(pgbouncer.url("pooled"))
    assert "did not come back over this process's LISTEN connection" in problem

    # A job lock taken through the transaction pooler lands on a server session that is not the one
    # the connection started on (here: that one is busy with another client's transaction).
    settings.DATABASE_SESSION_PARAMS = libpq_params(pgbouncer.url("pooled"))
    locks = JobLocks()
    try:
        locks._connection()  # connects; its first server backend goes back to the pool after the statement
        with psycopg.connect(pgbouncer.url("pooled")) as other:
            other.execute("SELECT 1")  # holds a server connection in its open transaction
            acquired = locks.try_lock(job_key("probe"))
        assert locks.backend_pid is not None
        if locks.foreign_holder is None:
            pytest.fail("PgBouncer ran the lock on the connection's first backend while another client held it")
        assert acquired is False
        assert "does not keep sessions" in locks.foreign_holder
        assert session_problems(PostgresLeaseLock(name="unwatched"), locks) == [locks.foreign_holder]
    finally:
        locks.close()


async def test_pgbouncers_refusal_of_a_startup_parameter_fails_at_once_with_its_message(pgbouncer: PgBouncer) -> None:
    url = pgbouncer.url("session") + "?options=-c%20work_mem%3D8MB"
    layer = PostgresChannelLayer(database=url, prefix="bopts", event_loop="own", expiry=30)
    started = time.monotonic()
    try:
        with pytest.raises(PermanentConnectionError, match="unsupported startup parameter: options"):
            await layer.send("test.options", {"type": "x"})
        with pytest.raises(PermanentConnectionError, match="unsupported startup parameter: options"):
            await layer.receive("test.options")
    finally:
        await layer.close()
    assert time.monotonic() - started < 5  # not retried for the 30 s an outage would be


def test_application_name_stays_true_per_client_through_the_transaction_pooler(pgbouncer: PgBouncer) -> None:
    # PgBouncer tracks application_name per client and sets it on whichever server connection runs
    # the client's transaction: pg_stat_activity names the right pod while the transaction runs.
    with (
        psycopg.connect(pgbouncer.url("pooled"), application_name="web-a:web", autocommit=True) as a,
        psycopg.connect(pgbouncer.url("pooled"), application_name="web-b:web", autocommit=True) as b,
    ):
        backends: dict[str, set[int]] = {"web-a:web": set(), "web-b:web": set()}
        for _ in range(3):
            for conn, name in ((a, "web-a:web"), (b, "web-b:web")):
                row = conn.execute(
                    "SELECT current_setting('application_name'), application_name, pg_backend_pid()"
                    " FROM pg_stat_activity WHERE pid = pg_backend_pid()"
                ).fetchone()
                assert row is not None and row[:2] == (name, name)
                backends[name].add(row[2])
    # The two clients ran on the same server connection: the name really moved with the client.
    assert backends["web-a:web"] & backends["web-b:web"]

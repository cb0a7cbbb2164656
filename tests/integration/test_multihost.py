"""Multi-host database URLs against real servers: a read-only server and a down host listed before
the suite's writable one, with target_session_attrs=read-write, for Django, the channel layer and
the elector (its LISTEN), in both URL forms libpq accepts."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from urllib.parse import quote, urlencode

import pytest
from django.db import connection
from django.db.utils import ConnectionHandler
from pytest_django import DjangoDbBlocker

from apps.coordination.models import JobRun
from apps.pglayer.core import PostgresChannelLayer
from harness.pg import PgCluster, PgServer
from harness.processes import ProcessGroup
from iacplatform.dburl import django_database
from tests.integration.test_runleader import holder, start_leader, wait_for
from tests.pglayer.conftest import query

pytestmark = pytest.mark.slow


def suite_host() -> tuple[str, str]:
    s = connection.settings_dict
    return str(s["HOST"] or s["OPTIONS"].get("host") or ""), str(s["PORT"] or "5432")


@pytest.fixture(scope="module")
def read_only(pgcluster: PgCluster, django_db_setup: None) -> PgServer:
    server = pgcluster.server("ro")
    # The suite's database name exists there too: only target_session_attrs can tell them apart.
    server.execute('CREATE DATABASE "%s"' % connection.settings_dict["NAME"])
    server.execute("ALTER SYSTEM SET default_transaction_read_only = on")
    server.execute("SELECT pg_reload_conf()")
    return server


def multi_host_url(form: str, hosts: list[tuple[str, str]], *, read_write: bool = True) -> str:
    s = connection.settings_dict
    auth = quote(s["USER"], safe="") + (":" + quote(s["PASSWORD"], safe="") if s["PASSWORD"] else "")
    query = {"target_session_attrs": "read-write"} if read_write else {}
    if form == "authority":
        netloc = ",".join("%s:%s" % (quote(host, safe=""), port) for host, port in hosts)
        return "postgresql://%s@%s/%s?%s" % (auth, netloc, s["NAME"], urlencode(query))
    query = {"host": ",".join(h for h, _ in hosts), "port": ",".join(p for _, p in hosts), **query}
    return "postgresql://%s@/%s?%s" % (auth, s["NAME"], urlencode(query))


def hosts_before_the_suite(read_only: PgServer, pgcluster: PgCluster) -> list[tuple[str, str]]:
    return [(read_only.host, "5432"), (pgcluster.down_host(), "5432"), suite_host()]


def server_of(url: str) -> tuple[str, bool]:
    """Where a Django connection for ``url`` lands: (read-only setting, suite's tables there)."""
    handler = ConnectionHandler({"default": django_database(url)})
    try:
        with handler["default"].cursor() as cursor:
            cursor.execute("SELECT current_setting('default_transaction_read_only'), to_regclass('django_migrations')")
            read_only_setting, migrations = cursor.fetchone()
        return read_only_setting, migrations is not None
    finally:
        handler.close_all()


@pytest.mark.parametrize("form", ["authority", "host parameter"])
def test_django_connects_to_the_writable_host_past_a_read_only_and_a_down_one(
    form: str, read_only: PgServer, pgcluster: PgCluster, django_db_blocker: DjangoDbBlocker
) -> None:
    hosts = hosts_before_the_suite(read_only, pgcluster)
    with django_db_blocker.unblock():
        assert server_of(multi_host_url(form, hosts)) == ("off", True)
        # Without target_session_attrs libpq takes the first host that answers: the read-only one.
        assert server_of(multi_host_url(form, hosts, read_write=False)) == ("on", False)


@pytest.mark.django_db(transaction=True)
async def test_the_channel_layer_listens_and_delivers_through_a_multi_host_url(
    read_only: PgServer, pgcluster: PgCluster
) -> None:
    url = multi_host_url("authority", hosts_before_the_suite(read_only, pgcluster))
    layer = PostgresChannelLayer(database=url, prefix="multihost", event_loop="own")
    try:
        channel = await layer.new_channel()
        receive = asyncio.ensure_future(layer.receive(channel))
        await layer.send(channel, {"type": "hello", "n": 1})
        assert await asyncio.wait_for(receive, 10) == {"type": "hello", "n": 1}
        # The listener's session is on the suite's server (query() connects there), not the read-only one.
        rows = await query("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [layer.listener_backend_pid])
        assert rows == [(1,)]
    finally:
        await layer.close()


def test_leader_and_web_replica_run_on_a_multi_host_url(
    processes: ProcessGroup, read_only: PgServer, pgcluster: PgCluster
) -> None:
    url = multi_host_url("host parameter", hosts_before_the_suite(read_only, pgcluster))
    leader = start_leader(processes, "leader-mh", env={"DATABASE_URL": url})
    web = processes.daphne("web-mh", env={"DATABASE_URL": url})
    wait_for(lambda: holder() == "leader-mh", 30, "leader-mh to lead")
    wait_for(lambda: JobRun.objects.filter(holder="leader-mh", outcome="ok").exists(), 30, "a job tick")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()",
            ["leader-mh:leader/lease-listen"],
        )
        assert cursor.fetchone() == (1,), "the elector's LISTEN session is on the writable server"
    with urllib.request.urlopen(web.url + "/readyz", timeout=5) as response:  # noqa: S310 - local test URL
        assert response.status == 200
        assert json.loads(response.read())["status"] == "ok"
    assert leader.alive()

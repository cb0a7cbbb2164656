"""The suite's fixtures over harness/: processes on the test database with the suite's key,
throwaway PostgreSQL servers, a PgBouncer in front of the test database, a fake Kubernetes API.

``processes`` prints every process's log when its test fails and kills them all at teardown;
``pgcluster`` (one per module), ``pgpair`` and ``pgbouncer`` stop and delete their servers at
teardown. CI is a fresh machine: when ``pgbouncer`` is missing and this runs as root,
``pgbouncer_binary`` installs the Debian package; when it still cannot be found the tests FAIL with
what to install, never skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from django.db import connection

from harness.fakekube import FakeKube
from harness.pg import Pair, PgCluster
from harness.pgbouncer import PgBouncer, find_binary, upstream
from harness.processes import ProcessGroup
from tests.plugins.environment import SECRET_KEY as SUITE_SECRET_KEY


def suite_database_url() -> str:
    """The URL of the database the suite runs on (pytest-django's test database).

    Hosts and ports go in the query (``?host=h1,h2&port=p1,p2``), with every other libpq option
    of the suite's URL (e.g. ``target_session_attrs``): a multi-host DATABASE_URL stays one.
    """
    s = connection.settings_dict
    auth = quote(s["USER"] or "", safe="")
    if s.get("PASSWORD"):
        auth += ":" + quote(s["PASSWORD"], safe="")
    options = {
        key: str(value)
        for key, value in s.get("OPTIONS", {}).items()
        if key not in _NOT_LIBPQ and isinstance(value, str | int) and not isinstance(value, bool)
    }
    query = {**options, "host": s.get("HOST") or options.get("host", ""), "port": str(s.get("PORT") or "")}
    return "postgresql://%s@/%s?%s" % (
        auth,
        quote(s["NAME"], safe=""),
        urlencode({k: v for k, v in query.items() if v}, quote_via=quote),
    )


# Django's own OPTIONS, and the process's name (each process sets its own).
_NOT_LIBPQ = ("isolation_level", "server_side_binding", "pool", "assume_role", "prepare_threshold", "application_name")


@pytest.fixture
def processes(transactional_db: None, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ProcessGroup]:
    group = ProcessGroup(tmp_path, suite_database_url(), secret_key=SUITE_SECRET_KEY)
    yield group
    group.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(group.logs())


@pytest.fixture(scope="module")
def pgcluster() -> Iterator[PgCluster]:
    cluster = PgCluster()
    yield cluster
    cluster.close()


@pytest.fixture
def pgpair(transactional_db: None) -> Iterator[Pair]:
    """A primary with the schema in ``iacplatform`` and its streaming standby (harness.pg.Pair)."""
    cluster = PgCluster()
    try:
        yield Pair(cluster).start(secret_key=SUITE_SECRET_KEY)
    finally:
        cluster.close()


def pgbouncer_binary() -> str:
    found = find_binary()
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        result = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "pgbouncer"], env=env, capture_output=True, text=True, timeout=600
        )
        found = find_binary()
        if found is None:
            pytest.fail("apt-get install pgbouncer failed:\n%s" % result.stderr[-2000:], pytrace=False)
    if found is None:
        pytest.fail(
            "PgBouncer is required by the topology tests: install the Debian package pgbouncer "
            "(apt-get install pgbouncer), or run the suite as root so it installs it",
            pytrace=False,
        )
    return found


@pytest.fixture
def pgbouncer(transactional_db: None) -> Iterator[PgBouncer]:
    """PgBouncer onto the test database (``pooled``: transaction pooling, ``session``: session)."""
    s = connection.settings_dict
    onto = upstream(
        host=s["HOST"] or s["OPTIONS"].get("host") or "127.0.0.1",
        port=s["PORT"] or 5432,
        dbname=s["NAME"],
        user=s["USER"] or "postgres",
        password=s["PASSWORD"] or "",
    )
    root = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    root.chmod(0o755)
    bouncer = PgBouncer(pgbouncer_binary(), onto, root=root)
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fakekube() -> Iterator[FakeKube]:
    server = FakeKube().start()
    yield server
    server.stop()

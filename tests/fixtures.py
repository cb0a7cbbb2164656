"""The suite's fixtures over harness/: processes on the test database with the suite's key,
throwaway PostgreSQL servers.

``processes`` prints every process's log when its test fails and kills them all at teardown;
``pgcluster`` (one per module) and ``pgpair`` stop and delete their servers at teardown.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from django.db import connection

from harness.pg import Pair, PgCluster
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

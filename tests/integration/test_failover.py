"""A primary failover with a multi-host URL: the primary crashes, its streaming standby is promoted,
and leaders, their listeners and a web replica find the new primary by themselves (libpq tries the
hosts in order; target_session_attrs=read-write skips the standby until it is promoted)."""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from harness.pg import Pair, PgServer
from harness.processes import ProcessGroup
from tests.integration.test_runleader import JOB, start_leader

pytestmark = pytest.mark.slow

DATABASE = "iacplatform"


def on(server: PgServer, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    return server.execute(sql, params, database=DATABASE)


def eventually(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except psycopg.OperationalError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError("timed out after %ss waiting for %s (last: %r)" % (timeout, what, last))


def readyz(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=5) as response:  # noqa: S310 - local test URL
            return int(response.status)
    except (urllib.error.URLError, ConnectionError):
        return 0


OVERLAPS = (
    "SELECT count(*) FROM coordination_jobrun a JOIN coordination_jobrun b ON a.job = b.job AND a.id < b.id"
    " AND a.started_at < COALESCE(b.finished_at, 'infinity') AND b.started_at < COALESCE(a.finished_at, 'infinity')"
    " WHERE a.outcome <> 'skipped' AND b.outcome <> 'skipped'"
)


def test_leaders_listeners_and_web_recover_on_the_promoted_standby(processes: ProcessGroup, pgpair: Pair) -> None:
    primary, standby = pgpair.primary, pgpair.standby
    env = {"DATABASE_URL": pgpair.url}
    leaders = [start_leader(processes, "leader-%d" % i, env=env, ready=False) for i in range(2)]
    web = processes.daphne("web-1", env=env)
    eventually(
        lambda: (
            on(primary, "SELECT count(*) FROM coordination_jobrun WHERE job = %s AND outcome = 'ok'", (JOB,))[0][0]
            >= 10
        ),
        30,
        "ticks on the primary",
    )
    assert readyz(web.url) == 200
    # Let the standby replay what the primary committed, then crash the primary and promote.
    eventually(lambda: on(standby, "SELECT count(*) FROM coordination_jobrun")[0][0] > 0, 20, "replication")
    primary.stop("immediate")
    crashed = time.monotonic()
    standby.promote()
    promoted = on(standby, "SELECT now()")[0][0]

    def ticking_after_promote() -> bool:
        rows = on(
            standby,
            "SELECT count(*) FROM coordination_jobrun WHERE job = %s AND outcome = 'ok' AND started_at > %s",
            (JOB, promoted),
        )
        return int(str(rows[0][0])) >= 10

    eventually(ticking_after_promote, 30, "ticks on the promoted standby")
    recovered = time.monotonic() - crashed
    # Both leader candidates listen again (on the new primary), and the web replica is ready again:
    # its /readyz includes a NOTIFY round trip over the channel layer's LISTEN.
    eventually(
        lambda: (
            on(
                standby,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
                ("leader-%:leader/lease-listen",),
            )[0][0]
            == 2
        ),
        30,
        "both lease listeners on the new primary",
    )
    eventually(lambda: readyz(web.url) == 200, 30, "the web replica ready on the new primary")
    assert on(standby, OVERLAPS) == [(0,)]
    assert all(proc.alive() for proc in [*leaders, web])
    print("failover: ticking again %.2f s after the crash" % recovered, file=sys.stderr)

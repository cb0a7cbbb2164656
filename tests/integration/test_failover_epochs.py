"""A PostgreSQL failover to a lagging asynchronous standby (issue #18): the fencing epoch never
goes backwards or repeats, and a process of a term lost with the old primary writes nothing.

Real servers (harness/pg.py's Pair): a primary, a streaming standby cut off just before a handover,
then the primary crashes and the standby is promoted onto timeline 2. Real runleader processes
reach whichever server is the primary through a multi-host URL.
"""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path

import pytest

from apps.coordination.fencing import EPOCH_SHIFT
from harness.fakekube import FakeKube
from harness.pg import Pair, PgServer
from harness.processes import ProcessGroup
from tests.integration.test_runleader import JOB, start_leader, wait_for

pytestmark = pytest.mark.slow

LEASE_NAME = "iacplatform-leader"
DATABASE = "iacplatform"  # the pair's

OLD_TERM = textwrap.dedent(
    """
    import threading
    from apps.coordination.registry import JobSpec
    from apps.coordination.scheduler import TermContext, run_tick
    from tests.coordination.testjobs import heartbeat

    for epoch in (%s):
        # The worst case: a process that still believes it leads that term (is_leader is True).
        ctx = TermContext(lease="%s", holder="old-term", epoch=epoch, is_leader=lambda: True, stop=threading.Event())
        print("outcome", epoch, run_tick(JobSpec(name="%s", every=0.1, func=heartbeat), ctx))
    """
)


def query(server: PgServer, sql: str, params: list[object] | None = None) -> list[tuple[object, ...]]:
    return server.execute(sql, params, database=DATABASE)


def ticks_by(server: PgServer, holder: str) -> list[int]:
    rows = query(
        server, "SELECT epoch FROM coordination_jobrun WHERE job = %s AND holder = %s AND outcome = 'ok'", [JOB, holder]
    )
    return sorted({int(str(row[0])) for row in rows})


def epochs_of(server: PgServer, holder: str, timeout: float) -> list[int]:
    found = wait_for(lambda: ticks_by(server, holder), timeout, "%s's ticks" % holder)
    assert isinstance(found, list)
    return found


def number(server: PgServer, sql: str, params: list[object] | None = None) -> int:
    return int(str(query(server, sql, params)[0][0]))


@pytest.mark.parametrize("backend", ["postgres", "kubernetes"])
def test_a_promoted_lagging_standby_never_reuses_an_epoch_and_old_terms_are_fenced(
    processes: ProcessGroup, pgpair: Pair, fakekube: FakeKube, tmp_path: Path, backend: str
) -> None:
    """On Kubernetes the Lease (in etcd) survives the database's failover; the fence does not."""
    env = {"DATABASE_URL": pgpair.url}
    if backend == "kubernetes":
        env["KUBECONFIG"] = str(fakekube.write_kubeconfig(tmp_path / "kubeconfig"))
    primary, standby = pgpair.primary, pgpair.standby

    a = start_leader(processes, "leader-a", backend, env=env)
    [epoch_a] = epochs_of(primary, "leader-a", 30)
    assert epoch_a >> EPOCH_SHIFT == 1  # timeline 1
    pgpair.wait_replicated()

    # The standby stops receiving WAL; then a handover happens on the primary only.
    pgpair.cut_replication()
    b = start_leader(processes, "leader-b", backend, env=env)
    a.signal(signal.SIGTERM)
    assert a.wait(15) == 0
    [epoch_b] = epochs_of(primary, "leader-b", 15)
    assert epoch_b > epoch_a
    used_on_old = max(
        number(primary, "SELECT max(epoch) FROM coordination_jobrun"),
        number(primary, "SELECT epoch FROM coordination_fence WHERE name = %s", [LEASE_NAME]),
    )
    # The standby never saw that term: its fence still holds leader-a's epoch.
    assert query(standby, "SELECT epoch FROM coordination_fence WHERE name = %s", [LEASE_NAME])[0][0] == epoch_a

    b.signal(signal.SIGKILL)
    pgpair.crash_primary()
    pgpair.promote()
    assert query(standby, "SELECT pg_is_in_recovery()")[0][0] is False

    # Processes of both old terms wake against the new primary, still believing they lead.
    old = processes.manage(
        "old-term",
        ["shell", "-c", OLD_TERM % ("%d, %d" % (epoch_a, epoch_b), LEASE_NAME, JOB)],
        role="leader",
        env=env,
    )
    assert old.wait(60) == 0, old.log()
    assert "outcome %d fenced" % epoch_a in old.log()  # its fence was raised on timeline 1
    assert "outcome %d fenced" % epoch_b in old.log()  # the new primary never heard of it
    fenced = query(standby, "SELECT epoch, outcome, error FROM coordination_jobrun WHERE holder = 'old-term'")
    assert sorted((int(str(e)), o) for e, o, _ in fenced) == [(epoch_a, "fenced"), (epoch_b, "fenced")]
    assert any("timeline" in str(error) for _, _, error in fenced)
    assert not query(standby, "SELECT 1 FROM coordination_jobrun WHERE holder = 'old-term' AND outcome <> 'fenced'")

    # The next term, on timeline 2, is above every epoch the old primary used.
    start_leader(processes, "leader-c", backend, env=env)
    [epoch_c] = epochs_of(standby, "leader-c", 30)
    assert epoch_c > used_on_old
    assert epoch_c >> EPOCH_SHIFT == 2
    fence = query(standby, "SELECT epoch, timeline FROM coordination_fence WHERE name = %s", [LEASE_NAME])[0]
    assert fence == (epoch_c, 2)

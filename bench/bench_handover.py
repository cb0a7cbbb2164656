"""Leader handover time: graceful (SIGTERM path: stop, release) and crash, on both lease backends,
beside client-go's polling behaviour measured in the same run.

For each backend (PostgreSQL row with NOTIFY/LISTEN; Kubernetes Lease on the fake API server of
tests/fakekube.py, through the official client and a watch) three candidates run as threads of
this process, each with its own elector, connection and client, exactly as three runleader
processes would. A round lets the leader renew for a random moment (so a crash lands anywhere in
the renew cycle), then either stops it (jobs stopped, lease released: what SIGTERM does) or
crashes it (every lease call fails from that instant on: the record stops changing, as when the
process is SIGKILLed or frozen). Handover time = from that instant to the moment another
candidate's ``on_started_leading`` runs. The crashed or stopped candidate is replaced by a fresh
one, so every round has two standbys.

The reference is the same elector with ``client_go_polling=True``: standbys retry only every
RetryPeriod x (1 + rand x 1.2), with neither change notifications nor waits bounded by the
observed expiry, which is what client-go's leaderelection does.

Timings: LeaseDuration 3 s, RenewDeadline 2.5 s, RetryPeriod 2 s (client-go's default retry
period, so graceful handover is comparable with its 2-4.4 s). Goals: graceful p99 < 1 s; crash p99
<= LeaseDuration + 1 s. ``python -m bench.bench_handover [--rounds N]`` (or ``make bench
BENCH=bench_handover``) writes bench/results/ like every benchmark; DATABASE_URL must point at a
migrated database.
"""

from __future__ import annotations

import itertools
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.report import Progress, Row, percentile

BENCH = "handover"
ROUNDS = 20
LEASE, DEADLINE, RETRY = 3.0, 2.5, 2.0
CANDIDATES = 3


def _lock_classes() -> tuple[type, type]:
    from apps.coordination.leaselock.base import LeaderElectionRecord, LeaseLock, LockError, Observed, OnChange

    class CrashableLock(LeaseLock):
        """The real lock of one candidate; after ``crash()`` every call fails, as if the process died."""

        def __init__(self, inner: LeaseLock) -> None:
            super().__init__(name=inner.name, namespace=inner.namespace)
            self.inner = inner
            self.backend = inner.backend
            self.crashed = threading.Event()

        def crash(self) -> None:
            self.crashed.set()
            self.inner.close()  # a dead process listens to nothing

        def _alive(self) -> None:
            if self.crashed.is_set():
                raise LockError("crashed")

        def get(self, *, timeout: float) -> Observed | None:
            self._alive()
            return self.inner.get(timeout=timeout)

        def create(self, record: LeaderElectionRecord, *, timeout: float) -> Observed:
            self._alive()
            return self.inner.create(record, timeout=timeout)

        def update(self, record: LeaderElectionRecord, *, resource_version: str, timeout: float) -> Observed:
            self._alive()
            return self.inner.update(record, resource_version=resource_version, timeout=timeout)

        def watch(self, on_change: OnChange) -> None:
            self.inner.watch(on_change)

        def close(self) -> None:
            self.inner.close()

    return CrashableLock, LockError


@dataclass
class Series:
    backend: str
    kind: str  # graceful | crash
    client_go: bool
    handovers: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        return "client-go polling" if self.client_go else "project"


class Cluster:
    """Three candidates for one lease; replaces the one that left after each round."""

    def __init__(self, *, backend: str, client_go: bool, lease: str, make_inner: Callable[[str], object]) -> None:
        from apps.coordination.elector import ElectionConfig

        self.backend = backend
        self.lease = lease
        self.make_inner = make_inner
        self.config = ElectionConfig(
            lease_duration=LEASE, renew_deadline=DEADLINE, retry_period=RETRY, client_go_polling=client_go
        )
        self.events: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self.members: dict[str, tuple[object, object, threading.Thread]] = {}
        self.names = ("c%d" % n for n in itertools.count())

    def add(self) -> None:
        from django.db import connection

        from apps.coordination.elector import Callbacks, LeaderElector

        crashable_cls, _ = _lock_classes()
        name = next(self.names)
        lock = crashable_cls(self.make_inner(self.lease))

        def started(leadership: object) -> None:
            with self.cond:
                self.events.append((time.monotonic(), name))
                self.cond.notify_all()

        elector = LeaderElector(
            lock=lock, identity=name, config=self.config, callbacks=Callbacks(on_started_leading=started)
        )

        def run() -> None:
            try:
                elector.run()
            finally:
                connection.close()

        thread = threading.Thread(target=run, name="candidate-%s" % name, daemon=True)
        self.members[name] = (elector, lock, thread)
        thread.start()

    def wait_leader(self, *, after: float, other_than: str | None, timeout: float) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for at, name in self.events:
                    if at >= after and name != other_than:
                        return at, name
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError("no new leader within %.1fs on %s" % (timeout, self.lease))
                self.cond.wait(left)

    def remove(self, name: str) -> None:
        elector, _lock, thread = self.members.pop(name)
        elector.stop()  # type: ignore[attr-defined]
        thread.join(DEADLINE + RETRY + 2)

    def stop(self) -> None:
        for name in list(self.members):
            self.remove(name)


def measure(
    series: Series, rounds: int, make_inner: Callable[[str], object], progress: Progress, rng: random.Random
) -> None:
    cluster = Cluster(
        backend=series.backend,
        client_go=series.client_go,
        lease="bench-%s-%s-%s-%d"
        % (series.backend, series.kind, "cg" if series.client_go else "p", rng.randrange(10**9)),
        make_inner=make_inner,
    )
    for _ in range(CANDIDATES):
        cluster.add()
    try:
        _, leader = cluster.wait_leader(after=0.0, other_than=None, timeout=LEASE * 4)
        for n in range(rounds):
            progress.step("%s %s (%s) round %d/%d" % (series.backend, series.kind, series.label, n + 1, rounds))
            # Random phase in the renew cycle; standbys have seen at least one renew.
            time.sleep(rng.uniform(0.3, 0.3 + RETRY) if series.kind == "crash" else rng.uniform(0.2, 0.5))
            elector, lock, _ = cluster.members[leader]
            began = time.monotonic()
            if series.kind == "graceful":
                elector.stop()  # type: ignore[attr-defined]
            else:
                lock.crash()  # type: ignore[attr-defined]
            at, successor = cluster.wait_leader(after=began, other_than=leader, timeout=LEASE * 4 + RETRY * 3)
            series.handovers.append(at - began)
            cluster.remove(leader)
            cluster.add()
            leader = successor
    finally:
        cluster.stop()


def rows_for(project: Series, reference: Series) -> list[Row]:
    goal_s = 1.0 if project.kind == "graceful" else LEASE + 1.0
    goal = "p99 < 1 s" if project.kind == "graceful" else "p99 <= LeaseDuration + 1 s = %.0f s" % goal_s
    scenario = "%s, %s (%d rounds; lease %.0f/%.1f/%.0f s)" % (
        project.backend,
        project.kind,
        len(project.handovers),
        LEASE,
        DEADLINE,
        RETRY,
    )
    rows = []
    for q in (50, 99):
        measured = percentile(project.handovers, q)
        ref = percentile(reference.handovers, q)
        rows.append(
            Row(
                bench=BENCH,
                scenario=scenario,
                metric="p%d handover" % q,
                unit="s",
                measured=measured,
                goal=goal if q == 99 else "-",
                met=(measured < goal_s if project.kind == "graceful" else measured <= goal_s) if q == 99 else None,
                reference="client-go polling",
                reference_value=ref,
                extra={"max": max(project.handovers), "reference_max": max(reference.handovers)},
            )
        )
    return rows


def run(progress: Progress, rounds: int | None = None) -> list[Row]:
    import logging

    import django

    rounds = rounds or ROUNDS
    # Every handover logs at INFO; the progress line is what matters here.
    logging.getLogger("apps.coordination").setLevel(logging.WARNING)

    django.setup()
    from apps.coordination.kube import api_client
    from apps.coordination.leaselock.kubernetes import KubernetesLeaseLock
    from apps.coordination.leaselock.postgres import PostgresLeaseLock
    from tests.fakekube import FakeKube

    rng = random.Random(20261127)
    fake = FakeKube().start()
    makers: dict[str, Callable[[str], object]] = {
        "postgres": lambda lease: PostgresLeaseLock(name=lease),
        "kubernetes": lambda lease: KubernetesLeaseLock(
            name=lease, namespace="default", api_client=api_client(fake.configuration())
        ),
    }
    rows: list[Row] = []
    try:
        for backend in ("postgres", "kubernetes"):
            for kind in ("graceful", "crash"):
                project = Series(backend=backend, kind=kind, client_go=False)
                reference = Series(backend=backend, kind=kind, client_go=True)
                measure(project, rounds, makers[backend], progress, rng)
                measure(reference, rounds, makers[backend], progress, rng)
                rows.extend(rows_for(project, reference))
    finally:
        fake.stop()
    return rows


def main() -> int:
    from bench.run import main as run_main

    if "--rounds" in sys.argv:
        import bench.bench_handover as this  # run() is called on the imported module, not __main__

        this.ROUNDS = int(sys.argv[sys.argv.index("--rounds") + 1])
    return run_main(["bench.run", "bench_handover"])


if __name__ == "__main__":
    sys.exit(main())

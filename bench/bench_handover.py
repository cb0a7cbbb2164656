"""Leader handover time on both lease backends, beside client-go's polling measured in the same run.

For each backend (PostgreSQL row with NOTIFY/LISTEN; Kubernetes Lease on the fake API server of
harness/fakekube.py, through the official client and a watch) three candidates run as threads of
this process, each with its own elector, connection, client and beacon (beacon.py), exactly as
three runleader processes would. A round lets the leader renew for a random moment (so the fault
lands anywhere in the renew cycle), then:
- graceful: stops it (jobs stopped, lease released: what SIGTERM does);
- freeze: every lease call fails from that instant on, its sessions stay open (SIGSTOP, a hung
  process): the standbys can only wait for the lease to expire;
- kill: as freeze, and its database sessions end (its beacon among them), as PostgreSQL ends a
  SIGKILLed process's: the standbys waiting on the beacon take over at once.
Handover time = from that instant to the moment another candidate's ``on_started_leading`` runs
(its term begins; its first tick follows after the recovery pass, measured end to end in
tests/integration/test_crash_failover.py). The candidate that left is replaced by a fresh one, so
every round has two standbys.

The reference is the same elector with ``client_go_polling=True``: standbys retry only every
RetryPeriod x (1 + rand x 1.2), with neither change notifications, beacons nor waits bounded by
the observed expiry, which is what client-go's leaderelection does.

Timings: graceful and freeze at LeaseDuration 3 s, RenewDeadline 2.5 s, RetryPeriod 2 s
(client-go's default retry period); kill at the DEFAULTS 15/10/2. Goals: graceful p99 < 1 s,
freeze p99 <= LeaseDuration + 1 s, kill p99 < 1 s. The reference's kill rounds take LeaseDuration
and more each, so its 20 rounds run as 20 independent clusters at once. ``python -m
bench.bench_handover [--rounds N] [--kinds graceful,freeze,kill]`` (or ``make bench
BENCH=bench_handover``) writes bench/results/ like every benchmark; DATABASE_URL must point at a
migrated database.
"""

from __future__ import annotations

import io
import itertools
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.report import Progress, Row
from harness.stats import percentile

BENCH = "handover"
ROUNDS = 20
LEASE, DEADLINE, RETRY = 3.0, 2.5, 2.0
DEFAULTS = (15.0, 10.0, 2.0)  # kill rounds run at the defaults
KINDS: tuple[str, ...] = ("graceful", "freeze", "kill")
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
            self.beacons: list[Any] | None = None

        def crash(self, *, end_sessions: bool) -> None:
            self.crashed.set()
            if end_sessions and self.beacons is not None:
                for beacon in self.beacons:
                    beacon.close()  # its sessions end at once, as PostgreSQL ends a dead process's
            # A dead process listens to nothing (stopping the listener thread takes up to 0.5 s:
            # after the beacon, or it would delay what a real SIGKILL does at once).
            self.inner.close()

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
    kind: str  # graceful | freeze | kill
    client_go: bool
    handovers: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        return "client-go polling" if self.client_go else "project"


class Cluster:
    """Three candidates for one lease; replaces the one that left after each round."""

    def __init__(
        self,
        *,
        backend: str,
        client_go: bool,
        lease: str,
        make_inner: Callable[[str], object],
        timings: tuple[float, float, float] = (LEASE, DEADLINE, RETRY),
        beacons: bool = False,
    ) -> None:
        from apps.coordination.elector import ElectionConfig

        self.backend = backend
        self.lease = lease
        self.make_inner = make_inner
        self.beacons = beacons and not client_go
        self.config = ElectionConfig(
            lease_duration=timings[0], renew_deadline=timings[1], retry_period=timings[2], client_go_polling=client_go
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

        beacon = watch = None
        if self.beacons:
            from apps.coordination.beacon import Beacon, BeaconWatch

            beacon = Beacon(lease=self.lease, identity=name, on_lost=lambda: None)
            watch = BeaconWatch(lease=self.lease, on_ended=lambda epoch: None)
            lock.beacons = [beacon, watch]
        elector = LeaderElector(
            lock=lock,
            identity=name,
            config=self.config,
            callbacks=Callbacks(on_started_leading=started),
            beacon=beacon,
            beacon_watch=watch,
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
        thread.join(self.config.renew_deadline + self.config.retry_period + 2)

    def stop(self) -> None:
        for name in list(self.members):
            self.remove(name)


def measure(
    series: Series, rounds: int, make_inner: Callable[[str], object], progress: Progress, rng: random.Random
) -> None:
    kill = series.kind == "kill"
    cluster = Cluster(
        backend=series.backend,
        client_go=series.client_go,
        lease="bench-%s-%s-%s-%d"
        % (series.backend, series.kind, "cg" if series.client_go else "p", rng.randrange(10**9)),
        make_inner=make_inner,
        timings=DEFAULTS if kill else (LEASE, DEADLINE, RETRY),
        beacons=True,
    )
    lease = cluster.config.lease_duration
    for _ in range(CANDIDATES):
        cluster.add()
    try:
        _, leader = cluster.wait_leader(after=0.0, other_than=None, timeout=lease * 4)
        for n in range(rounds):
            progress.step("%s %s (%s) round %d/%d" % (series.backend, series.kind, series.label, n + 1, rounds))
            # Random phase in the renew cycle; standbys have seen at least one renew.
            time.sleep(rng.uniform(0.3, 0.3 + RETRY) if series.kind != "graceful" else rng.uniform(0.2, 0.5))
            elector, lock, _ = cluster.members[leader]
            began = time.monotonic()
            if series.kind == "graceful":
                elector.stop()  # type: ignore[attr-defined]
            else:
                # kill: the process is gone, PostgreSQL ends its sessions; freeze (SIGSTOP): they stay.
                lock.crash(end_sessions=kill)  # type: ignore[attr-defined]
            at, successor = cluster.wait_leader(after=began, other_than=leader, timeout=lease * 4 + RETRY * 3)
            series.handovers.append(at - began)
            cluster.remove(leader)
            cluster.add()
            leader = successor
    finally:
        cluster.stop()


def measure_in_parallel(
    series: Series, rounds: int, make_inner: Callable[[str], object], progress: Progress, rng: random.Random
) -> None:
    """``rounds`` independent clusters, one round each, all at once (for rounds that take 15 s+)."""
    results: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    seeds = [rng.randrange(10**9) for _ in range(rounds)]

    def one(seed: int) -> None:
        from django.db import connection

        single = Series(backend=series.backend, kind=series.kind, client_go=series.client_go)
        try:
            measure(single, 1, make_inner, Progress(stream=io.StringIO()), random.Random(seed))
            with lock:
                results.extend(single.handovers)
        except BaseException as exc:  # reported after the join
            errors.append(exc)
        finally:
            connection.close()

    progress.step("%s %s (%s): %d rounds at once" % (series.backend, series.kind, series.label, rounds))
    threads = [threading.Thread(target=one, args=(seed,), daemon=True) for seed in seeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEFAULTS[0] * 6)
    if errors:
        raise errors[0]
    series.handovers.extend(results)


def rows_for(project: Series, reference: Series) -> list[Row]:
    kill = project.kind == "kill"
    timings = DEFAULTS if kill else (LEASE, DEADLINE, RETRY)
    goal_s = 1.0 if project.kind in ("graceful", "kill") else LEASE + 1.0
    goal = "p99 <= LeaseDuration + 1 s = %.0f s" % goal_s if project.kind == "freeze" else "p99 < 1 s"
    scenario = "%s, %s (%d rounds; lease %.0f/%.1f/%.0f s)" % (
        project.backend,
        {"kill": "kill (process death)", "freeze": "freeze (SIGSTOP)"}.get(project.kind, project.kind),
        len(project.handovers),
        *timings,
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
                met=(measured <= goal_s if project.kind == "freeze" else measured < goal_s) if q == 99 else None,
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
    from harness.fakekube import FakeKube

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
            for kind in KINDS:
                project = Series(backend=backend, kind=kind, client_go=False)
                reference = Series(backend=backend, kind=kind, client_go=True)
                measure(project, rounds, makers[backend], progress, rng)
                if kind == "kill":
                    measure_in_parallel(reference, rounds, makers[backend], progress, rng)
                else:
                    measure(reference, rounds, makers[backend], progress, rng)
                rows.extend(rows_for(project, reference))
    finally:
        fake.stop()
    return rows


def main() -> int:
    import bench.bench_handover as this  # run() is called on the imported module, not __main__
    from bench.run import main as run_main

    if "--rounds" in sys.argv:
        this.ROUNDS = int(sys.argv[sys.argv.index("--rounds") + 1])
    if "--kinds" in sys.argv:
        this.KINDS = tuple(sys.argv[sys.argv.index("--kinds") + 1].split(","))
    return run_main(["bench.run", "bench_handover"])


if __name__ == "__main__":
    sys.exit(main())

"""Chaos rounds: load, a fault, recovery measured, the invariants checked; totals at the end.

The invariants (DESIGN.md and issue 8), checked after every round:
1. no two holders ran the same job at overlapping times (JobRun);
2. every task reaches a terminal state within TASK_BOUND;
3. no apply executed twice (agents' execution logs);
4. no two executions overlapping in one workspace (agents' execution logs);
5. no advisory lock is held by one session in one transaction (or outside any) for 15 s, and
   every beacon and job lock is the live leader's (its current term's beacon, its job
   locks): none left on a standby's or a dead term's session;
6. every online agent's connected_pod names a live web replica;
7. a leader is elected again within ELECTION_BOUND after any fault;
8. no workspace's current state goes backwards (same lineage and a rising serial in the recorded
   moves of its pointer, and against the state seen at the previous check).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from django.conf import settings
from django.db import OperationalError, close_old_connections, connection
from django.db.utils import InterfaceError

from chaos import faults, invariants
from chaos.cluster import LEASE_DURATION, RETRY_PERIOD, Cluster
from harness.stats import percentile

logger = logging.getLogger(__name__)
T = TypeVar("T")

# A standby polls every RetryPeriod x (1 + rand x 1.2) (client-go's jitter) and judges expiry from
# when it *saw* the last renew, itself up to one jittered poll late: hence two jittered periods.
ELECTION_BOUND = LEASE_DURATION + 2 * (1 + 1.2) * RETRY_PERIOD
TASK_BOUND = 60.0
SETTLE_TIMEOUT = 15.0
INVARIANTS = (
    "job_overlap",
    "task_not_terminal",
    "apply_twice",
    "workspace_overlap",
    "advisory_lock_leak",
    "election_lock_stray",
    "stale_connected_pod",
    "no_leader",
    "state_regression",
)


@dataclass
class Totals:
    rounds: int = 0
    violations: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    failover: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    recovery: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    @property
    def violation_count(self) -> int:
        return sum(len(v) for v in self.violations.values())


def retrying(fn: Callable[[], T], *, timeout: float = 30.0) -> T:
    """Run a read of the harness through a database restart: reconnect and retry until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (OperationalError, InterfaceError):
            if time.monotonic() > deadline:
                raise
            with contextlib.suppress(Exception):
                connection.close()
            time.sleep(0.2)


def lease_state() -> tuple[str, datetime | None]:
    holder, renewed, _ = lease_times()
    return holder, renewed


def lease_times() -> tuple[str, datetime | None, datetime | None]:
    """(holder, renewTime, acquireTime) of the lease as stored now."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT holder_identity, renew_time, acquire_time FROM coordination_lease ORDER BY id LIMIT 1")
        row = cursor.fetchone()
    return (row[0], row[1], row[2]) if row else ("", None, None)


def wait_for_leader(cluster: Cluster, *, since: float, timeout: float) -> float | None:
    """Seconds from ``since`` until a live, running candidate renewed the lease after ``since``."""
    deadline = time.monotonic() + timeout
    since_dt = datetime.fromtimestamp(since, UTC)
    while time.monotonic() < deadline:
        with contextlib.suppress(OperationalError, InterfaceError):
            holder, renewed, acquired = lease_times()
            live = {m.name for m in cluster.by_role("leader") if m.alive() and not m.stopped}
            if holder in live and renewed is not None and renewed > since_dt:
                # A new term started after the fault: its acquireTime is when it took over. (The
                # renewTime seen now is merely the latest renew: polling starts only after the
                # harness has restarted the processes that died, which takes seconds.)
                if acquired is not None and acquired > since_dt:
                    return max(0.0, acquired.timestamp() - since)
                return max(0.0, renewed.timestamp() - since)
        with contextlib.suppress(Exception):
            connection.close() if not connection.is_usable() else None
        time.sleep(0.05)
    return None


def wait_until(check: Callable[[], list[str]], *, timeout: float) -> list[str]:
    """Poll ``check`` until it returns no violations or ``timeout`` passes; its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except (OperationalError, InterfaceError) as exc:
            found = ["database unreachable: %s" % exc]
            with contextlib.suppress(Exception):
                connection.close()
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


class Runner:
    def __init__(self, cluster: Cluster, *, seed: int, out: Callable[[str], None] = print) -> None:
        self.cluster = cluster
        self.seed = seed
        self.out = out
        self.totals = Totals()
        self.started_at = datetime.now(UTC)
        self.states_seen: invariants.StateSeen = {}

    def round(self, number: int, *, load_for: float = 2.0) -> list[str]:
        rng = random.Random("%d:%d" % (self.seed, number))
        chosen = faults.choose(rng, failover=self.cluster.failover)
        time.sleep(load_for)
        started = time.monotonic()
        done: list[faults.Injected] = []
        for fault in chosen:
            done.append(retrying(functools.partial(faults.inject, self.cluster, fault, rng)))
        restarted = self.cluster.restart_dead()
        # The election is timed from the fault that hit it; after other faults, a leader must
        # simply keep renewing, so the clock starts when the faults are done.
        marks = [d.election_from for d in done if d.election_from is not None]
        since = max(marks) if marks else time.time()
        failover = wait_for_leader(self.cluster, since=since, timeout=ELECTION_BOUND + 20)
        label = "+".join(f.label for f in chosen)
        violations: list[str] = []
        if failover is None or failover > ELECTION_BOUND:
            violations.append("no_leader: none within %.1fs of %s (got %s)" % (ELECTION_BOUND, label, failover))
        else:
            self.totals.failover[label].append(failover)
        violations += [
            "stale_connected_pod: " + v
            for v in wait_until(
                lambda: invariants.stale_connected_pods(self.cluster.live_web_pods()), timeout=SETTLE_TIMEOUT
            )
        ]
        self.totals.recovery[label].append(time.monotonic() - started)
        violations += self.check_invariants()
        self.totals.rounds += 1
        for violation in violations:
            self.totals.violations[violation.split(":", 1)[0]].append("round %d: %s" % (number, violation))
        self.out(
            "%s round %3d  %-48s failover %-7s recovery %5.2fs  %s%s"
            % (
                datetime.now(UTC).strftime("%H:%M:%S"),
                number,
                label,
                "%.2fs" % failover if failover is not None else "none",
                time.monotonic() - started,
                "; ".join(d.description for d in done),
                ("  restarted " + ",".join(restarted)) if restarted else "",
            )
        )
        for violation in violations:
            self.out("    VIOLATION %s" % violation)
        return violations

    def check_invariants(self, *, task_bound: float = TASK_BOUND) -> list[str]:
        close_old_connections()
        found: list[str] = []
        found += ["job_overlap: " + v for v in retrying(lambda: invariants.job_overlaps(since=self.started_at))]
        cutoff = datetime.now(UTC) - timedelta(seconds=task_bound)
        found += [
            "task_not_terminal: " + v for v in retrying(lambda: invariants.tasks_not_terminal(created_before=cutoff))
        ]
        executions = invariants.read_executions(self.cluster.execution_logs())
        found += ["apply_twice: " + v for v in invariants.applies_executed_twice(executions)]
        found += [
            "workspace_overlap: " + v
            for v in invariants.overlapping_executions(executions, died_at=self.cluster.agent_deaths)
        ]
        leaked = retrying(lambda: invariants.persistent_advisory_locks(window=SETTLE_TIMEOUT))
        found += [
            "advisory_lock_leak: held for %.0fs by one session and transaction: %s" % (SETTLE_TIMEOUT, v)
            for v in leaked
        ]
        strays = wait_until(self.election_lock_strays, timeout=SETTLE_TIMEOUT)
        found += ["election_lock_stray: " + v for v in strays]
        regressed, self.states_seen = retrying(lambda: invariants.state_regressions(seen=self.states_seen))
        found += ["state_regression: " + v for v in regressed]
        return found

    def election_lock_strays(self) -> list[str]:
        live = [m.name for m in self.cluster.by_role("leader") if m.alive() and not m.stopped]
        return invariants.election_lock_strays(lease=settings.LEADER_ELECTION_LEASE_NAME, live_leaders=live)

    def summary(self) -> str:
        lines = ["", "chaos: %d rounds, seed %d" % (self.totals.rounds, self.seed), "", "invariant violations:"]
        for name in INVARIANTS:
            lines.append("  %-22s %d" % (name, len(self.totals.violations.get(name, []))))
        lines += ["", "per fault kind (seconds):        n   failover p50/p99     recovery p50/p99"]
        by_kind: dict[str, tuple[list[float], list[float]]] = {}
        for label, values in self.totals.recovery.items():
            for kind in label.split("+"):
                entry = by_kind.setdefault(kind, ([], []))
                entry[1].extend(values)
                entry[0].extend(self.totals.failover.get(label, []))
        for kind in sorted(by_kind):
            fo, rec = by_kind[kind]
            lines.append(
                "  %-30s %3d   %5.2f / %5.2f      %5.2f / %5.2f"
                % (kind, len(rec), percentile(fo, 50), percentile(fo, 99), percentile(rec, 50), percentile(rec, 99))
            )
        lines += ["", crash_failover_line(self.totals)]
        return "\n".join(lines)


CRASH = "sigkill:leader"


def crash_failover_line(totals: Totals, *, within: float = 1.0) -> str:
    """The share of leader crashes (SIGKILL of the leader, alone in its round) taken over within
    ``within`` seconds: the liveness beacon's promise (apps/coordination/beacon.py)."""
    times = totals.failover.get(CRASH, [])
    missed = [label for label, values in totals.violations.items() if label == "no_leader"]
    fast = sum(1 for t in times if t < within)
    if not times:
        return "crash failover within %.0f s: no round killed the leader alone" % within
    return "crash failover within %.0f s: %d/%d (%.0f%%), p50 %.2f s, p99 %.2f s%s" % (
        within,
        fast,
        len(times),
        100.0 * fast / len(times),
        percentile(times, 50),
        percentile(times, 99),
        " (rounds without a leader are counted under no_leader)" if missed else "",
    )

"""The faults of a chaos round, chosen by a seeded RNG so that a failing run can be replayed.

Each fault returns when it has been injected and, for pauses and restarts, undone (a SIGSTOPped
process is SIGCONTed, a stopped database is started again); the harness then restarts processes
that died, as Kubernetes would. Pauses of an agent stay shorter than AGENT_OFFLINE_THRESHOLD: a
machine frozen longer than the server waits for it cannot be fenced by timing alone (its Terraform
resumes with it), which the server-side ownership checks cover for results but not for the run
itself; see docs/architecture.md.
"""

from __future__ import annotations

import random
import signal
import time
from dataclasses import dataclass

from django.db import connection

from chaos.cluster import AGENT_OFFLINE_THRESHOLD, LEASE_DURATION, Cluster, Member

KINDS = (
    "sigkill",
    "sigterm",
    "sigstop",
)
TARGETS = ("leader", "standby", "web", "agent")
DATABASE_FAULTS = ("terminate_listeners", "terminate_leader_sessions", "postgres_restart")


@dataclass(frozen=True)
class Fault:
    kind: str  # sigkill | sigterm | sigstop | terminate_listeners | terminate_leader_sessions | postgres_restart
    # | failover
    target: str = ""  # leader | standby | web | agent, for signals

    @property
    def label(self) -> str:
        return "%s:%s" % (self.kind, self.target) if self.target else self.kind


def choose(rng: random.Random, *, failover: bool = False) -> list[Fault]:
    """One fault, sometimes two at once (a process fault together with a database fault).
    ``failover`` (a cluster with a standby) adds the primary's failover to the database faults."""
    faults = [_one(rng, failover=failover)]
    if rng.random() < 0.25:
        second = _one(rng, failover=failover)
        if second != faults[0]:
            faults.append(second)
    return faults


def _one(rng: random.Random, *, failover: bool = False) -> Fault:
    if rng.random() < 0.3:
        return Fault(rng.choice(DATABASE_FAULTS + (("failover",) if failover else ())))
    return Fault(rng.choice(KINDS), rng.choice(TARGETS))


def current_leader(cluster: Cluster) -> Member | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT holder_identity FROM coordination_lease ORDER BY id LIMIT 1")
        row = cursor.fetchone()
    holder = row[0] if row else ""
    for member in cluster.by_role("leader"):
        if member.name == holder:
            return member
    return None


def pick_target(cluster: Cluster, target: str, rng: random.Random) -> Member | None:
    if target in ("leader", "standby"):
        leader = current_leader(cluster)
        if target == "leader":
            return leader
        standbys = [m for m in cluster.by_role("leader") if m is not leader and m.alive()]
        return rng.choice(standbys) if standbys else None
    candidates = [m for m in cluster.by_role(target) if m.alive() and not m.stopped]
    return rng.choice(candidates) if candidates else None


@dataclass(frozen=True)
class Injected:
    description: str
    # When the election's clock starts for this fault: the moment a leader was hit, or the moment
    # PostgreSQL was reachable again; None when the fault does not touch the election.
    election_from: float | None = None


def inject(cluster: Cluster, fault: Fault, rng: random.Random) -> Injected:
    """Inject ``fault`` (and undo it, for pauses and restarts)."""
    started = time.time()
    if fault.kind == "terminate_listeners":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND query ILIKE 'LISTEN%%'"
            )
            (count,) = cursor.fetchone()
        return Injected("terminated %d LISTEN sessions" % count, started)
    if fault.kind == "terminate_leader_sessions":
        leader = current_leader(cluster)
        if leader is None:
            return Injected("no leader to cut off")
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND application_name LIKE %s",
                [leader.name + ":%"],
            )
            (count,) = cursor.fetchone()
        return Injected("terminated %d sessions of %s" % (count, leader.name), started)
    if fault.kind == "failover":
        connection.close()
        promoted = cluster.fail_over()
        return Injected("crashed the primary, promoted the standby, rebuilt the old one as standby", promoted)
    if fault.kind == "postgres_restart":
        connection.close()
        back = cluster.restart_database(down_for=rng.uniform(0.5, 2.0))
        return Injected("restarted PostgreSQL", back)
    member = pick_target(cluster, fault.target, rng)
    if member is None:
        return Injected("no %s to hit" % fault.target)
    if fault.kind == "sigkill":
        cluster.kill(member)
    elif fault.kind == "sigterm":
        cluster.terminate(member, grace=10.0)
    else:
        # A leader is paused past its lease (its successor must take over and it must run nothing
        # when it wakes); other processes for a shorter GC-like pause.
        pause = LEASE_DURATION + 1.0 if fault.target == "leader" else rng.uniform(0.5, AGENT_OFFLINE_THRESHOLD / 2)
        cluster.signal(member, signal.SIGSTOP)
        time.sleep(pause)
        cluster.signal(member, signal.SIGCONT)
    hits_leader = member.role == "leader" and fault.target == "leader"
    return Injected("%s %s" % (fault.kind, member.name), started if hits_leader else None)

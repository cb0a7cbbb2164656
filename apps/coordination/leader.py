"""The runleader process: elector + scheduler + HTTP endpoints, as one supervised unit.

``LeaderProcess.run`` campaigns until asked to stop. Each term runs in the elector's "leading"
thread (``Term``); when the term ends, the elector thread waits up to the grace period for the
jobs to stop before it may release the lease or campaign again.

Guarantees: on stop (SIGTERM/SIGINT) the jobs stop first, then the lease is released (empty
holder), then ``run`` returns 0. If jobs outlive the grace period after a term ends, ``run``
returns 1 at once without campaigning again, so the orchestrator restarts the process clean.
Does NOT: kill a stuck job thread (Python cannot); the process exit does.
"""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass

from django.db import connection

from apps.coordination import registry
from apps.coordination.beacon import Beacon, BeaconWatch
from apps.coordination.clock import SYSTEM_CLOCK
from apps.coordination.elector import Callbacks, ElectionConfig, LeaderElector, Leadership
from apps.coordination.fencing import epoch_floor
from apps.coordination.health import HealthServer
from apps.coordination.joblocks import process_job_locks
from apps.coordination.leaselock import make_lock, resolve_backend
from apps.coordination.metrics import REGISTRY, register_elector
from apps.coordination.overlaps import OverlapCollector
from apps.coordination.scheduler import Term, TermContext
from apps.coordination.selfcheck import session_problems

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaderOptions:
    identity: str
    backend: str
    lease_name: str
    namespace: str
    config: ElectionConfig
    grace: float
    http_addr: str | None
    extra_job_modules: tuple[str, ...] = ()
    # SET LOCAL statement_timeout of every job and fence transaction (seconds).
    statement_timeout: float = 10.0


def discover_jobs(extra_modules: tuple[str, ...] = ()) -> list[registry.JobSpec]:
    registry.autodiscover()
    for module in extra_modules:
        importlib.import_module(module)
    return registry.registered_jobs()


def _nothing(*args: object) -> None:
    return None  # placeholder callbacks: the elector installs its own


class LeaderProcess:
    def __init__(self, options: LeaderOptions) -> None:
        self.options = options
        self.backend = resolve_backend(options.backend)
        self.jobs = discover_jobs(options.extra_job_modules)
        lock = make_lock(backend=self.backend, name=options.lease_name, namespace=options.namespace)
        beacons = not options.config.client_go_polling
        self.elector = LeaderElector(
            lock=lock,
            identity=options.identity,
            config=options.config,
            callbacks=Callbacks(
                on_started_leading=self._on_started_leading,
                on_stopped_leading=self._on_stopped_leading,
                on_new_leader=self._on_new_leader,
            ),
            epoch_floor=self._epoch_floor,
            # Crash failover in well under a second: PostgreSQL tells the standbys when the
            # leader's process dies (beacon.py). Safety does not depend on it.
            beacon=Beacon(lease=options.lease_name, identity=options.identity, on_lost=_nothing) if beacons else None,
            beacon_watch=BeaconWatch(lease=options.lease_name, on_ended=_nothing) if beacons else None,
        )
        self.term: Term | None = None
        # Since when the leader's terms have run no jobs (None while they do, or while standby).
        self._blocked_since: float | None = None
        self.failed = threading.Event()
        self.done = threading.Event()
        self.http: HealthServer | None = None
        if options.http_addr:
            self.http = HealthServer(
                options.http_addr,
                self.elector,
                tolerance=options.config.retry_period,
                failed=self.failed.is_set,
                jobs_blocked=self.jobs_blocked,
                problems=lambda: session_problems(self.elector.lock, process_job_locks()),
            )

    def run(self, stopping: threading.Event) -> int:
        collector = register_elector(self.elector)
        overlaps = OverlapCollector()
        REGISTRY.register(overlaps)
        logger.info(
            "%s: campaigning for %s (%d jobs: %s)",
            self.options.identity,
            self.elector.lock.describe(),
            len(self.jobs),
            ", ".join(spec.name for spec in self.jobs),
        )
        thread = threading.Thread(target=self._elect, name="elector", daemon=True)
        if self.http is not None:
            self.http.start()
        thread.start()
        try:
            while not stopping.is_set() and not self.failed.is_set() and not self.done.is_set():
                stopping.wait(0.5)
            self.elector.stop()
            # Room for the jobs' grace period, then one release request.
            thread.join(self.options.grace + self.options.config.retry_period + 1)
        finally:
            if self.http is not None:
                self.http.stop()
            REGISTRY.unregister(collector)
            REGISTRY.unregister(overlaps)
        if self.failed.is_set() or thread.is_alive():
            logger.error(
                "%s: exiting non-zero: jobs did not stop within %.1fs", self.options.identity, self.options.grace
            )
            return 1
        return 0

    def _elect(self) -> None:
        try:
            self.elector.run()
        except Exception:
            logger.exception("%s: the elector failed", self.options.identity)
            self.failed.set()
        finally:
            connection.close()
            self.done.set()

    def _epoch_floor(self) -> int:
        # A lease created from nothing, recreated with fewer transitions, or a database promoted
        # from a lagging standby must still start a term above every epoch fenced before.
        return epoch_floor(self.options.lease_name)

    def jobs_blocked(self) -> float:
        """Seconds this process has led without running jobs (0 while it runs them or is standby)."""
        term = self.term
        if term is not None and term.jobs_started:
            self._blocked_since = None
        since = self._blocked_since
        if since is None or not self.elector.is_leader():
            return 0.0
        return SYSTEM_CLOCK.monotonic() - since

    def _on_started_leading(self, leadership: Leadership) -> None:
        ctx = TermContext(
            lease=self.options.lease_name,
            holder=self.options.identity,
            epoch=leadership.epoch,
            is_leader=self.elector.is_leader,
            stop=leadership.stop,
            idle_in_transaction_timeout=self.options.config.renew_deadline,
            statement_timeout=self.options.statement_timeout,
            renew_term=leadership.renew_term,
            beacon=leadership.beacon,
        )
        self.term = Term(ctx=ctx, jobs=self.jobs, recovery=registry.recovery_passes(), grace=self.options.grace)
        logger.info("%s: leading %s, epoch %d", self.options.identity, self.elector.lock.describe(), leadership.epoch)
        if self._blocked_since is None:
            self._blocked_since = SYSTEM_CLOCK.monotonic()
        self.term.run()

    def _on_stopped_leading(self) -> None:
        thread = self.elector.term_thread
        if thread is not None:
            # Term.join already bounds the jobs by the grace period; a little more for its own exit.
            thread.join(self.options.grace + 1)
        term = self.term
        if (thread is not None and thread.is_alive()) or (term is not None and term.stuck):
            # Keep the lease until the process exits: a stuck job may still act outside the database.
            self.failed.set()
            self.elector.stop(release=False)
        logger.info("%s: stopped leading %s", self.options.identity, self.elector.lock.describe())

    def _on_new_leader(self, identity: str) -> None:
        if identity == self.options.identity:
            return
        logger.info("%s: %s is led by %s", self.options.identity, self.elector.lock.describe(), identity or "nobody")

"""Runs the registered jobs while this process leads: one thread per job, each tick fenced.

A term (one period of leadership, one epoch) goes: terminate sessions of older terms still
holding job locks, raise the fence to the epoch, close their abandoned JobRuns, run the recovery
passes once, then start one thread per job. Each thread loops ``while not stopping: tick();
wait(every)``, and a tick:
  1. does nothing unless ``is_leader()`` (a process woken from a pause never starts a tick; one
     stopped just after that check and refused by the fence on waking records nothing either);
  2. takes the job's advisory lock with ``pg_try_advisory_lock`` on the process's session-path
     connection (joblocks.py: the job's own connection may go through a transaction pooler); if
     another session holds it, the tick is recorded as ``skipped``;
  3. records a ``running`` JobRun inside ``tick.fenced()``, so a stale term cannot even start one;
  4. calls the job, whose writes go through ``tick.fenced()``; ``StaleEpoch`` ends it as ``fenced``.

Guarantees: while PostgreSQL keeps sessions alive, no two processes run the same job at once (the
advisory lock), and no tick of an older epoch commits a fenced write after a newer term began.
JobRun rows that are not ``skipped`` never overlap for one job; ``overlaps.overlapping_ticks``
counts violations. Does NOT: interrupt a job function that is running (it finishes its tick; its
writes are fenced), or schedule ticks exactly: intervals are measured from the start of each tick.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from django.db import close_old_connections, connection
from django.db.utils import Error as DatabaseError
from django.db.utils import OperationalError
from django.utils import timezone

from apps.coordination import metrics
from apps.coordination.clock import SYSTEM_CLOCK, Clock
from apps.coordination.fencing import BeaconLost, StaleEpoch, StaleTimeline, TermEnded, Tick, raise_epoch
from apps.coordination.joblocks import JobLocks, process_job_locks
from apps.coordination.lockkeys import Key, Namespace
from apps.coordination.models import JobRun
from apps.coordination.registry import JobFunc, JobSpec

logger = logging.getLogger(__name__)


@dataclass
class TermContext:
    lease: str
    holder: str
    epoch: int
    is_leader: Callable[[], bool]
    stop: threading.Event
    clock: Clock = SYSTEM_CLOCK
    # PostgreSQL ends a job session left idle inside a transaction this long (seconds): a leader
    # paused mid-transaction must not hold the fence row (and its job lock) against its successor.
    idle_in_transaction_timeout: float = 10.0
    # Asks the elector for a fresh term (a higher epoch) when this one cannot run jobs: the fence
    # is ahead of it, or the database failed over since it began.
    renew_term: Callable[[], None] = lambda: None
    # Every statement of a job or fence transaction is cancelled after this long (seconds).
    statement_timeout: float = 10.0
    locks: JobLocks = field(default_factory=process_job_locks)
    # The term's beacon (pid of its session, key), checked by every fenced transaction.
    beacon: tuple[int, Key] | None = None

    def tick(self, job: str) -> Tick:
        return Tick(
            job=job,
            holder=self.holder,
            lease=self.lease,
            epoch=self.epoch,
            statement_timeout=self.statement_timeout,
            idle_in_transaction_timeout=self.idle_in_transaction_timeout,
            beacon=self.beacon,
            stop=self.stop,
        )


def run_tick(spec: JobSpec, ctx: TermContext) -> str | None:
    """One tick of ``spec``; returns its outcome, or None when it was not even attempted."""
    if not connection.in_atomic_block:  # never drop a connection under a caller's transaction
        close_old_connections()
    if not ctx.is_leader() or ctx.stop.is_set():
        return None
    tick = ctx.tick(spec.name)
    started = time.perf_counter()
    try:
        # The tick's timeouts are SET LOCAL in each of its fenced transactions (fencing.py): nothing
        # session-level, which a transaction pooler would leak to its other clients.
        outcome = _locked_tick(spec, tick, ctx)
    except DatabaseError as exc:
        # The database went away mid-tick: nothing to record it in; the next tick retries.
        logger.warning("job %s: database error: %s", spec.name, exc)
        connection.close()
        outcome = JobRun.Outcome.ERROR
    if outcome is not None:
        metrics.observe_tick(spec.name, outcome, time.perf_counter() - started)
    return outcome


def _locked_tick(spec: JobSpec, tick: Tick, ctx: TermContext) -> str | None:
    try:
        acquired = ctx.locks.try_lock(spec.lock_key)
    except psycopg.Error as exc:
        raise OperationalError("job lock: %s" % exc) from exc
    if not acquired:
        # Another session is running this job (a previous leader finishing its tick): skip.
        _record(tick, JobRun.Outcome.SKIPPED, error="advisory lock held by another session")
        return JobRun.Outcome.SKIPPED
    try:
        return _tick_under_lock(spec, tick, ctx)
    finally:
        ctx.locks.unlock(spec.lock_key)


def _tick_under_lock(spec: JobSpec, tick: Tick, ctx: TermContext) -> str | None:
    if not ctx.is_leader():
        return None
    try:
        with tick.fenced():
            run = JobRun.objects.create(job=tick.job, holder=tick.holder, epoch=tick.epoch, started_at=timezone.now())
    except BeaconLost:
        # A standby may lead already: this tick was never attempted (no row, like not leading).
        ctx.renew_term()
        return None
    except TermEnded:
        return None
    except StaleEpoch as exc:
        if not ctx.is_leader():
            # Stopped between the leader check and this first write, and woken past the lease: the
            # fence refused the tick before it began. Like not leading: no row (one stamped now
            # would read as a tick inside the successor's).
            logger.info("job %s (epoch %d): refused by the fence after the lease passed: %s", tick.job, tick.epoch, exc)
            return None
        _fenced_out(exc, ctx)
        _record(tick, JobRun.Outcome.FENCED, error=str(exc))
        return JobRun.Outcome.FENCED
    outcome, error = JobRun.Outcome.OK, ""
    try:
        spec.func(tick)
    except TermEnded:
        # Between two batches: what it committed stands, the rest is the next tick's.
        error = "stopped early: the term ended"
    except StaleEpoch as exc:
        _fenced_out(exc, ctx)
        outcome, error = JobRun.Outcome.FENCED, str(exc)
        logger.warning("job %s (epoch %d) fenced: %s", tick.job, tick.epoch, exc)
    except Exception as exc:
        outcome, error = JobRun.Outcome.ERROR, "%s: %s" % (type(exc).__name__, exc)
        logger.exception("job %s (epoch %d) failed", tick.job, tick.epoch)
    # Compare-and-set: a successor that found this run abandoned has already closed it (with an
    # end before its own first tick); a holder waking from a pause must not move that end.
    JobRun.objects.filter(pk=run.pk, outcome=JobRun.Outcome.RUNNING).update(
        finished_at=timezone.now(), outcome=outcome, error=error[:4000]
    )
    return outcome


def _fenced_out(exc: StaleEpoch, ctx: TermContext) -> None:
    if ctx.is_leader():
        # Fenced out while we still hold the lease: the database was promoted since this term
        # began (StaleTimeline), or someone raised the fence past us (another installation on
        # this database, a restore). Only a new term, raised above the fence on the current
        # timeline, can write again; if someone else really took over, our renew finds out.
        level = logging.WARNING if isinstance(exc, StaleTimeline) else logging.ERROR
        logger.log(level, "%s: %s; asking for a new term", ctx.holder, exc)
        ctx.renew_term()


def _record(tick: Tick, outcome: str, *, error: str) -> None:
    now = timezone.now()
    JobRun.objects.create(
        job=tick.job,
        holder=tick.holder,
        epoch=tick.epoch,
        started_at=now,
        finished_at=now,
        outcome=outcome,
        error=error,
    )


def job_loop(spec: JobSpec, ctx: TermContext) -> None:
    """The thread of one job for one term: ``while not stopping: tick; wait(every)``."""
    try:
        while not ctx.stop.is_set():
            began = ctx.clock.monotonic()
            run_tick(spec, ctx)
            ctx.clock.wait(ctx.stop, began + spec.every - ctx.clock.monotonic())
    finally:
        connection.close()


def run_recovery(passes: list[JobFunc], ctx: TermContext) -> None:
    for func in passes:
        if ctx.stop.is_set() or not ctx.is_leader():
            return
        tick = ctx.tick("recovery:%s" % getattr(func, "__name__", "pass"))
        try:
            func(tick)
        except TermEnded:
            return
        except StaleEpoch as exc:
            logger.warning("recovery pass %s fenced: %s", tick.job, exc)
            return
        except Exception:
            logger.exception("recovery pass %s failed", tick.job)


@dataclass
class Term:
    """One term of leadership: fence, recovery, job threads; ``run`` returns when they stopped."""

    ctx: TermContext
    jobs: list[JobSpec]
    recovery: list[JobFunc]
    grace: float
    threads: list[threading.Thread] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    # True once the fence is raised and the jobs are started; False for a term that cannot run.
    jobs_started: bool = False

    def run(self) -> None:
        ctx = self.ctx
        try:
            evict_stale_job_holders(ctx)
            fenced_in = raise_fence(ctx)
            if fenced_in is None:
                return  # stopped or no longer leading before the fence could be raised
            if not fenced_in:
                # A fence ahead of the Lease (restored namespace, a re-applied manifest, another
                # installation on this database) or a failover under us: ask for a fresh term,
                # whose epoch the elector takes above the fence.
                logger.error(
                    "%s: fence of %s is ahead of epoch %d; running no jobs, asking for a new term",
                    ctx.holder,
                    ctx.lease,
                    ctx.epoch,
                )
                ctx.renew_term()
                return
            close_abandoned_runs(ctx)
            run_recovery(self.recovery, ctx)
            for spec in self.jobs:
                if ctx.stop.is_set():
                    break
                thread = threading.Thread(target=job_loop, args=(spec, ctx), name="job:%s" % spec.name, daemon=True)
                thread.start()
                self.threads.append(thread)
            self.jobs_started = True
            ctx.stop.wait()
            self.join()
        except (TermEnded, BeaconLost):
            return  # the term ended (or lost its beacon) before its jobs started: nothing to run
        finally:
            connection.close()
            if not self.stuck:
                ctx.locks.close()  # the term's job locks end with their session

    def join(self) -> None:
        deadline = time.monotonic() + self.grace
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.stuck = [thread.name for thread in self.threads if thread.is_alive()]
        if self.stuck:
            logger.error(
                "%s: jobs still running %.1fs after the term ended: %s", self.ctx.holder, self.grace, self.stuck
            )


def raise_fence(ctx: TermContext) -> bool | None:
    """Raise the fence to this term's epoch; None when the term ended before it could.

    Retried while leading: the statement is bounded (statement_timeout), and the fence row may be
    held FOR SHARE by a tick of the previous term that is still finishing, or the database may be
    away for a moment; a term must not give up its jobs for that.
    """
    while not ctx.stop.is_set() and ctx.is_leader():
        try:
            return raise_epoch(
                name=ctx.lease, epoch=ctx.epoch, holder=ctx.holder, statement_timeout=ctx.statement_timeout
            )
        except DatabaseError as exc:
            logger.warning("%s: cannot raise the fence of %s to %d yet: %s", ctx.holder, ctx.lease, ctx.epoch, exc)
            connection.close()
            ctx.clock.wait(ctx.stop, 0.5)
    return None


def evict_stale_job_holders(ctx: TermContext) -> int:
    """Terminate other sessions holding job locks: they belong to a previous term.

    A leader frozen (SIGSTOP, VM pause) between two statements of a tick holds its job's advisory
    lock on a session that is idle, not idle-in-transaction, so no server timeout frees it; every
    tick of that job would be skipped until it woke. None of this term's jobs has started yet, so
    any holder is stale, and its writes are fenced anyway. Without the privilege to signal those
    sessions (same role or pg_signal_backend), the jobs are skipped until the old holder wakes.
    """
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT l.pid, a.application_name, pg_terminate_backend(l.pid) FROM pg_locks l"
                " JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objsubid = 2 AND l.granted"
                " AND l.pid <> pg_backend_pid() AND l.pid IS DISTINCT FROM %s"
                " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                [int(Namespace.JOB), ctx.locks.backend_pid],
            )
            evicted = cursor.fetchall()
    except DatabaseError as exc:
        logger.warning("%s: cannot evict stale holders of job locks: %s", ctx.holder, exc)
        return 0
    for pid, application_name, _ in evicted:
        logger.warning(
            "%s: terminated session %s (%s) holding a job lock of an older term", ctx.holder, pid, application_name
        )
    return len(evicted)


def close_abandoned_runs(ctx: TermContext) -> int:
    """End the ``running`` JobRuns of older terms: their process died or was fenced out.

    Called after the fence was raised and before any job starts, so the end time it writes is
    before every tick of this term. A paused old holder that wakes overwrites it with its own end.
    """
    with ctx.tick("recovery:jobruns").fenced():
        return JobRun.objects.filter(outcome=JobRun.Outcome.RUNNING, epoch__lt=ctx.epoch).update(
            outcome=JobRun.Outcome.ERROR, finished_at=timezone.now(), error="abandoned: its holder lost the lease"
        )

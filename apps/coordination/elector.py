"""Leader election with client-go's semantics (k8s.io/client-go/tools/leaderelection).

Candidates read the lease record and try to write themselves into it by compare-and-set. A
standby judges expiry by its OWN monotonic clock: the lease is expired when LeaseDuration has
passed since this process last saw the record change, never by comparing the record's timestamps
with the local wall clock (clocks of different machines disagree; a monotonic interval does not).
Every term has a fencing epoch, written into the record: strictly above the previous term's and
above ``epoch_floor()`` (the fence, and the database's timeline, see fencing.py), so a Lease
recreated with fewer transitions or a database promoted from a lagging standby never hands out an
epoch twice. The leader renews every RetryPeriod and gives up when its last successful renew is
RenewDeadline old.

Guarantees:
- ``is_leader()`` is true only while the last successful acquire/renew STARTED less than
  RenewDeadline ago by the monotonic clock. Others wait LeaseDuration (> RenewDeadline) from when
  they saw that write, which was after it started, so the two never overlap while clocks tick at
  the same rate. A process woken from SIGSTOP, a GC pause or a VM freeze is not leader the instant
  it wakes, before any code of it talks to the backend.
- Each term has a distinct, increasing epoch: a process that lost its lease and takes it again,
  even unchanged, starts a new term (client-go keeps the count when the holder is the same; we do
  not, so that fencing can tell the terms apart).
- A leader recognises its own term's record by holder and epoch, not only by the version it last
  wrote: a renew the server applied but whose answer was lost, or a label someone added, does not
  end the term. A record written by anyone else, even under our identity (a misconfigured twin:
  its term has another epoch), ends our term.
- After a failed attempt (error, not a lost race) the next one waits a full jittered RetryPeriod,
  as client-go does: an API server that is down, throttling or forbidding us sees about one
  request per RetryPeriod per candidate, never a hot loop.
- Standbys wake on the backend's change notifications (NOTIFY, watch) and wait at most until the
  observed lease expires, so a released lease is taken at once and a crashed leader's lease within
  a moment of LeaseDuration. With a beacon (beacon.py) a standby takes over as soon as the session
  that lit the observed term's beacon ends: a leader whose process died is replaced in well under
  a second. ``client_go_polling=True`` turns all of this off (the benchmark's reference).
- Early takeover by beacon is safe without trusting it: the old term's fenced transactions check
  their beacon session in the database (fencing.py), and a leader that sees its own beacon end
  stops counting itself leader at once and asks for a fresh term.
Does NOT:
- stop jobs by itself: ``on_stopped_leading`` must, and ``is_leader()`` must be checked before work;
- protect against clocks running at different RATES, or writes that bypass fencing;
- call ``sys.exit``: losing leadership returns to candidacy, the caller decides about the process.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from apps.coordination.beacon import Beacon, BeaconWatch
from apps.coordination.clock import SYSTEM_CLOCK, Clock
from apps.coordination.leaselock.base import Conflict, LeaderElectionRecord, LeaseLock, LockError, Observed
from apps.coordination.lockkeys import Key

logger = logging.getLogger(__name__)

JITTER_FACTOR = 1.2  # client-go's: a retry waits RetryPeriod x (1 + rand x 1.2)
BACKENDS = ("auto", "kubernetes", "postgres")


class ConfigError(ValueError):
    pass


def timing_errors(*, lease_duration: float, renew_deadline: float, retry_period: float) -> dict[str, str]:
    """Why these timings are unsafe, by rule ("positive", "deadline", "retry"); empty when fine.

    The one validation: ``ElectionConfig`` raises on it, the system checks report it.
    """
    if min(lease_duration, renew_deadline, retry_period) <= 0:
        return {"positive": "lease duration, renew deadline and retry period must be positive"}
    errors = {}
    if lease_duration <= renew_deadline:
        errors["deadline"] = "lease duration (%ss) must be longer than renew deadline (%ss)" % (
            lease_duration,
            renew_deadline,
        )
    if renew_deadline <= JITTER_FACTOR * retry_period:
        errors["retry"] = "renew deadline (%ss) must be longer than %s x retry period (%ss)" % (
            renew_deadline,
            JITTER_FACTOR,
            retry_period,
        )
    return errors


@dataclass(frozen=True)
class ElectionConfig:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    # Reference behaviour for the benchmark: no wake-ups on change, no wait bounded by expiry.
    client_go_polling: bool = False

    def __post_init__(self) -> None:
        errors = timing_errors(
            lease_duration=self.lease_duration, renew_deadline=self.renew_deadline, retry_period=self.retry_period
        )
        if errors:
            raise ConfigError("; ".join(errors.values()))

    @property
    def lease_duration_seconds(self) -> int:
        # The record carries whole seconds (as in Kubernetes); round up so no reader expires early.
        return max(1, -int(-self.lease_duration // 1))

    @property
    def unhealthy_after(self) -> float:
        # How long every attempt may fail with a permanent error (403, 401, 400, 422) before
        # /healthz fails: 60 s at the defaults, four leases' worth of retries.
        return 4 * self.lease_duration


def _noop(*args: object) -> None:
    return None


@dataclass(frozen=True)
class Leadership:
    """What a term's leading callback gets: its epoch, the event set when it ends, and a way to
    ask for a fresh term (a higher epoch) when this one cannot run its jobs."""

    epoch: int
    stop: threading.Event
    renew_term: Callable[[], None]
    # (backend pid of the beacon session, beacon key) while this term's beacon is lit, else None.
    beacon: tuple[int, Key] | None = None


@dataclass
class Callbacks:
    # Called in a thread of its own when a term starts; ``leadership.stop`` is set when it ends.
    on_started_leading: Callable[[Leadership], None] = _noop
    # Called in the elector's thread when a term ends, before any release: it must stop the jobs.
    on_stopped_leading: Callable[[], None] = _noop
    # Called in the elector's thread whenever the observed holder changes ("" = nobody).
    on_new_leader: Callable[[str], None] = _noop


@dataclass
class ElectorState:
    """What the elector last saw, for metrics, health and clusterstatus."""

    observed: Observed | None = None
    observed_at: float | None = None
    leading: bool = False
    epoch: int | None = None
    last_renew: float | None = None
    transitions_seen: int = 0
    terms: int = 0
    reported_holder: str | None = field(default=None)
    # The last failed attempt (None once one succeeds), and since when attempts keep failing.
    last_error: LockError | None = None
    failing_since: float | None = None


def record_epoch(record: LeaderElectionRecord) -> int:
    """The epoch of the term that wrote ``record``; leaseTransitions for records without one."""
    return record.epoch if record.epoch is not None else record.lease_transitions


class LeaderElector:
    def __init__(
        self,
        *,
        lock: LeaseLock,
        identity: str,
        config: ElectionConfig,
        callbacks: Callbacks | None = None,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        epoch_floor: Callable[[], int] = lambda: 0,
        beacon: Beacon | None = None,
        beacon_watch: BeaconWatch | None = None,
    ) -> None:
        if not identity:
            raise ConfigError("the elector needs a non-empty identity")
        self.lock = lock
        self.identity = identity
        self.config = config
        self.callbacks = callbacks or Callbacks()
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrecy
        # The lowest epoch a new term may take (the fence + 1, the timeline's base): a Lease
        # recreated from nothing or with fewer transitions must not hand out a fenced-out epoch.
        self.epoch_floor = epoch_floor
        self.state = ElectorState()
        self._written_version: str | None = None
        # The epoch of an acquiring write that got no answer: if it landed, it is ours.
        self._unanswered_epoch: int | None = None
        self._failed = False
        self._renew_term = threading.Event()
        self._stop = threading.Event()
        self._lead_wake = threading.Event()  # stop() or request_new_term(): a leader acts at once
        self._release_on_stop = True
        self._wake = threading.Event()
        self._term_stop: threading.Event | None = None
        self._term_thread: threading.Thread | None = None
        self.beacon = beacon
        self.beacon_watch = beacon_watch
        if beacon is not None:
            beacon.on_lost = self._beacon_lost
        if beacon_watch is not None:
            beacon_watch.on_ended = self._beacon_ended
        self._beacon_pids: dict[int, int] = {}  # epoch -> pid of the session holding its beacon
        self._lost_beacon_epoch: int | None = None
        self._ended_beacon_epoch: int | None = None

    # ---- observation -------------------------------------------------------------------------

    def is_leader(self) -> bool:
        return self._renewed_in_time() and self._lost_beacon_epoch != self.state.epoch

    def _renewed_in_time(self) -> bool:
        last = self.state.last_renew
        return self.state.leading and last is not None and self.clock.monotonic() - last < self.config.renew_deadline

    def renew_age(self) -> float | None:
        last = self.state.last_renew
        return None if last is None else self.clock.monotonic() - last

    @property
    def epoch(self) -> int | None:
        return self.state.epoch if self.state.leading else None

    def holder(self) -> str:
        observed = self.state.observed
        return observed.record.holder_identity if observed else ""

    def failing_for(self) -> float:
        """Seconds every attempt has failed (0 while they succeed)."""
        since = self.state.failing_since
        return 0.0 if since is None else self.clock.monotonic() - since

    # ---- one attempt -------------------------------------------------------------------------

    def try_acquire_or_renew(self) -> bool:
        """One round of client-go's tryAcquireOrRenew; True when we hold the lease afterwards."""
        try:
            return self._attempt()
        except LockError as exc:
            self._failure(exc)
            return False

    def _attempt(self) -> bool:
        started = self.clock.monotonic()
        now = self.clock.now()
        timeout = self._request_timeout(started)
        current = self._call("read", lambda: self.lock.get(timeout=timeout))

        if current is None:
            epoch = self._new_epoch(None)
            record = LeaderElectionRecord(
                holder_identity=self.identity,
                lease_duration_seconds=self.config.lease_duration_seconds,
                acquire_time=now,
                renew_time=now,
                lease_transitions=0,
                epoch=epoch,
            )
            self._light(epoch)
            written = self._write("create", epoch, lambda: self.lock.create(record, timeout=timeout))
            self._wrote(written, started, new_term=True)
            return True

        self._observe(current)
        ours = self._is_ours(current)
        if not ours and self.state.leading:
            # Someone else wrote the record since our last write: our term is over, whatever it says.
            if current.record.holder_identity == self.identity:
                logger.error("%s: another process wrote %s under our identity", self.identity, self.lock.describe())
            self.state.leading = False
            self._succeeded()
            return False
        old = current.record
        if not ours and not self.state.leading:
            # An acquiring write whose answer was lost did not land (the record is not ours): its
            # beacon must not stay lit, or it would sit in pg_locks for as long as we are standby.
            self._unanswered_epoch = None
            for epoch in list(self._beacon_pids):
                self._put_out(epoch)
        if not ours and old.holder_identity and not self._observed_expired():
            self._succeeded()
            return False

        successor = ours and self._renew_term.is_set()
        if ours and not successor:
            record = LeaderElectionRecord(
                holder_identity=self.identity,
                lease_duration_seconds=self.config.lease_duration_seconds,
                acquire_time=old.acquire_time,
                renew_time=now,
                lease_transitions=old.lease_transitions,
                epoch=record_epoch(old),
            )
        else:
            record = LeaderElectionRecord(
                holder_identity=self.identity,
                lease_duration_seconds=self.config.lease_duration_seconds,
                acquire_time=now,
                renew_time=now,
                lease_transitions=old.lease_transitions + 1,
                epoch=self._new_epoch(old),
            )
        version = current.resource_version
        new_epoch = record.epoch if not ours or successor else None
        if new_epoch is not None:
            self._light(new_epoch)  # before the write: no standby may see the term unlit
        written = self._write(
            "update", new_epoch, lambda: self.lock.update(record, resource_version=version, timeout=timeout)
        )
        if successor:
            self._renew_term.clear()
        self._wrote(written, started, new_term=successor or not self.state.leading)
        return True

    def release(self) -> bool:
        """Hand the lease back (empty holder) so a standby takes it without waiting for expiry."""
        observed = self.state.observed
        if observed is None or observed.resource_version != self._written_version:
            return False
        now = self.clock.now()
        record = LeaderElectionRecord(
            holder_identity="",
            lease_duration_seconds=1,
            acquire_time=now,
            renew_time=now,
            lease_transitions=observed.record.lease_transitions,
            epoch=record_epoch(observed.record),  # kept: the next term must go above it
        )
        self.state.leading = False
        try:
            written = self.lock.update(
                record, resource_version=observed.resource_version, timeout=self.config.retry_period
            )
        except LockError as exc:
            logger.warning("%s: releasing %s failed: %s", self.identity, self.lock.describe(), exc)
            return False
        self._written_version = None
        self._observe(written)
        logger.info("%s: released %s", self.identity, self.lock.describe())
        return True

    def request_new_term(self) -> None:
        """End the current term and start the next one in place, with a fresh (higher) epoch."""
        self._renew_term.set()
        self._lead_wake.set()
        self._wake.set()

    # ---- loops -------------------------------------------------------------------------------

    def stop(self, *, release: bool = True) -> None:
        """Ask ``run`` to end: it stops the term (on_stopped_leading), releases, and returns."""
        self._release_on_stop = self._release_on_stop and release
        self._stop.set()
        self._lead_wake.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Campaign, lead, and campaign again after a lost term, until ``stop()``."""
        if not self.config.client_go_polling:
            self.lock.watch(self._wake.set)
        try:
            while not self._stop.is_set():
                if self.acquire_step():
                    self.lead()
                else:
                    self.clock.wait(self._wake, self.standby_wait())
        finally:
            self.lock.close()
            if self.beacon_watch is not None:
                self.beacon_watch.close()
            if self.beacon is not None:
                self.beacon.close()

    def acquire_step(self) -> bool:
        self._wake.clear()  # before reading, so a change announced during the attempt is not lost
        return self.try_acquire_or_renew()

    def standby_wait(self) -> float:
        retry = self.config.retry_period
        wait = retry * (1 + self.rng.random() * JITTER_FACTOR)
        if self._beacon_ended_for_observed():
            return 0.0
        if self.config.client_go_polling or self._failed:
            # After a failure, a full jittered RetryPeriod: an expired lease we cannot write must
            # not turn into a hot loop against a server that is down, throttling or forbidding us.
            return wait
        observed, at = self.state.observed, self.state.observed_at
        if observed is not None and at is not None and observed.record.holder_identity:
            until_expiry = at + observed.record.lease_duration_seconds - self.clock.monotonic()
            # A little jitter past expiry keeps several standbys from colliding on the same instant.
            wait = min(wait, max(0.0, until_expiry) + self.rng.random() * min(0.05, retry / 10))
        return wait

    def lead(self) -> None:
        """Run one term: start the leading callback, renew until lost or stopped, end the term."""
        self._start_term()
        try:
            while not self._stop.is_set():
                if not self.renew_step():
                    break
        finally:
            self._end_term()

    def renew_step(self) -> bool:
        """Wait one RetryPeriod and renew; False when the term is over."""
        last = self.state.last_renew or self.clock.monotonic()
        self._lead_wake.clear()
        if not self._renew_term.is_set():
            self.clock.wait(self._lead_wake, last + self.config.retry_period - self.clock.monotonic())
        if self._stop.is_set():
            return False
        if self._renew_term.is_set():
            # The term cannot run its jobs: end it (jobs stop), then acquire_step starts the next.
            logger.warning("%s: ending this term of %s for a fresh epoch", self.identity, self.lock.describe())
            return False
        while True:
            if self.try_acquire_or_renew():
                return True
            if not self.state.leading or not self.is_leader():
                logger.warning(
                    "%s: lost %s (renew age %.2fs)", self.identity, self.lock.describe(), self.renew_age() or 0.0
                )
                return False
            # Retry until RenewDeadline since the last success, never past it.
            remaining = (self.state.last_renew or 0.0) + self.config.renew_deadline - self.clock.monotonic()
            if self.clock.wait(self._stop, min(self.config.retry_period, max(0.0, remaining))):
                return False

    # ---- internals ---------------------------------------------------------------------------

    def _request_timeout(self, started: float) -> float:
        # Every backend call is bounded below RenewDeadline; a leader's by what is left of it.
        timeout = min(self.config.retry_period, self.config.renew_deadline / 2)
        if self.state.leading and self.state.last_renew is not None:
            left = self.state.last_renew + self.config.renew_deadline - started
            timeout = min(timeout, max(0.05, left))
        return timeout

    def _call(self, action: str, call: Callable[[], Observed | None]) -> Observed | None:
        try:
            return call()
        except LockError:
            raise
        except Exception as exc:  # a backend bug must cost one attempt, not the elector thread
            raise LockError("%s: %s: %s" % (self.lock.describe(), action, exc)) from exc

    def _write(self, action: str, epoch: int | None, call: Callable[[], Observed]) -> Observed:
        try:
            written = self._call(action, call)
        except Conflict:
            if epoch is not None:
                self._put_out(epoch)  # lost the race: that term is someone else's
            raise
        except LockError as exc:
            if epoch is not None and exc.applied_unknown:
                # The server may have applied it: the next read decides by holder and epoch.
                self._unanswered_epoch = epoch
            elif epoch is not None:
                self._put_out(epoch)
            raise
        assert written is not None
        self._unanswered_epoch = None
        return written

    def _new_epoch(self, old: LeaderElectionRecord | None) -> int:
        try:
            floor = self.epoch_floor()
        except Exception as exc:
            # Without the floor a new term could reuse a fenced-out epoch: do not start one.
            raise LockError("cannot read the epoch floor: %s" % exc, reason="EpochFloorUnavailable") from exc
        return max(floor, 0 if old is None else record_epoch(old) + 1)

    def _is_ours(self, current: Observed) -> bool:
        if current.resource_version == self._written_version:
            return True
        record = current.record
        if record.holder_identity != self.identity or record.epoch is None:
            return False
        # Our term's record at a version we did not see come back: our own renew whose answer was
        # lost, or someone else's metadata-only change (kubectl label). A twin has its own epoch.
        if self.state.leading and record.epoch == self.state.epoch:
            return True
        return record.epoch == self._unanswered_epoch

    def _failure(self, exc: LockError) -> None:
        self._failed = True
        if self.state.failing_since is None:
            self.state.failing_since = self.clock.monotonic()
        self.state.last_error = exc
        if isinstance(exc, Conflict):
            logger.info("%s: lost the race for %s: %s", self.identity, self.lock.describe(), exc)
        elif exc.transient:
            logger.warning("%s: %s", self.identity, exc)
        else:
            logger.error("%s: %s", self.identity, exc)

    def _succeeded(self) -> None:
        self._failed = False
        self.state.failing_since = None
        self.state.last_error = None

    def _observe(self, current: Observed) -> None:
        previous = self.state.observed
        # The expiry clock restarts when the RECORD changes (client-go compares the record, not
        # the resourceVersion): a label added by hand does not keep a dead leader's lease alive.
        if previous is None or previous.record != current.record:
            self.state.observed_at = self.clock.monotonic()
            if previous is not None and previous.record.lease_transitions != current.record.lease_transitions:
                self.state.transitions_seen += 1
        self.state.observed = current
        self._watch_beacon()
        holder = current.record.holder_identity
        if holder != self.state.reported_holder:
            self.state.reported_holder = holder
            self.callbacks.on_new_leader(holder)

    def _observed_expired(self) -> bool:
        observed, at = self.state.observed, self.state.observed_at
        if observed is None or at is None:
            return False
        if self._beacon_ended_for_observed():
            return True  # its leader's session is gone: no need to wait for the lease to run out
        return self.clock.monotonic() >= at + observed.record.lease_duration_seconds

    # ---- the beacon ----------------------------------------------------------------------------

    def _light(self, epoch: int) -> None:
        if self.beacon is None or epoch in self._beacon_pids:
            return
        pid = self.beacon.hold(epoch)
        if pid is not None:
            self._beacon_pids[epoch] = pid

    def _put_out(self, epoch: int) -> None:
        if self.beacon is not None and self._beacon_pids.pop(epoch, None) is not None:
            self.beacon.drop(epoch)

    def _beacon_of(self, epoch: int) -> tuple[int, Key] | None:
        pid = self._beacon_pids.get(epoch)
        key = self.beacon.key(epoch) if self.beacon is not None else None
        return (pid, key) if pid is not None and key is not None else None

    def _beacon_lost(self) -> None:
        """Called from the beacon's thread when its session ended while it held a beacon."""
        epoch = self.state.epoch
        self._beacon_pids.clear()
        if self.state.leading and epoch is not None:
            logger.warning("%s: the beacon of epoch %d ended; stopping this term", self.identity, epoch)
            self._lost_beacon_epoch = epoch  # is_leader() is False from now on for this term
            self.request_new_term()

    def _beacon_ended(self, epoch: int) -> None:
        """Called from the watch's thread: the session that lit ``epoch``'s beacon has ended."""
        self._ended_beacon_epoch = epoch
        self._wake.set()

    def _beacon_ended_for_observed(self) -> bool:
        observed = self.state.observed
        return (
            observed is not None
            and bool(observed.record.holder_identity)
            and observed.record.holder_identity != self.identity
            and observed.record.epoch is not None
            and observed.record.epoch == self._ended_beacon_epoch
        )

    def _watch_beacon(self) -> None:
        if self.beacon_watch is None or self.config.client_go_polling:
            return
        observed = self.state.observed
        record = observed.record if observed is not None else None
        if record is None or not record.holder_identity or record.holder_identity == self.identity:
            self.beacon_watch.arm(None)
        else:
            self.beacon_watch.arm(None if record.epoch is None else (record.epoch, record.holder_identity))

    def _wrote(self, written: Observed, started: float, *, new_term: bool) -> None:
        self._succeeded()
        self._written_version = written.resource_version
        self._unanswered_epoch = None
        self._observe(written)
        self.state.last_renew = started
        if new_term:
            self.state.leading = True
            self.state.epoch = record_epoch(written.record)
            self.state.terms += 1
            self._renew_term.clear()
            self._lost_beacon_epoch = None
            for epoch in [e for e in self._beacon_pids if e != self.state.epoch]:
                self._put_out(epoch)  # the previous term's (a successor term written in place)
            logger.info("%s: acquired %s, epoch %d", self.identity, self.lock.describe(), self.state.epoch)

    def _start_term(self) -> None:
        self._term_stop = threading.Event()
        epoch = self.state.epoch
        assert epoch is not None
        leadership = Leadership(
            epoch=epoch, stop=self._term_stop, renew_term=self.request_new_term, beacon=self._beacon_of(epoch)
        )
        self._term_thread = threading.Thread(
            target=self.callbacks.on_started_leading, args=(leadership,), name="leading", daemon=True
        )
        self._term_thread.start()

    def _end_term(self) -> None:
        successor = self._renew_term.is_set() and self._renewed_in_time()
        ended = self.state.epoch
        self.state.leading = False
        if self._term_stop is not None:
            self._term_stop.set()
        self.callbacks.on_stopped_leading()
        if self._stop.is_set() and self._release_on_stop:
            self.release()
        if ended is not None and not (successor and not self._stop.is_set()):
            # Jobs have stopped: standbys may take over at once. (A successor term keeps it lit
            # until its own is written, so no standby jumps in between.)
            self._put_out(ended)
        if successor and not self._stop.is_set():
            # We still hold the lease: the next acquire_step writes the successor term over our
            # own version, without waiting for anyone's expiry.
            return
        self._renew_term.clear()
        # A new term needs a fresh acquisition: our old record now expires for us as for anyone.
        self._written_version = None

    @property
    def term_thread(self) -> threading.Thread | None:
        """The thread running ``on_started_leading`` for the current or last term."""
        return self._term_thread

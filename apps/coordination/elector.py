"""Leader election with client-go's semantics (k8s.io/client-go/tools/leaderelection).

Candidates read the lease record and try to write themselves into it by compare-and-set. A
standby judges expiry by its OWN monotonic clock: the lease is expired when LeaseDuration has
passed since this process last saw the record change, never by comparing the record's timestamps
with the local wall clock (clocks of different machines disagree; a monotonic interval does not).
Every change of holder increments leaseTransitions, which is the term's fencing epoch. The leader
renews every RetryPeriod and gives up when its last successful renew is RenewDeadline old.

Guarantees:
- ``is_leader()`` is true only while the last successful acquire/renew STARTED less than
  RenewDeadline ago by the monotonic clock. Others wait LeaseDuration (> RenewDeadline) from when
  they saw that write, which was after it started, so the two never overlap while clocks tick at
  the same rate. A process woken from SIGSTOP, a GC pause or a VM freeze is not leader the instant
  it wakes, before any code of it talks to the backend.
- Each term has a distinct, increasing epoch: a process that lost its lease and takes it again,
  even unchanged, starts a new term (client-go keeps the count when the holder is the same; we do
  not, so that fencing can tell the terms apart).
- A record written by anyone else, even under our identity (a misconfigured twin), ends our term.
- Standbys wake on the backend's change notifications (NOTIFY, watch) and wait at most until the
  observed lease expires, so a released lease is taken at once and a crashed leader's lease within
  a moment of LeaseDuration. ``client_go_polling=True`` turns both off (the benchmark's reference).
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

from apps.coordination.clock import SYSTEM_CLOCK, Clock
from apps.coordination.leaselock.base import Conflict, LeaderElectionRecord, LeaseLock, LockError, Observed

logger = logging.getLogger(__name__)

JITTER_FACTOR = 1.2  # client-go's: a retry waits RetryPeriod x (1 + rand x 1.2)


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ElectionConfig:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    # Reference behaviour for the benchmark: no wake-ups on change, no wait bounded by expiry.
    client_go_polling: bool = False

    def __post_init__(self) -> None:
        if min(self.lease_duration, self.renew_deadline, self.retry_period) <= 0:
            raise ConfigError("lease duration, renew deadline and retry period must be positive")
        if self.lease_duration <= self.renew_deadline:
            raise ConfigError(
                "lease duration (%ss) must be longer than renew deadline (%ss)"
                % (self.lease_duration, self.renew_deadline)
            )
        if self.renew_deadline <= JITTER_FACTOR * self.retry_period:
            raise ConfigError(
                "renew deadline (%ss) must be longer than %s x retry period (%ss)"
                % (self.renew_deadline, JITTER_FACTOR, self.retry_period)
            )

    @property
    def lease_duration_seconds(self) -> int:
        # The record carries whole seconds (as in Kubernetes); round up so no reader expires early.
        return max(1, -int(-self.lease_duration // 1))


def _noop(*args: object) -> None:
    return None


@dataclass
class Callbacks:
    # Called in a thread of its own when a term starts; the event is set when the term ends.
    on_started_leading: Callable[[threading.Event], None] = _noop
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
        initial_transitions: Callable[[], int] = lambda: 0,
    ) -> None:
        if not identity:
            raise ConfigError("the elector needs a non-empty identity")
        self.lock = lock
        self.identity = identity
        self.config = config
        self.callbacks = callbacks or Callbacks()
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrecy
        # Transitions for a lease created from nothing: lets fencing survive a deleted lease.
        self.initial_transitions = initial_transitions
        self.state = ElectorState()
        self._written_version: str | None = None
        self._stop = threading.Event()
        self._release_on_stop = True
        self._wake = threading.Event()
        self._term_stop: threading.Event | None = None
        self._term_thread: threading.Thread | None = None

    # ---- observation -------------------------------------------------------------------------

    def is_leader(self) -> bool:
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

    # ---- one attempt -------------------------------------------------------------------------

    def try_acquire_or_renew(self) -> bool:
        """One round of client-go's tryAcquireOrRenew; True when we hold the lease afterwards."""
        started = self.clock.monotonic()
        now = self.clock.now()
        timeout = self._request_timeout(started)
        try:
            current = self.lock.get(timeout=timeout)
        except LockError as exc:
            logger.warning("%s: cannot read %s: %s", self.identity, self.lock.describe(), exc)
            return False

        if current is None:
            record = LeaderElectionRecord(
                holder_identity=self.identity,
                lease_duration_seconds=self.config.lease_duration_seconds,
                acquire_time=now,
                renew_time=now,
                lease_transitions=self.initial_transitions(),
            )
            try:
                written = self.lock.create(record, timeout=timeout)
            except LockError as exc:
                logger.info("%s: creating %s failed: %s", self.identity, self.lock.describe(), exc)
                return False
            self._wrote(written, started, new_term=True)
            return True

        self._observe(current)
        mine = current.resource_version == self._written_version
        if not mine and self.state.leading:
            # Someone else wrote the record since our last write: our term is over, whatever it says.
            if current.record.holder_identity == self.identity:
                logger.error("%s: another process wrote %s under our identity", self.identity, self.lock.describe())
            self.state.leading = False
            return False
        old = current.record
        if not mine and old.holder_identity and not self._observed_expired():
            return False

        renewing = mine
        record = LeaderElectionRecord(
            holder_identity=self.identity,
            lease_duration_seconds=self.config.lease_duration_seconds,
            acquire_time=old.acquire_time if renewing else now,
            renew_time=now,
            lease_transitions=old.lease_transitions if renewing else old.lease_transitions + 1,
        )
        try:
            written = self.lock.update(record, resource_version=current.resource_version, timeout=timeout)
        except Conflict:
            logger.info("%s: lost the race for %s", self.identity, self.lock.describe())
            return False
        except LockError as exc:
            logger.warning("%s: cannot write %s: %s", self.identity, self.lock.describe(), exc)
            return False
        self._wrote(written, started, new_term=not renewing)
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

    # ---- loops -------------------------------------------------------------------------------

    def stop(self, *, release: bool = True) -> None:
        """Ask ``run`` to end: it stops the term (on_stopped_leading), releases, and returns."""
        self._release_on_stop = self._release_on_stop and release
        self._stop.set()
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

    def acquire_step(self) -> bool:
        self._wake.clear()  # before reading, so a change announced during the attempt is not lost
        return self.try_acquire_or_renew()

    def standby_wait(self) -> float:
        retry = self.config.retry_period
        wait = retry * (1 + self.rng.random() * JITTER_FACTOR)
        if self.config.client_go_polling:
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
        self.clock.wait(self._stop, last + self.config.retry_period - self.clock.monotonic())
        if self._stop.is_set():
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

    def _observe(self, current: Observed) -> None:
        previous = self.state.observed
        if previous is None or previous != current:
            self.state.observed = current
            self.state.observed_at = self.clock.monotonic()
            if previous is not None and previous.record.lease_transitions != current.record.lease_transitions:
                self.state.transitions_seen += 1
        holder = current.record.holder_identity
        if holder != self.state.reported_holder:
            self.state.reported_holder = holder
            self.callbacks.on_new_leader(holder)

    def _observed_expired(self) -> bool:
        observed, at = self.state.observed, self.state.observed_at
        if observed is None or at is None:
            return False
        return self.clock.monotonic() >= at + observed.record.lease_duration_seconds

    def _wrote(self, written: Observed, started: float, *, new_term: bool) -> None:
        self._written_version = written.resource_version
        self._observe(written)
        self.state.last_renew = started
        if new_term:
            self.state.leading = True
            self.state.epoch = written.record.lease_transitions
            self.state.terms += 1
            logger.info(
                "%s: acquired %s, epoch %d", self.identity, self.lock.describe(), written.record.lease_transitions
            )

    def _start_term(self) -> None:
        self._term_stop = threading.Event()
        self._term_thread = threading.Thread(
            target=self.callbacks.on_started_leading, args=(self._term_stop,), name="leading", daemon=True
        )
        self._term_thread.start()

    def _end_term(self) -> None:
        self.state.leading = False
        if self._term_stop is not None:
            self._term_stop.set()
        self.callbacks.on_stopped_leading()
        if self._stop.is_set() and self._release_on_stop:
            self.release()
        # A new term needs a fresh acquisition: our old record now expires for us as for anyone.
        self._written_version = None

    @property
    def term_thread(self) -> threading.Thread | None:
        """The thread running ``on_started_leading`` for the current or last term."""
        return self._term_thread

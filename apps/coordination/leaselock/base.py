"""The lock backends' common shape: one record, read and written by compare-and-set.

A backend stores a :class:`LeaderElectionRecord` (the fields of a coordination.k8s.io/v1 Lease)
together with an opaque resource version. ``update`` succeeds only when the stored version is
still the one the caller read: the loser of a race gets :class:`Conflict` and simply re-reads.

Guarantees: at most one of several concurrent ``update``\\ s from the same version succeeds;
``watch`` callers are woken soon after the record changes (best effort).
Does NOT: judge expiry (the elector does, by its own monotonic clock), order writers fairly, or
promise that a wake-up is ever delivered: the elector also polls every retry period.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime


class LockError(Exception):
    """The backend could not be read or written (timeout, network, server error).

    ``reason`` names the failure for metrics ("Forbidden", "ServiceUnavailable", "Unreachable",
    ...). ``transient`` is False for answers that will not change by retrying (403, 401, 400,
    422): a candidate failing only with those can never lead until someone fixes its setup.
    ``applied_unknown`` is True when the write may have been applied although no answer came back
    (a timeout, a dropped connection): the elector then recognises its own write on the next read.
    """

    def __init__(
        self, message: str, *, reason: str = "Error", transient: bool = True, applied_unknown: bool = False
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.transient = transient
        self.applied_unknown = applied_unknown


class Conflict(LockError):
    """Someone else wrote the record first (HTTP 409, or a compare-and-set matching no row)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="Conflict")


@dataclass(frozen=True)
class LeaderElectionRecord:
    holder_identity: str
    lease_duration_seconds: int
    acquire_time: datetime | None
    renew_time: datetime | None
    lease_transitions: int
    # The fencing epoch of the holder's term (None: written by a tool that does not set one).
    # leaseTransitions counts holder changes as in Kubernetes; the epoch is what fences jobs.
    epoch: int | None = None


@dataclass(frozen=True)
class Observed:
    """A record as read, with the version an ``update`` must present."""

    record: LeaderElectionRecord
    resource_version: str


OnChange = Callable[[], None]


class LeaseLock(ABC):
    """One named lease in one backend. Methods are called from the elector's thread only."""

    backend: str = ""

    def __init__(self, *, name: str, namespace: str = "") -> None:
        self.name = name
        self.namespace = namespace

    @abstractmethod
    def get(self, *, timeout: float) -> Observed | None:
        """The current record, or None when the lease does not exist."""

    @abstractmethod
    def create(self, record: LeaderElectionRecord, *, timeout: float) -> Observed:
        """Create the lease; :class:`Conflict` when it already exists."""

    @abstractmethod
    def update(self, record: LeaderElectionRecord, *, resource_version: str, timeout: float) -> Observed:
        """Replace the record if it is still at ``resource_version``; :class:`Conflict` otherwise."""

    def watch(self, on_change: OnChange) -> None:  # noqa: B027 - polling-only backends need nothing
        """Start calling ``on_change`` (from any thread) whenever the record may have changed."""

    def close(self) -> None:  # noqa: B027 - nothing to free by default
        """Stop watching and free connections."""

    def describe(self) -> str:
        return "%s lease %s%s" % (self.backend, "%s/" % self.namespace if self.namespace else "", self.name)


# A Kubernetes MicroTime: RFC 3339 with exactly six fractional digits. A real API server answers
# 400 to "2026-01-01T00:00:00+00:00", which is what datetime.isoformat() writes for microsecond 0.
MICROTIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$")


def format_microtime(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("MicroTime needs an aware datetime, got %r" % value)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_microtime(text: str) -> datetime:
    if not MICROTIME_RE.match(text):
        raise ValueError("not a MicroTime (six fractional digits and a zone): %r" % text)
    return datetime.fromisoformat(text.replace("Z", "+00:00"))

"""Fencing: a stale leader's job tick writes nothing, on this primary or on any promoted later.

Each term of leadership has an epoch, written into the lease record by the elector. On acquiring,
the leader raises the ``Fence`` row of its lease to its epoch (never lowering it) and records the
PostgreSQL timeline it raised it on. A job writes only inside ``tick.fenced()``: a transaction
that first locks the fence row FOR SHARE and checks that it still holds the tick's epoch, raised
on the timeline the database is on now. Raising the epoch takes a row lock that conflicts with
FOR SHARE, so it waits for ticks already inside ``fenced()`` to commit; every later ``fenced()``
of the old term raises :class:`StaleEpoch` and rolls back.

Every fence transaction (``fenced()`` and ``raise_epoch``) bounds itself with ``SET LOCAL``
settings (``statement_timeout``, ``idle_in_transaction_session_timeout``): a statement stuck on a
lock, or a commit waiting for a synchronous standby that is gone, is cancelled instead of holding
the fence row with no limit, and nothing of it outlives the transaction (a transaction pooler
hands the server connection to others afterwards).

Epochs across failover. With asynchronous replication a promoted standby may lack the newest
fence raises (and, on the Postgres backend, the newest lease writes), so "the fence + 1" could
hand a new term an epoch that a lost term already used. So a new term's epoch is at least
``timeline << 32`` (:func:`epoch_floor`): PostgreSQL gives every promotion a new, higher timeline
ID, so every epoch chosen on timeline T exceeds every epoch chosen on any earlier timeline, lost or
not. And a fence raised on an older timeline admits no tick at all (:class:`StaleTimeline`): the
current leader starts a new term (a new epoch) and raises it on the new timeline, while a paused
process of a term lost with the old primary writes nothing when it wakes.

What an asynchronous failover loses: transactions the old primary committed but had not sent, a
tick's writes among them, like any other transaction. What it cannot do: let a stale term commit
afterwards, or give two terms one epoch.

A term with a beacon (beacon.py) also checks, in the same first statement, that its beacon is
still held by its own beacon session (:class:`BeaconLost` otherwise): a standby takes over early
only after that session ended, so nothing of the old term can start a transaction after that.

Guarantees: no transaction opened through ``fenced()`` commits after a newer epoch was written,
or on a timeline the fence was not raised on, or after its term's beacon session ended. Does NOT:
stop code that writes outside ``fenced()``, undo side effects outside the database (a message
sent from ``on_commit`` of a committed fenced transaction is still sent), or survive two
primaries promoted independently onto the same timeline ID (a split brain of the database).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from django.db import connection, transaction

from apps.coordination.lockkeys import Key, pg_locks_key
from apps.coordination.models import Fence

EPOCH_SHIFT = 32  # an epoch is timeline << 32 plus a count within the timeline
# The timeline WAL is being written on now (pg_control_checkpoint() lags a promotion until the
# next checkpoint; the current WAL file's name does not). Fails on a standby, which cannot write.
CURRENT_TIMELINE = "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint"


class StaleEpoch(Exception):
    """The fence row holds a newer epoch than this tick's: another leader has taken over."""


class StaleTimeline(StaleEpoch):
    """The fence was raised on an older timeline: the database failed over since this term began."""


class TermEnded(Exception):
    """The tick's term is ending (SIGTERM, a lost lease): its next batch is not started.

    Raised by ``fenced()`` before the transaction begins, so a job of many batches (one fenced
    transaction per workspace or per batch) returns within one batch of the term's end instead of
    holding up the release; what it had not committed is done by the next leader's tick.
    """


class BeaconLost(StaleEpoch):
    """The session holding this term's beacon has ended: a standby may already lead (beacon.py)."""


# The term's beacon is still held by the term's own beacon session (pid, classid, objid).
BEACON_HELD = (
    "EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2"
    " AND pid = %s AND classid::bigint = %s AND objid::bigint = %s"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
)


def _limit(seconds: float) -> str:
    return "%dms" % max(1, round(seconds * 1000))


# Select-list items that bound the rest of the current transaction (is_local: like SET LOCAL,
# nothing leaks past its end), from the next statement on; their parameters are
# ``local_timeouts(...)``. A statement with work of its own carries them: no extra round trip.
LOCAL_TIMEOUTS = (
    "set_config('statement_timeout', %s, true), set_config('idle_in_transaction_session_timeout', %s, true)"
)


def local_timeouts(*, statement_timeout: float, idle_in_transaction_timeout: float) -> list[str]:
    return [_limit(statement_timeout), _limit(idle_in_transaction_timeout)]


def set_local_timeouts(*, statement_timeout: float, idle_in_transaction_timeout: float) -> None:
    """Bound the rest of the current transaction (SET LOCAL: nothing leaks past its end)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT " + LOCAL_TIMEOUTS,
            local_timeouts(
                statement_timeout=statement_timeout, idle_in_transaction_timeout=idle_in_transaction_timeout
            ),
        )


def current_timeline() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + CURRENT_TIMELINE)
        row = cursor.fetchone()
    assert row is not None
    return int(row[0])


def epoch_floor(name: str) -> int:
    """The lowest epoch a new term of ``name`` may take: above the fence and this timeline's base."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT GREATEST(COALESCE((SELECT epoch FROM coordination_fence WHERE name = %s), -1) + 1, "
            + CURRENT_TIMELINE
            + " << %s)",
            [name, EPOCH_SHIFT],
        )
        row = cursor.fetchone()
    assert row is not None
    return int(row[0])


def raise_epoch(*, name: str, epoch: int, holder: str, statement_timeout: float = 10.0) -> bool:
    """Record ``epoch`` as the newest term of ``name``; False when a newer one is already there."""
    with transaction.atomic():
        set_local_timeouts(statement_timeout=statement_timeout, idle_in_transaction_timeout=statement_timeout)
        Fence.objects.get_or_create(name=name)
        with connection.cursor() as cursor:
            # The same epoch again only on the same timeline (an idempotent retry): after a
            # failover the term must take a new epoch, it cannot re-validate the old one.
            cursor.execute(
                "UPDATE coordination_fence SET epoch = %s, timeline = tl, holder_identity = %s, updated_at = now()"
                " FROM (SELECT " + CURRENT_TIMELINE + " AS tl) AS now_on"
                " WHERE name = %s AND (epoch < %s OR (epoch = %s AND timeline = tl))",
                [epoch, holder, name, epoch, epoch],
            )
            return cursor.rowcount == 1


def current_epoch(name: str) -> int | None:
    return Fence.objects.filter(name=name).values_list("epoch", flat=True).first()


@contextmanager
def fenced_atomic(
    *,
    name: str,
    epoch: int,
    statement_timeout: float = 10.0,
    idle_in_transaction_timeout: float = 10.0,
    beacon: tuple[int, Key] | None = None,
) -> Iterator[None]:
    """A transaction that commits only if ``epoch`` is still the newest term of ``name``.

    With ``beacon`` (pid, key), also only while that session still holds the term's beacon.
    """
    pid, (classid, objid) = (beacon[0], pg_locks_key(beacon[1])) if beacon is not None else (0, (0, 0))
    with transaction.atomic():
        with connection.cursor() as cursor:
            # One round trip: the timeouts apply from the next statement on, the fence row lock here.
            cursor.execute(
                "SELECT "
                + LOCAL_TIMEOUTS
                + ", f.epoch, f.timeline, "
                + CURRENT_TIMELINE
                + ", %s OR "
                + BEACON_HELD
                + " FROM (SELECT 1) AS one"
                " LEFT JOIN (SELECT epoch, timeline FROM coordination_fence WHERE name = %s FOR SHARE) AS f ON true",
                [
                    *local_timeouts(
                        statement_timeout=statement_timeout, idle_in_transaction_timeout=idle_in_transaction_timeout
                    ),
                    beacon is None,
                    pid,
                    classid,
                    objid,
                    name,
                ],
            )
            fetched = cursor.fetchone()
        if fetched is not None and not fetched[5]:
            raise BeaconLost("%s: the beacon session (pid %d) of epoch %d has ended" % (name, pid, epoch))
        row = None if fetched is None or fetched[2] is None else fetched[2:5]
        if row is None or row[0] != epoch:
            raise StaleEpoch("%s: tick of epoch %d, fence holds %s" % (name, epoch, row[0] if row else None))
        if row[1] != row[2]:
            raise StaleTimeline(
                "%s: fence of epoch %d was raised on timeline %d, the database is on timeline %d"
                % (name, epoch, row[1], row[2])
            )
        yield


@dataclass(frozen=True)
class Tick:
    """What a job function receives: who runs it, for which term, and how to write safely."""

    job: str
    holder: str
    lease: str
    epoch: int
    # SET LOCAL in every fenced transaction of the tick (seconds).
    statement_timeout: float = 10.0
    idle_in_transaction_timeout: float = 10.0
    # The term's beacon (pid of its session, key): fenced transactions check it is still held.
    beacon: tuple[int, Key] | None = None
    # Set when the term ends: long jobs check ``stopping()`` between units of work.
    stop: threading.Event | None = field(default=None, compare=False)

    def stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    @contextmanager
    def fenced(self) -> Iterator[None]:
        if self.stopping():
            raise TermEnded("%s: the term of epoch %d is ending" % (self.job, self.epoch))
        with fenced_atomic(
            name=self.lease,
            epoch=self.epoch,
            statement_timeout=self.statement_timeout,
            idle_in_transaction_timeout=self.idle_in_transaction_timeout,
            beacon=self.beacon,
        ):
            yield

"""Fencing: a stale leader's job tick writes nothing.

Each term of leadership has an epoch (the lease's leaseTransitions). On acquiring, the leader
raises the ``Fence`` row of its lease to its epoch (never lowering it). A job writes only inside
``tick.fenced()``: a transaction that first locks the fence row FOR SHARE and checks that it still
holds the tick's epoch. Raising the epoch takes a row lock that conflicts with FOR SHARE, so it
waits for ticks already inside ``fenced()`` to commit; every later ``fenced()`` of the old term
raises :class:`StaleEpoch` and rolls back.

Every fence transaction (``fenced()`` and ``raise_epoch``) bounds itself with ``SET LOCAL``
settings (``statement_timeout``, ``idle_in_transaction_session_timeout``): a statement stuck on a
lock, or a commit waiting for a synchronous standby that is gone, is cancelled instead of holding
the fence row with no limit, and nothing of it outlives the transaction (a transaction pooler
hands the server connection to others afterwards).

Guarantees: no transaction opened through ``fenced()`` commits after a newer epoch was written.
Does NOT: stop code that writes outside ``fenced()``, or undo side effects outside the database
(a message sent from ``on_commit`` of a committed fenced transaction is still sent).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django.db import connection, transaction

from apps.coordination.models import Fence


class StaleEpoch(Exception):
    """The fence row holds a newer epoch than this tick's: another leader has taken over."""


def _limit(seconds: float) -> str:
    return "%dms" % max(1, round(seconds * 1000))


def set_local_timeouts(*, statement_timeout: float, idle_in_transaction_timeout: float) -> None:
    """Bound the rest of the current transaction (SET LOCAL: nothing leaks past its end)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT set_config('statement_timeout', %s, true),"
            " set_config('idle_in_transaction_session_timeout', %s, true)",
            [_limit(statement_timeout), _limit(idle_in_transaction_timeout)],
        )


def raise_epoch(*, name: str, epoch: int, holder: str, statement_timeout: float = 10.0) -> bool:
    """Record ``epoch`` as the newest term of ``name``; False when a newer one is already there."""
    with transaction.atomic():
        set_local_timeouts(statement_timeout=statement_timeout, idle_in_transaction_timeout=statement_timeout)
        Fence.objects.get_or_create(name=name)
        updated = Fence.objects.filter(name=name, epoch__lte=epoch).update(epoch=epoch, holder_identity=holder)
    return updated == 1


def current_epoch(name: str) -> int | None:
    return Fence.objects.filter(name=name).values_list("epoch", flat=True).first()


@contextmanager
def fenced_atomic(
    *, name: str, epoch: int, statement_timeout: float = 10.0, idle_in_transaction_timeout: float = 10.0
) -> Iterator[None]:
    """A transaction that commits only if ``epoch`` is still the newest term of ``name``."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            # One round trip: the timeouts apply from the next statement on, the fence row lock here.
            cursor.execute(
                "SELECT set_config('statement_timeout', %s, true),"
                " set_config('idle_in_transaction_session_timeout', %s, true),"
                " (SELECT epoch FROM coordination_fence WHERE name = %s FOR SHARE)",
                [_limit(statement_timeout), _limit(idle_in_transaction_timeout), name],
            )
            fetched = cursor.fetchone()
        row = None if fetched is None or fetched[2] is None else (fetched[2],)
        if row is None or row[0] != epoch:
            raise StaleEpoch("%s: tick of epoch %d, fence holds %s" % (name, epoch, row[0] if row else None))
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

    @contextmanager
    def fenced(self) -> Iterator[None]:
        with fenced_atomic(
            name=self.lease,
            epoch=self.epoch,
            statement_timeout=self.statement_timeout,
            idle_in_transaction_timeout=self.idle_in_transaction_timeout,
        ):
            yield

"""Fencing: a stale leader's job tick writes nothing.

Each term of leadership has an epoch (the lease's leaseTransitions). On acquiring, the leader
raises the ``Fence`` row of its lease to its epoch (never lowering it). A job writes only inside
``tick.fenced()``: a transaction that first locks the fence row FOR SHARE and checks that it still
holds the tick's epoch. Raising the epoch takes a row lock that conflicts with FOR SHARE, so it
waits for ticks already inside ``fenced()`` to commit; every later ``fenced()`` of the old term
raises :class:`StaleEpoch` and rolls back.

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


def raise_epoch(*, name: str, epoch: int, holder: str) -> bool:
    """Record ``epoch`` as the newest term of ``name``; False when a newer one is already there."""
    with transaction.atomic():
        Fence.objects.get_or_create(name=name)
        updated = Fence.objects.filter(name=name, epoch__lte=epoch).update(epoch=epoch, holder_identity=holder)
    return updated == 1


def current_epoch(name: str) -> int | None:
    return Fence.objects.filter(name=name).values_list("epoch", flat=True).first()


@contextmanager
def fenced_atomic(*, name: str, epoch: int) -> Iterator[None]:
    """A transaction that commits only if ``epoch`` is still the newest term of ``name``."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT epoch FROM coordination_fence WHERE name = %s FOR SHARE", [name])
            row = cursor.fetchone()
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

    @contextmanager
    def fenced(self) -> Iterator[None]:
        with fenced_atomic(name=self.lease, epoch=self.epoch):
            yield

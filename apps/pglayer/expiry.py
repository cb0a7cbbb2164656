"""Deleting expired channel-layer rows: what the ``channel_layer_gc`` job does on the leader.

Guarantees: every message and group membership whose expiry is before ``now`` is deleted, in
batches on the expiry indexes, skipping rows a receiver is claiming at that moment (a skipped row
is gone with that claim, or deleted on the next run). Does NOT: touch live rows.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass

from django.db import connection
from django.utils import timezone

from apps.coordination.fencing import Tick
from apps.pglayer import statements

logger = logging.getLogger(__name__)

BATCH = 5000


@dataclass
class Collected:
    messages: int = 0
    memberships: int = 0


def delete_expired_batch(*, now: datetime.datetime, batch: int = BATCH) -> Collected:
    """One batch of each table on Django's connection; the caller owns the transaction."""
    params: dict[str, datetime.datetime | int] = {"now": now, "batch": batch}
    with connection.cursor() as cursor:
        cursor.execute(statements.DELETE_EXPIRED_MESSAGES, params)
        messages = cursor.rowcount
        cursor.execute(statements.DELETE_EXPIRED_MEMBERSHIPS, params)
        memberships = cursor.rowcount
    return Collected(messages=messages, memberships=memberships)


def collect_expired(tick: Tick, *, now: datetime.datetime | None = None, batch: int = BATCH) -> Collected:
    """Delete everything expired before ``now``, one fenced transaction per batch (so a leader
    that lost its term stops after the current batch, and no transaction holds locks for long)."""
    total = Collected()
    now = now or timezone.now()
    while True:
        with tick.fenced():
            done = delete_expired_batch(now=now, batch=batch)
        total.messages += done.messages
        total.memberships += done.memberships
        if done.messages < batch and done.memberships < batch:
            break
    if total.messages or total.memberships:
        logger.info(
            "channel_layer_gc (%s, lease %s): deleted %d expired message(s), %d membership(s)",
            tick.holder,
            tick.lease,
            total.messages,
            total.memberships,
        )
    return total

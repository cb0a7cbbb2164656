"""What a leader candidate's /healthz checks about its own database sessions.

- Notifications: a NOTIFY on the lease channel must come back over this process's LISTEN
  connection (Postgres lease backend). A LISTEN through a transaction pooler is accepted and then
  hears nothing: the process would fall back to polling silently.
- Job locks: every job lock this process holds must be held by its own session-path session
  (joblocks.py); a session path that does not keep sessions leaves them on someone else's.

Guarantees: a problem is reported only when the database answered (the NOTIFY was accepted, the
lock query ran): an outage or a listener still connecting is not judged, so a database outage
does not make every replica fail its liveness probe at once. Does NOT: repair anything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import psycopg
from django.db.utils import Error as DatabaseError

from apps.coordination.joblocks import JobLocks
from apps.coordination.leaselock.base import LeaseLock
from iacplatform.pgerrors import NotificationLost

logger = logging.getLogger(__name__)


def session_problems(lock: LeaseLock, locks: JobLocks, *, within: float = 2.0) -> list[str]:
    problems: list[str] = []
    round_trip: Callable[[float], float] | None = getattr(lock, "notify_round_trip", None)
    if round_trip is not None:
        try:
            round_trip(within)
        except NotificationLost as exc:
            problems.append(str(exc))
        except (TimeoutError, OSError, psycopg.Error, DatabaseError) as exc:
            logger.debug("notify round trip not judged: %s", exc)
    try:
        foreign = locks.foreign_locks()
    except psycopg.Error as exc:
        logger.debug("job locks not judged: %s", exc)
        foreign = None
    if foreign is not None:
        problems.append(foreign)
    return problems

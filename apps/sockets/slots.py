"""Cap slots shared by every web replica: one short transaction per connect, PostgreSQL the judge.

Guarantees: :func:`take` admits a socket under a set of keys only if, under each key's
transaction-level advisory lock, fewer than its limit live rows exist; two replicas racing for
the last slot of a key serialise on that lock, so a key never holds more live rows than its
limit. Live means the row's replica renewed ``seen_at`` (:func:`renew`, ONE single-row update
per replica per interval, whatever its number of sockets) within ``stale`` seconds of the
database's ``now()``: a SIGKILLed replica's slots stop counting after at most ``stale`` seconds
without anyone deleting them, and :func:`sweep` then deletes them in bounded batches. Each call
is O(1) statements, each an index probe or an index range bounded by the key's limit (plus the
not yet swept rows of dead replicas).
Does NOT: count a replica's own sockets while its row is stale (a replica whose renewals stopped
for a whole window, or that lost the database that long, admits as if its sockets were gone
until its next renewal puts them back: :func:`recover`), or know anything of the sockets
themselves (iacplatform/sockets.py keeps the process's list).
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper

from apps.coordination.lockkeys import socket_cap_key

SWEEP_BATCH = 1000

# A connect and its disconnect are two commits on the one thread every consumer's database call
# queues on; waiting for each WAL flush (7 ms on the shared test machine) would be most of their
# cost. What a database crash can lose this way is the last few hundred milliseconds of them: an
# insert lost uncounts an open socket (errs towards admitting), a delete lost keeps a closed
# socket counted until its replica's next reconciliation (iacplatform/sockets.py) rewrites the
# replica's rows from the sockets it really holds.
ASYNC_COMMIT = "SET LOCAL synchronous_commit TO OFF"

REGISTER = """
INSERT INTO sockets_socketreplica (process, pod, started_at, seen_at)
VALUES (%s, %s, now(), CASE WHEN %s THEN now() ELSE '-infinity'::timestamptz END)
ON CONFLICT (process) DO NOTHING
"""
# Registered stale ('-infinity') unless first: a row recreated here must not look renewed, or the
# replica would never notice (renew) that the sweep deleted its other sockets.

COUNT = """
SELECT s.key, count(*) FROM sockets_opensocket s
JOIN sockets_socketreplica r ON r.process = s.replica
WHERE s.key = ANY(%s) AND r.seen_at > now() - make_interval(secs => %s)
GROUP BY s.key
"""

RENEW = (
    "UPDATE sockets_socketreplica SET seen_at = now()"
    " WHERE process = %s AND seen_at > now() - make_interval(secs => %s)"
)
GIVE_BACK = "DELETE FROM sockets_opensocket WHERE socket = ANY(%s)"
SWEEP_PICK = (
    "SELECT process FROM sockets_socketreplica WHERE seen_at < now() - make_interval(secs => %s)"
    " ORDER BY seen_at LIMIT 1 FOR UPDATE SKIP LOCKED"
)
SWEEP_DELETE = (
    "DELETE FROM sockets_opensocket WHERE id IN (SELECT id FROM sockets_opensocket WHERE replica = %s LIMIT %s)"
)


# One statement for any number of rows (a connect's two keys, a recovery's every socket).
INSERT = (
    "INSERT INTO sockets_opensocket (socket, key, kind, replica, opened_at)"
    " SELECT s, k, t, %s, now() FROM unnest(%s::uuid[], %s::text[], %s::text[]) AS u(s, k, t)"
    " ON CONFLICT (socket, key) DO NOTHING"
)


def _insert(cursor: CursorWrapper, replica: UUID, rows: list[tuple[UUID, str, str]]) -> None:
    """Insert (socket, key, kind) rows of ``replica``."""
    if rows:
        sockets, keys, kinds = (list(column) for column in zip(*rows, strict=True))
        cursor.execute(INSERT, [replica, sockets, keys, kinds])


def take(
    *, socket: UUID, keys: dict[str, int], kind: str, replica: UUID, pod: str, stale: float, first: bool = False
) -> str | None:
    """Insert ``socket``'s rows under every key (key -> limit) or none: the first full key, or None."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(ASYNC_COMMIT)
        cursor.execute(REGISTER, [replica, pod, first])
        # Sorted: two sockets taking the same keys lock them in the same order (no deadlock).
        for key in sorted(keys):
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", list(socket_cap_key(key)))
        cursor.execute(COUNT, [list(keys), stale])
        counts = dict(cursor.fetchall())
        for key in sorted(keys):
            if counts.get(key, 0) >= keys[key]:
                return key
        _insert(cursor, replica, [(socket, key, kind) for key in keys])
    return None


def give_back(sockets: Iterable[UUID]) -> int:
    """Delete every row of these sockets (no lock: fewer rows never breaks a cap)."""
    ids = list(sockets)
    if not ids:
        return 0
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(ASYNC_COMMIT)
        cursor.execute(GIVE_BACK, [ids])
        return cursor.rowcount


def renew(*, replica: UUID, stale: float) -> bool:
    """Renew ``replica``'s seen_at; False when its row is missing or was already stale (its rows
    may have been swept: call :func:`recover`)."""
    with connection.cursor() as cursor:
        cursor.execute(RENEW, [replica, stale])
        return cursor.rowcount == 1


def recover(*, replica: UUID, pod: str, held: Iterable[tuple[UUID, str, str]]) -> None:
    """Make the table say exactly what ``held`` (socket, kind, key) says for ``replica``, renewed.

    The replica's sockets are open already: they are put back whatever the caps say now."""
    with transaction.atomic(), connection.cursor() as cursor:
        # The row lock first: a sweep of this replica that is under way finishes before this.
        cursor.execute(
            "INSERT INTO sockets_socketreplica (process, pod, started_at, seen_at) VALUES (%s, %s, now(), now())"
            " ON CONFLICT (process) DO UPDATE SET seen_at = now()",
            [replica, pod],
        )
        cursor.execute("DELETE FROM sockets_opensocket WHERE replica = %s", [replica])
        _insert(cursor, replica, [(socket, key, kind) for socket, kind, key in held])


def withdraw(*, replica: UUID) -> None:
    """Delete ``replica`` and its rows at once (a replica shutting down cleanly: its clients
    reconnect elsewhere now, and must not find their old slots still counted for a whole window)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM sockets_socketreplica WHERE process = %s", [replica])
        cursor.execute("DELETE FROM sockets_opensocket WHERE replica = %s", [replica])


def sweep(*, stale: float, batch: int = SWEEP_BATCH) -> int:
    """Delete up to ``batch`` rows of one stale replica, and the replica once it has none left;
    the rows deleted. Any replica may run it at any time: replicas being swept by another are
    skipped (SKIP LOCKED), not waited for."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(SWEEP_PICK, [stale])
        row = cursor.fetchone()
        if row is None:
            return 0
        cursor.execute(SWEEP_DELETE, [row[0], batch])
        deleted = cursor.rowcount
        if deleted < batch:
            cursor.execute("DELETE FROM sockets_socketreplica WHERE process = %s", [row[0]])
        return deleted

"""Job advisory locks, held on one session-path connection per process.

A job tick holds its lock across several transactions, so the lock needs a server session that
outlives them: it is taken on a connection of the session path (``DATABASE_SESSION_URL``), never on
the job's own Django connection, which may go through a transaction pooler (a session lock taken
there stays on whatever server connection ran the statement, held for ever by an idle pooled
connection, and every later tick is skipped). One connection serves every job thread of the
process (statements are serialised; each is one short round trip).

Every lock statement also returns the server backend that ran it: a backend other than the one
this connection started on means the session path does not keep sessions, and the lock just taken
is held by a session that is not ours. That is recorded (``foreign_holder``) for /healthz, and the
tick is skipped.

Guarantees: ``try_lock`` is true only when this connection's own session holds the key; a broken
connection is replaced on the next call (its locks died with its session). Does NOT: notice a lost
session between two calls (a tick already running goes on; its writes are fenced by epoch).
"""

from __future__ import annotations

import logging
import threading

import psycopg

from apps.coordination.lockkeys import Key
from iacplatform.sessiondb import session_connection_params

logger = logging.getLogger(__name__)


class JobLocks:
    def __init__(self, *, purpose: str = "job-locks") -> None:
        self.purpose = purpose
        self._mutex = threading.Lock()
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._backend: int | None = None
        self.held: set[Key] = set()
        # Set when a lock statement ran on a backend other than our session's: the message for /healthz.
        self.foreign_holder: str | None = None

    @property
    def backend_pid(self) -> int | None:
        return self._backend

    def _connection(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self.held.clear()  # they were the old session's, gone with it
            self._conn = psycopg.connect(**session_connection_params(purpose=self.purpose), autocommit=True)
            row = self._conn.execute("SELECT pg_backend_pid()").fetchone()
            self._backend = int(str(row[0])) if row else None
        return self._conn

    def try_lock(self, key: Key) -> bool:
        with self._mutex:
            conn = self._connection()
            row = conn.execute("SELECT pg_try_advisory_lock(%s, %s), pg_backend_pid()", list(key)).fetchone()
            assert row is not None
            acquired, backend = bool(row[0]), int(str(row[1]))
            if backend != self._backend:
                self.foreign_holder = (
                    "job lock %s was taken by server session %s, not by this process's session %s: the session "
                    "path (DATABASE_SESSION_URL) does not keep sessions (a transaction pooler?)"
                    % (key, backend, self._backend)
                )
                logger.error("%s", self.foreign_holder)
                if acquired:
                    # Best effort: this statement may reach that session again, or not.
                    conn.execute("SELECT pg_advisory_unlock(%s, %s)", list(key))
                return False
            if acquired:
                self.held.add(key)
            return acquired

    def unlock(self, key: Key) -> None:
        with self._mutex:
            self.held.discard(key)
            conn = self._conn
            if conn is None or conn.closed or conn.broken:
                return
            try:
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", list(key))
            except psycopg.Error as exc:
                # The session is gone, and its locks with it.
                logger.warning("cannot release job lock %s: %s", key, exc)

    def foreign_locks(self) -> str | None:
        """A message when a lock this process believes it holds is not held by its session."""
        if self.foreign_holder is not None:
            return self.foreign_holder
        with self._mutex:
            keys = set(self.held)
            conn = self._conn
            if not keys or conn is None or conn.closed or conn.broken:
                return None
            rows = conn.execute(
                "SELECT classid::bigint, objid::bigint, pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2"
                " AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchall()
        mine = {(_signed(int(str(c))), _signed(int(str(o)))) for c, o, pid in rows if pid == self._backend}
        missing = sorted(keys - mine)
        if missing:
            return "job locks %s are not held by this process's session %s" % (missing, self._backend)
        return None

    def close(self) -> None:
        with self._mutex:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            self.held.clear()


def _signed(value: int) -> int:
    return value - (1 << 32) if value >= (1 << 31) else value


_process_locks: JobLocks | None = None
_process_mutex = threading.Lock()


def process_job_locks() -> JobLocks:
    """The job locks of this process (one session connection, made on first use)."""
    global _process_locks
    with _process_mutex:
        if _process_locks is None:
            _process_locks = JobLocks()
        return _process_locks


def close_process_job_locks() -> None:
    with _process_mutex:
        if _process_locks is not None:
            _process_locks.close()

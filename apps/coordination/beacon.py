"""The liveness beacon: PostgreSQL tells the standbys at once when the leader's process dies.

The leader of a term holds a session-level advisory lock ``(LEADER_BEACON, crc32(lease:epoch:holder))``
on a connection of its own (:class:`Beacon`), taken BEFORE the write that records the term, so no
standby can see the term before its beacon is lit. Each standby (:class:`BeaconWatch`) waits on
the beacon of the term it observes with a blocking ``pg_advisory_lock_shared`` on its own
connection. When the leader's process dies (SIGKILL, OOM kill, panic) the kernel closes its
sockets, its backend exits and the lock is released: the standbys' waits return within
milliseconds and the elector takes the lease by compare-and-set at once, instead of after
LeaseDuration. Node loss sends no RST: the beacon session carries TCP keepalives and
``tcp_user_timeout`` on both ends, so the server ends it after about ``KEEPALIVE_BOUND`` seconds
(below the default LeaseDuration of 15 s); the lease still bounds everything else.

Safety never depends on the beacon. A beacon can end while its leader lives (pg_terminate_backend,
a network blip, a server restart); a standby then takes over while the old leader may still think
it leads for up to RenewDeadline. So every fenced transaction of a term that has a beacon checks,
in its first statement, that the term's beacon is still held by the term's own beacon session
(``pg_locks``): once that session is gone, no transaction of the term can start, and the standby
can only have been woken after it was gone. The old leader itself notices the loss (its watcher
sees the socket close), stops counting itself leader, and asks for a fresh term.

Guarantees: a standby is woken only by the end of the session that held the beacon of the term it
observes (a beacon found free right away means "no beacon", never "dead": that term falls back to
lease expiry); no fenced transaction of a term commits once its beacon session has ended. Does
NOT: detect a frozen leader (SIGSTOP, a VM pause): its session stays up, and the lease expires as
before; or work without PostgreSQL (no beacon then: lease expiry as before).
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
from collections.abc import Callable
from typing import Any

import psycopg

from apps.coordination.lockkeys import Key, beacon_key

logger = logging.getLogger(__name__)

# The server ends a beacon session whose peer vanished after idle + count x interval seconds of
# unanswered keepalives, or tcp_user_timeout of unacknowledged data: about 8 s.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 1, "keepalives_count": 3}
TCP_USER_TIMEOUT_MS = 8000
KEEPALIVE_BOUND = 8.0

ConnectParams = Callable[[str], dict[str, Any]]


def _default_params(purpose: str) -> dict[str, Any]:
    from iacplatform.sessiondb import session_connection_params

    return session_connection_params(purpose=purpose)


def _connect(params: ConnectParams, purpose: str) -> psycopg.Connection[tuple[Any, ...]]:
    conn_params = {**params(purpose), **KEEPALIVES, "tcp_user_timeout": TCP_USER_TIMEOUT_MS}
    conn = psycopg.connect(**conn_params, autocommit=True)
    # The server's side of the same bound (a Unix socket ignores both).
    conn.execute(
        "SELECT set_config('tcp_keepalives_idle', '5', false), set_config('tcp_keepalives_interval', '1', false),"
        " set_config('tcp_keepalives_count', '3', false), set_config('tcp_user_timeout', %s, false)",
        [str(TCP_USER_TIMEOUT_MS)],
    )
    return conn


class Beacon:
    """The leader's side: holds term beacons on one session and reports when that session ends."""

    def __init__(
        self, *, lease: str, identity: str, on_lost: Callable[[], None], params: ConnectParams = _default_params
    ) -> None:
        self.lease = lease
        self.identity = identity
        self.on_lost = on_lost
        self.params = params
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._held: dict[int, Key] = {}
        self._pid: int | None = None
        self._closing = threading.Event()
        self._watcher: threading.Thread | None = None

    def hold(self, epoch: int) -> int | None:
        """Light the beacon of ``epoch``; the session's backend pid, or None (no beacon)."""
        key = beacon_key(self.lease, epoch, self.identity)
        with self._lock:
            try:
                conn = self._connection()
                row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", list(key)).fetchone()
            except psycopg.Error as exc:
                logger.warning("beacon of %s epoch %d: %s; this term runs without one", self.lease, epoch, exc)
                self._drop_connection()
                return None
            if not row or not row[0]:
                logger.warning("beacon of %s epoch %d is held by another session", self.lease, epoch)
                return None
            self._held[epoch] = key
            return self._pid

    def drop(self, epoch: int) -> None:
        with self._lock:
            key = self._held.pop(epoch, None)
            if key is None or self._conn is None:
                return
            try:
                self._conn.execute("SELECT pg_advisory_unlock(%s, %s)", list(key))
            except psycopg.Error:
                self._drop_connection()  # its end releases every beacon it held

    def key(self, epoch: int) -> Key | None:
        return self._held.get(epoch)

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            self._held.clear()
            self._drop_connection()

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = _connect(self.params, "beacon")
            row = self._conn.execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            self._pid = int(row[0])
            self._watcher = threading.Thread(target=self._watch, args=(self._conn,), name="beacon", daemon=True)
            self._watcher.start()
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn, self._pid = self._conn, None, None
        if conn is not None:
            conn.close()

    def _watch(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        # An idle session receives nothing; readable means the server said something (FATAL:
        # terminating connection) or closed it. Check under the lock, then report.
        fd = conn.fileno()
        while not self._closing.is_set() and not conn.closed:
            try:
                readable, _, _ = select.select([fd], [], [], 0.5)
            except (OSError, ValueError):
                readable = [fd]
            if not readable:
                continue
            with self._lock:
                if conn.closed or conn is not self._conn:
                    return
                try:
                    conn.execute("SELECT 1")
                    continue
                except psycopg.Error as exc:
                    lost = bool(self._held)
                    logger.warning("beacon session of %s ended: %s", self.lease, exc)
                    self._held.clear()
                    self._drop_connection()
            if lost:
                self.on_lost()
            return


class BeaconWatch:
    """A standby's side: waits on the beacon of the observed term, reports when its session ends."""

    def __init__(self, *, lease: str, on_ended: Callable[[int], None], params: ConnectParams = _default_params) -> None:
        self.lease = lease
        self.on_ended = on_ended
        self.params = params
        self._cond = threading.Condition()
        self._wanted: tuple[int, str] | None = None
        self._waiting: tuple[int, str] | None = None
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="beacon-watch", daemon=True)
        self._thread.start()

    def arm(self, term: tuple[int, str] | None) -> None:
        """Wait on the beacon of ``term`` (epoch, holder) from now on (None: on none)."""
        with self._cond:
            if term == self._wanted:
                return
            self._wanted = term
            conn, waiting = self._conn, self._waiting
            self._cond.notify_all()
        if conn is not None and waiting is not None and waiting != term:
            with contextlib.suppress(psycopg.Error):
                conn.cancel_safe(timeout=2)

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            conn = self._conn
            self._cond.notify_all()
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.cancel_safe(timeout=2)
        self._thread.join(timeout=3)

    def _run(self) -> None:
        backoff = 0.5
        while True:
            with self._cond:
                while not self._stopping and self._wanted is None:
                    self._cond.wait()
                if self._stopping:
                    break
                term = self._wanted
            assert term is not None
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = _connect(self.params, "beacon-watch")
                ended = self._wait(self._conn, term)
                backoff = 0.5
            except psycopg.Error as exc:
                with self._cond:
                    if self._stopping:
                        break
                if isinstance(exc, psycopg.errors.QueryCanceled) and self._conn is not None:
                    # A cancel may land on a later statement than the wait (an unlock): let go
                    # of anything this session might still hold.
                    with contextlib.suppress(psycopg.Error):
                        self._conn.execute("SELECT pg_advisory_unlock_all()")
                else:
                    logger.info("beacon watch of %s: %s", self.lease, exc)
                    if self._conn is not None:
                        self._conn.close()
                    self._conn = None
                    with self._cond:
                        self._cond.wait(backoff)
                    backoff = min(backoff * 2, 10.0)
                continue
            with self._cond:
                if self._wanted == term:
                    self._wanted = None  # reported once; the next term re-arms it
            if ended:
                self.on_ended(term[0])
        if self._conn is not None:
            self._conn.close()

    def _wait(self, conn: psycopg.Connection[tuple[Any, ...]], term: tuple[int, str]) -> bool:
        """True when the beacon of ``term`` was held and its session has now ended."""
        key = list(beacon_key(self.lease, *term))
        row = conn.execute("SELECT pg_try_advisory_lock_shared(%s, %s)", key).fetchone()
        if row and row[0]:
            # Free already: the term has no beacon (or its leader died before we looked).
            conn.execute("SELECT pg_advisory_unlock_shared(%s, %s)", key)
            return False
        with self._cond:
            self._waiting = term
            if self._wanted != term or self._stopping:
                self._waiting = None
                return False
        try:
            conn.execute("SELECT pg_advisory_lock_shared(%s, %s)", key)
        finally:
            with self._cond:
                self._waiting = None
        conn.execute("SELECT pg_advisory_unlock_shared(%s, %s)", key)
        return True

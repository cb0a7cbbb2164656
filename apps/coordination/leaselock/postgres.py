"""The Postgres lease backend: a row of ``coordination_lease``, written by compare-and-set.

Every write is ``UPDATE ... WHERE name = %s AND resource_version = %s`` (or an INSERT that does
nothing on conflict); the writer whose statement matches no row lost the race. Each write also
sends ``NOTIFY coordination_lease, '<name>'`` in the same transaction, so standbys LISTENing on
their own connection re-read at once: a release is taken over in milliseconds and a renew is
observed when it happens (which makes crash takeover LeaseDuration after the last renew, not
LeaseDuration after the next poll).

Guarantees: one winner per resource version; every statement bounded by ``statement_timeout``
(the caller's timeout, below RenewDeadline); the listener reconnects after losing its connection.
Does NOT: deliver notifications reliably (a reconnecting listener misses some; the elector polls
anyway), or use the database clock for expiry (timestamps are informational, as in Kubernetes).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from datetime import datetime
from typing import Any

import psycopg
from django.db import DatabaseError, connection, transaction

from apps.coordination.leaselock.base import Conflict, LeaderElectionRecord, LeaseLock, LockError, Observed, OnChange
from iacplatform.pgerrors import NotificationLost, PermanentConnectionError, permanent_refusal
from iacplatform.sessiondb import django_connection_params, session_connection_params

logger = logging.getLogger(__name__)

CHANNEL = "coordination_lease"
_COLUMNS = (
    "holder_identity, lease_duration_seconds, acquire_time, renew_time, lease_transitions, epoch, resource_version"
)


def _observed(row: tuple[str, int, datetime | None, datetime | None, int, int | None, int]) -> Observed:
    holder, duration, acquire, renew, transitions, epoch, version = row
    return Observed(
        record=LeaderElectionRecord(
            holder_identity=holder,
            lease_duration_seconds=duration,
            acquire_time=acquire,
            renew_time=renew,
            lease_transitions=transitions,
            epoch=epoch,
        ),
        resource_version=str(version),
    )


class PostgresLeaseLock(LeaseLock):
    backend = "postgres"

    def __init__(self, *, name: str, namespace: str = "") -> None:
        super().__init__(name=name, namespace=namespace)
        self._listener: _Listener | None = None

    def get(self, *, timeout: float) -> Observed | None:
        row = self._execute("SELECT %s FROM coordination_lease WHERE name = %%s" % _COLUMNS, [self.name], timeout)
        return _observed(row) if row else None

    def create(self, record: LeaderElectionRecord, *, timeout: float) -> Observed:
        row = self._execute(
            "INSERT INTO coordination_lease (name, holder_identity, lease_duration_seconds, acquire_time, renew_time,"
            " lease_transitions, epoch, resource_version) VALUES (%%s, %%s, %%s, %%s, %%s, %%s, %%s, 1)"
            " ON CONFLICT (name) DO NOTHING RETURNING %s" % _COLUMNS,
            [self.name, *self._values(record)],
            timeout,
            notify=True,
        )
        if row is None:
            raise Conflict("%s already exists" % self.describe())
        return _observed(row)

    def update(self, record: LeaderElectionRecord, *, resource_version: str, timeout: float) -> Observed:
        try:
            version = int(resource_version)
        except ValueError:
            raise Conflict("%s: resource version %r is not ours" % (self.describe(), resource_version)) from None
        row = self._execute(
            "UPDATE coordination_lease SET holder_identity = %%s, lease_duration_seconds = %%s, acquire_time = %%s,"
            " renew_time = %%s, lease_transitions = %%s, epoch = %%s, resource_version = resource_version + 1"
            " WHERE name = %%s AND resource_version = %%s RETURNING %s" % _COLUMNS,
            [*self._values(record), self.name, version],
            timeout,
            notify=True,
        )
        if row is None:
            # Another candidate wrote first (or the row is gone): re-read and decide again.
            raise Conflict("%s changed since version %s" % (self.describe(), resource_version))
        return _observed(row)

    def watch(self, on_change: OnChange) -> None:
        if self._listener is None:
            self._listener = _Listener(name=self.name, on_change=on_change)
            self._listener.start()

    def notify_round_trip(self, within: float) -> float:
        """Seconds for a NOTIFY on the lease channel to come back over this process's listener.

        Raises NotificationLost when the database took it but the listener never saw it (a LISTEN
        lost, e.g. behind a transaction pooler); TimeoutError when nothing listens yet; the
        connection error when it cannot be sent (an outage is not this process's fault).
        """
        listener = self._listener
        if listener is None or not listener.connected.is_set():
            raise TimeoutError("%s: the lease listener is not connected" % self.describe())
        token = secrets.token_hex(6)
        arrived = listener.expect(token)
        started = time.monotonic()
        try:
            params = {**django_connection_params(), "connect_timeout": max(1, int(within))}
            with psycopg.connect(**params, autocommit=True) as conn:
                conn.execute("SELECT pg_notify(%s, %s)", [CHANNEL, "ping:" + token])
            if not arrived.wait(max(0.0, started + within - time.monotonic())):
                raise NotificationLost(
                    "a NOTIFY on %s did not come back over this process's LISTEN connection within %.1fs"
                    % (CHANNEL, within)
                )
        finally:
            listener.forget(token)
        return time.monotonic() - started

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None

    @staticmethod
    def _values(record: LeaderElectionRecord) -> list[Any]:
        return [
            record.holder_identity,
            record.lease_duration_seconds,
            record.acquire_time,
            record.renew_time,
            record.lease_transitions,
            record.epoch,
        ]

    def _execute(self, sql: str, params: list[Any], timeout: float, *, notify: bool = False) -> tuple[Any, ...] | None:
        # A connection broken by an earlier failure is replaced instead of failing forever.
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                # Bounded below RenewDeadline; and a writer paused mid-transaction (SIGSTOP) is cut off
                # by the server instead of holding the row against every other candidate.
                limit = "%dms" % max(1, timeout * 1000)
                cursor.execute(
                    "SELECT set_config('statement_timeout', %s, true),"
                    " set_config('idle_in_transaction_session_timeout', %s, true)",
                    [limit, limit],
                )
                cursor.execute(sql, params)
                row = cursor.fetchone()
                if notify and row is not None:
                    cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, self.name])
                return row
        except DatabaseError as exc:
            # A write whose COMMIT got no answer (connection lost) may have been applied. A server
            # refusing the connection outright (a password rotated, the database dropped) is not
            # an outage: logged as an error, and /healthz fails once it has lasted (health.py).
            refused = permanent_refusal(exc.__cause__ or exc)
            raise LockError(
                "%s: %s" % (self.describe(), refused or exc),
                reason="PermanentConnectionError" if refused else type(exc).__name__,
                transient=refused is None,
                applied_unknown=notify and refused is None,
            ) from exc


class _Listener:
    """LISTENs on its own connection and calls ``on_change`` for notifications about one lease."""

    def __init__(self, *, name: str, on_change: OnChange) -> None:
        self.name = name
        self.on_change = on_change
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-listener", daemon=True)
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self.connected = threading.Event()
        self._pings: dict[str, threading.Event] = {}

    def expect(self, token: str) -> threading.Event:
        event = self._pings[token] = threading.Event()
        return event

    def forget(self, token: str) -> None:
        self._pings.pop(token, None)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                self._listen()
                backoff = 0.5
            except PermanentConnectionError as exc:
                # Not retried: the elector still polls, and the operator sees the server's reason.
                logger.error("lease listener for %s: the server refused the connection: %s", self.name, exc)
                return
            except psycopg.Error as exc:
                logger.warning("lease listener for %s lost its connection: %s", self.name, exc)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _listen(self) -> None:
        # The session path (DATABASE_SESSION_URL): a LISTEN needs a session of its own.
        params = session_connection_params(purpose="lease-listen")
        try:
            conn = psycopg.connect(**params, autocommit=True)
        except psycopg.OperationalError as exc:
            refusal = permanent_refusal(exc)
            if refusal is None:
                raise
            raise PermanentConnectionError(refusal) from None
        with conn:
            conn.execute("LISTEN %s" % CHANNEL)
            # Whatever changed while we were not listening: look now. Not on each failure, so a
            # database that is down does not drive a hot loop of attempts.
            self.on_change()
            self.connected.set()
            try:
                while not self._stopping.is_set():
                    # A short timeout bounds how long stop() waits; notifications wake us at once.
                    for notify in conn.notifies(timeout=0.5):
                        if notify.payload == self.name:
                            self.on_change()
                        elif notify.payload.startswith("ping:"):
                            waiter = self._pings.get(notify.payload[5:])
                            if waiter is not None:
                                waiter.set()
            finally:
                self.connected.clear()

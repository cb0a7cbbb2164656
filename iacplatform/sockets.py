"""Isolation between WebSocket clients: a token bucket per connection, and caps on concurrent
connections per key (a user, a pool token, a source address) that hold across replicas.

Guarantees: :meth:`TokenBucket.take` admits at most ``burst`` frames at once and ``rate`` per
second on average, in O(1) with no I/O, so refusing a flood costs less than serving it; a
consumer that sees it refused sends an error and closes (``CLOSE_RATE_LIMITED``), so a flooding
client is cut off after ``burst`` frames instead of stalling the replica's event loop.
:class:`ConnectionCaps` is this process's side of the caps PostgreSQL counts for every replica
(apps/sockets/slots.py): :meth:`~ConnectionCaps.acquire` takes a socket's slots in one short
transaction or refuses (a client spread over N replicas gets the cap once, not N times);
:meth:`~ConnectionCaps.release` gives them back; a daemon thread renews this process's row every
``SOCKET_CAP_REFRESH_SECONDS`` (one update, whatever the number of sockets), puts this process's
sockets back if its row went stale (:meth:`~ConnectionCaps.step`) and every ``RECONCILE_TICKS``
ticks anyway (connects and disconnects commit without waiting for the WAL flush: a database crash
may lose the last of them), and sweeps a bounded batch of dead replicas' rows. With the
database down, acquire raises (the consumers refuse with ``CLOSE_UNAVAILABLE``) and release
keeps the socket to delete at the next step.
:class:`ConnectRate` bounds how fast one source address may open sockets, so a client cut off
with 4429 cannot turn into a reconnect storm (each handshake costs a token lookup).
Does NOT: count across replicas the connect rate (per replica, in memory, no I/O by design: it
guards the handshake before any query); count a socket of a replica whose renewals stopped for
a whole ``SOCKET_CAP_STALE_SECONDS`` until its next renewal (the caps err towards admitting
then); free a crashed replica's slots sooner than ``SOCKET_CAP_STALE_SECONDS``; repair what a
database crash lost of the last connects and disconnects sooner than the next reconciliation.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.utils import Error as DatabaseError

from apps.sockets import slots

logger = logging.getLogger(__name__)

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# 4429: "too many requests" in the private close-code range (the HTTP status + 4000 convention
# the project's other codes follow: 4400, 4401, 4403, 4404, 4408, 4410).
CLOSE_RATE_LIMITED = 4429
# 4503: "service unavailable": the database the caps are counted in could not be reached; the
# socket is refused (never admitted uncounted, never 1011), the client retries later.
CLOSE_UNAVAILABLE = 4503
# Refresher ticks between two rewrites of this replica's rows from its open sockets (5 minutes
# at the default SOCKET_CAP_REFRESH_SECONDS).
RECONCILE_TICKS = 30


class TokenBucket:
    def __init__(self, *, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = burst
        self.updated = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class ConnectionCaps:
    """The slots this process holds, mirrored in the database (slots.py).

    ``acquire`` and ``release`` are synchronous (consumers call them through
    ``database_sync_to_async``); the lock serialises them with the refresher's recovery, so the
    list it writes back is never missing a socket whose rows it deletes."""

    def __init__(self, *, background: bool = True) -> None:
        self.background = background
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.refresher: threading.Thread | None = None
        self.reset()

    def reset(self) -> None:
        """Forget everything: a new process identity, nothing held (tests start each from here)."""
        with self.lock:
            self.process = uuid.uuid4()
            self.registered = False
            self.held: dict[uuid.UUID, list[tuple[str, str]]] = {}  # socket -> [(kind, key)]
            self.unreleased: set[uuid.UUID] = set()
            self.ticks = 0

    def acquire(self, socket: uuid.UUID, keys: dict[str, int], *, kind: str) -> str | None:
        """Take a slot under every key (key -> its limit) for ``socket``, or none: the key that is
        full, or None. Raises ``DatabaseError`` when the database cannot say."""
        self._start_refresher()
        with self.lock:
            try:
                refused = slots.take(
                    socket=socket,
                    keys=keys,
                    kind=kind,
                    replica=self.process,
                    pod=settings.POD_NAME,
                    stale=settings.SOCKET_CAP_STALE_SECONDS,
                    first=not self.registered,
                )
            except DatabaseError:
                # The commit may have happened before the connection broke: delete to be sure.
                self.unreleased.add(socket)
                raise
            self.registered = True
            if refused is None:
                self.held.setdefault(socket, []).extend((kind, key) for key in keys)
            return refused

    def release(self, socket: uuid.UUID) -> None:
        """Give back every slot of ``socket`` (nothing if it held none); never raises for the database."""
        with self.lock:
            if self.held.pop(socket, None) is None and socket not in self.unreleased:
                return
            try:
                slots.give_back([socket])
            except DatabaseError:
                # Deleted by the next step; until then the slot is counted (errs towards refusing).
                logger.warning("socket caps (%s): release deferred, database unavailable", settings.POD_NAME)
                self.unreleased.add(socket)
                return
            self.unreleased.discard(socket)

    def step(self) -> None:
        """One refresher tick: renew this process's row (or put its sockets back when it went
        stale), retry deferred releases, sweep a batch of dead replicas' rows; every
        ``RECONCILE_TICKS`` ticks, rewrite this process's rows from the sockets it holds."""
        stale = settings.SOCKET_CAP_STALE_SECONDS
        self.ticks += 1
        if self.registered:
            if not slots.renew(replica=self.process, stale=stale):
                put_back = self._rewrite()
                logger.warning(
                    "socket caps (%s): this replica's row was stale; %d slots put back", settings.POD_NAME, put_back
                )
            elif self.ticks % RECONCILE_TICKS == 0:
                # Repairs what a database crash lost of the asynchronously committed connects and
                # disconnects (slots.py): O(this replica's sockets), every few minutes.
                self._rewrite()
        if self.unreleased:
            with self.lock:
                pending = list(self.unreleased)
                slots.give_back(pending)
                self.unreleased.difference_update(pending)
        slots.sweep(stale=stale)

    def _rewrite(self) -> int:
        with self.lock:
            if self.stopping.is_set():
                return 0  # withdrawn: writing the rows back would revive them
            held = [(socket, kind, key) for socket, taken in self.held.items() for kind, key in taken]
            slots.recover(replica=self.process, pod=settings.POD_NAME, held=held)
            self.unreleased.clear()
        return len(held)

    def withdraw(self) -> None:
        """At exit: stop renewing and delete this process's rows (best effort: if the database
        cannot be reached, they stop counting after the window anyway)."""
        self.stopping.set()
        with self.lock:
            if not self.registered:
                return
            try:
                slots.withdraw(replica=self.process)
            except DatabaseError as exc:
                logger.warning("socket caps (%s): withdraw failed: %s", settings.POD_NAME, type(exc).__name__)
            finally:
                connection.close()
            self.registered = False
            self.held.clear()

    def _start_refresher(self) -> None:
        if not self.background or self.refresher is not None:
            return
        with self.lock:
            if self.refresher is None:
                self.refresher = threading.Thread(target=self._refresh, name="socket-caps", daemon=True)
                self.refresher.start()
                # A SIGTERMed daphne stops its reactor and returns; its clients reconnect to the
                # other replicas at once, where this process's slots would count for a window.
                atexit.register(self.withdraw)

    def _refresh(self) -> None:
        # Its own thread and database connection: renewals must not queue behind the consumers'
        # database calls on the one sync thread, or a busy replica's sockets would stop counting.
        while not self.stopping.wait(settings.SOCKET_CAP_REFRESH_SECONDS):
            close_old_connections()
            try:
                self.step()
            except DatabaseError as exc:
                logger.warning("socket caps (%s): refresh failed: %s", settings.POD_NAME, type(exc).__name__)
                connection.close()
            except Exception:
                logger.exception("socket caps (%s): refresh failed", settings.POD_NAME)


class ConnectRate:
    """New connections per source address: a token bucket each (at most ``max_sources`` kept; the
    oldest are forgotten first, which only ever errs towards admitting)."""

    def __init__(self, *, max_sources: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.buckets: dict[str, TokenBucket] = {}
        self.max_sources = max_sources
        self.clock = clock

    def allow(self, source: str, *, rate: float, burst: float) -> bool:
        bucket = self.buckets.pop(source, None)
        if bucket is None:
            bucket = TokenBucket(rate=rate, burst=burst, clock=self.clock)
            while len(self.buckets) >= self.max_sources:
                del self.buckets[next(iter(self.buckets))]
        self.buckets[source] = bucket  # most recently seen last
        return bucket.take()


# One per process: the connect rate is only used on daphne's one event loop, so it needs no lock;
# the caps lock for their refresher thread.
caps = ConnectionCaps()
connect_rate = ConnectRate()


def client_address(scope: dict[str, object]) -> str:
    client = scope.get("client")
    if isinstance(client, (list, tuple)) and client:
        return str(client[0])
    return "unknown"


class RefuseWhileDatabaseDown:
    """ASGI middleware for browser sockets: a database error raised before the socket is accepted
    (channels' AuthMiddleware looks the session and user up before any consumer runs) closes it
    with ``CLOSE_UNAVAILABLE``, as the consumers do for their own lookups, instead of failing the
    handshake with HTTP 500 and a traceback. An error after the accept is the consumer's own and
    is not caught here; the error's text (hosts, users) goes to the log, never to the client."""

    def __init__(self, inner: Callable[..., Any]) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.inner(scope, receive, send)
            return
        state = {"connected": False, "accepted": False}

        async def tracked_receive() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "websocket.connect":
                state["connected"] = True
            return message

        async def tracked_send(message: dict[str, Any]) -> None:
            if message["type"] == "websocket.accept":
                state["accepted"] = True
            await send(message)

        try:
            await self.inner(scope, tracked_receive, tracked_send)
        except DatabaseError as exc:
            if state["accepted"]:
                raise
            logger.warning("hub socket refused: database unavailable (%s)", type(exc).__name__)
            if not state["connected"]:
                await receive()  # the client's websocket.connect, which nobody read yet
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": CLOSE_UNAVAILABLE})

"""PostgresChannelLayer: a Channels layer over PostgreSQL (a message table plus NOTIFY/LISTEN).

Configure it like other layers::

    CHANNEL_LAYERS = {"default": {"BACKEND": "apps.pglayer.core.PostgresChannelLayer",
                                  "CONFIG": {"database": "default", "expiry": 60, "group_expiry": 86400,
                                             "capacity": 100, "prefix": "asgi",
                                             "symmetric_encryption_keys": [], "event_loop": "server"}}}

``database`` is a Django database alias or a ``postgresql://`` URL. ``event_loop``: ``server`` runs
the layer on the ASGI server's loop once it is called there (loopthread.py), ``own`` always on a
loop of its own in a daemon thread.

Guarantees:
- A message is stored (``pglayer_message``) in the same statement that announces it, and stays
  until it is received or expires: a send before the first receive is delivered.
- Exactly once per message: a row is delivered by whoever deletes it (``DELETE ... RETURNING``),
  or, for a small body on a process-specific channel, by its owner straight from the NOTIFY, with
  the ids that could reach it twice tracked until they no longer can (inline.py).
- In order per channel for each sender (rows are claimed in id order).
- Process-specific channels (``...!``) are announced on a NOTIFY channel of their owning process
  only; other names are consumed competitively (``FOR UPDATE SKIP LOCKED``). No advisory locks.
- One LISTEN connection per layer (per process), reconnecting with jittered backoff, plus a pool
  of at most four connections of which one stays open: all on one long-lived event loop, the
  ASGI server's or the layer's own (loopthread.py), so async callers and sync callers through
  ``async_to_sync`` both survive a PostgreSQL restart. After reconnecting, every waiting receive
  re-reads the table.
- ``capacity`` per channel, on every path: ``send`` raises ``ChannelFull``; ``group_send`` skips
  full members and counts them (``channel_layer_group_send_full_total``). Bodies buffered from
  their NOTIFY keep their rows in the table until handed out (inline.py), so they count; a
  buffer holds at most ``capacity`` of them plus one claim (at most ``capacity`` rows), so a
  consumer that stops reading costs at most about 2 x capacity x message size of memory.
- Memory per channel exists while a receive waits on it and for a few seconds after (freed at
  once when the last receive is cancelled with nothing buffered).

Does NOT (as Channels' spec allows, at-most-once): deliver a message whose claim committed while
the connection broke before the reply arrived, or a message sent when the sender's connection
broke after the statement was sent (the sender gets the error); guarantee an exact capacity under
concurrent senders (each checks the count in its own statement, so it may be exceeded by the
number of concurrent senders); order messages of different senders.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import logging
import re
import time
import uuid
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

import msgpack
import psycopg
from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer
from cryptography.fernet import Fernet, MultiFernet
from prometheus_client import Counter
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from apps.pglayer import statements
from apps.pglayer.inbox import SPECIFIC_BATCH, ChannelState, Claimer, Row
from apps.pglayer.inline import InlineDeliveries
from apps.pglayer.listener import Listener
from apps.pglayer.loopthread import LoopThread
from apps.pglayer.pool import ConnectionPool, backoff
from iacplatform.pgerrors import NotificationLost

logger = logging.getLogger(__name__)

T = TypeVar("T")

GROUP_SEND_FULL = Counter(
    "channel_layer_group_send_full", "Group members skipped by group_send because their channel was full"
)

PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
# A state with claimed rows and no receive for this long hands its rows back to the table.
IDLE_BUFFER_SECONDS = 5.0
HOUSEKEEPING_SECONDS = 2.0
# The layer deletes a batch of expired rows this often (the channel_layer_gc job does the rest).
SELF_GC_SECONDS = 60.0
SELF_GC_BATCH = 1000


# Every layer made in this process, so that a test session (or a shutdown hook) can close them all.
_layers: weakref.WeakSet[PostgresChannelLayer] = weakref.WeakSet()


def close_all_layers() -> None:
    """Close every layer of this process from sync code (e.g. before a test database is dropped)."""
    for layer in list(_layers):
        layer.close_sync()


class PostgresChannelLayer(BaseChannelLayer):
    extensions = ["groups", "flush"]

    def __init__(
        self,
        *,
        database: str = "default",
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        prefix: str = "asgi",
        symmetric_encryption_keys: list[str] | list[bytes] | None = None,
        event_loop: str = "server",
    ) -> None:
        if not isinstance(database, str) or not database:
            raise ValueError("channel layer: database must be a database alias or a postgresql:// URL")
        for name, value in (("expiry", expiry), ("group_expiry", group_expiry)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError("channel layer: %s must be a positive number of seconds, got %r" % (name, value))
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError("channel layer: capacity must be a positive integer, got %r" % (capacity,))
        if not isinstance(prefix, str) or not PREFIX_RE.match(prefix):
            raise ValueError("channel layer: prefix must be 1-40 of [A-Za-z0-9_.-], got %r" % (prefix,))
        if event_loop not in ("server", "own"):
            raise ValueError("channel layer: event_loop must be 'server' or 'own', got %r" % (event_loop,))
        if isinstance(symmetric_encryption_keys, str | bytes):
            raise ValueError("channel layer: symmetric_encryption_keys must be a list of keys")
        super().__init__(expiry=expiry, capacity=capacity)
        self.database = database
        self.group_expiry = group_expiry
        self.prefix = prefix
        self.crypter = (
            MultiFernet([_fernet(key) for key in symmetric_encryption_keys]) if symmetric_encryption_keys else None
        )
        self.client_prefix = uuid.uuid4().hex[:12]
        self._start = prefix + ":"
        self._shared_notify = statements.shared_notify_channel(prefix)
        self._own_notify = statements.process_notify_channel(prefix, self.client_prefix)
        self._thread = LoopThread("pglayer-%s" % self.client_prefix, adopt=event_loop == "server")
        self._ping_serial = 0
        self._start_runtime()
        self.group_send_full = 0
        _layers.add(self)

    def _start_runtime(self) -> None:
        """The layer's connections and per-channel state, fresh: at creation and after each close,
        so a closed layer (e.g. the cached one after ``close_all_layers``) works again on whatever
        loop it runs on next (asyncio's primitives bind to the loop that first waits on them)."""
        self._channels: dict[str, ChannelState] = {}
        # Messages are hints with at-most-once delivery (the database tables are the truth), so
        # the layer does not wait for each commit to reach disk: a crash loses at most the last
        # fraction of a second of messages, never consistency, and a send costs no fsync.
        self._pool = ConnectionPool(
            lambda: self._conninfo("layer:" + self.client_prefix), session_settings={"synchronous_commit": "off"}
        )
        self._listener = Listener(
            conninfo=lambda: self._conninfo("listen:" + self.client_prefix),
            channels=[self._own_notify, self._shared_notify],
            on_notify=self._on_notify,
            on_connected=self._on_connected,
        )
        # A claim takes at most `capacity` rows of a specific channel into memory, so a
        # consumer's buffer stays within one capacity of claimed and one of inline rows.
        self._claimer = Claimer(
            channels=self._channels,
            claim=self._claim_rows,
            unclaim=self._unclaim,
            batch=min(SPECIFIC_BATCH, int(self.capacity)),
        )
        self._inline = InlineDeliveries(
            delete=self._delete_delivered, unclaim=self._unclaim, keep=float(self.expiry) + 60.0
        )
        self._housekeeping: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._next_self_gc = 0.0
        self._pings: dict[int, asyncio.Future[None]] = {}

    # ------------------------------------------------------------------ connections

    def _conninfo(self, purpose: str) -> str:
        if self.database.startswith(("postgres://", "postgresql://")):
            params: dict[str, Any] = conninfo_to_dict(self.database)
            name = str(params.get("application_name") or "iacplatform")
            params["application_name"] = "%s/%s" % (name[: 62 - len(purpose)], purpose)
        else:
            from iacplatform.sessiondb import session_connection_params

            # The session path (DATABASE_SESSION_URL for the default alias): the listener needs a
            # session of its own, and the pool's connections are few and live long.
            params = session_connection_params(purpose=purpose, alias=self.database)
        for keepalive, value in (("keepalives", 1), ("keepalives_idle", 10), ("keepalives_interval", 5)):
            params.setdefault(keepalive, value)
        params.setdefault("keepalives_count", 3)
        return make_conninfo("", **params)

    async def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the layer's loop: right here when the caller is on it (the server's
        loop, adopted), else submitted to it and awaited."""
        self._thread.adopt_caller()
        if self._thread.in_loop():
            return await coro
        return await asyncio.wrap_future(self._thread.submit(coro))

    # ------------------------------------------------------------------ names and bodies

    def _key(self, name: str) -> str:
        return self._start + name

    def _check_channel(self, channel: str) -> None:
        self.require_valid_channel_name(channel)

    def _check_message(self, message: object) -> dict[str, Any]:
        if not isinstance(message, dict):
            raise TypeError("channel layer: a message must be a dict, got %s" % type(message).__name__)
        if "__asgi_channel__" in message:
            raise ValueError("channel layer: __asgi_channel__ is a reserved message key")
        return message

    def serialize(self, message: dict[str, Any]) -> bytes:
        value: bytes = msgpack.packb(message, use_bin_type=True)
        if self.crypter is not None:
            value = self.crypter.encrypt(value)
        return value

    def deserialize(self, body: bytes) -> dict[str, Any]:
        if self.crypter is not None:
            body = self.crypter.decrypt(body, int(self.expiry) + 10)
        message: dict[str, Any] = msgpack.unpackb(body, raw=False)
        return message

    # ------------------------------------------------------------------ channel layer API

    async def new_channel(self, prefix: str = "specific") -> str:
        return "%s.%s!%s" % (prefix, self.client_prefix, uuid.uuid4().hex)

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Store ``message`` in ``channel`` and announce it; ``ChannelFull`` when it holds ``capacity``."""
        self._check_channel(channel)
        body = self.serialize(self._check_message(message))
        key = self._key(channel)
        if "!" in channel:
            notify = statements.process_notify_channel(self.prefix, statements.client_part(key))
        else:
            notify = self._shared_notify
        params = {"key": key, "body": body, "expiry": float(self.expiry), "capacity": self.capacity, "notify": notify}
        stored = await self._call(self._execute(statements.SEND, params, idempotent=False, what="send"))
        if not stored:
            raise ChannelFull(channel)

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self._check_channel(channel)
        params = {"group": self._key(group), "key": self._key(channel), "group_expiry": float(self.group_expiry)}
        await self._call(self._execute(statements.GROUP_ADD, params, idempotent=True, what="group_add"))

    async def group_discard(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self._check_channel(channel)
        params = {"group": self._key(group), "key": self._key(channel)}
        await self._call(self._execute(statements.GROUP_DISCARD, params, idempotent=True, what="group_discard"))

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Send to every live member of ``group`` in one statement; full members are skipped and counted."""
        self.require_valid_group_name(group)
        body = self.serialize(self._check_message(message))
        params = {
            "group": self._key(group),
            "body": body,
            "expiry": float(self.expiry),
            "capacity": self.capacity,
            "prefix": self.prefix,
            "shared": self._shared_notify,
        }
        rows = await self._call(self._execute(statements.GROUP_SEND, params, idempotent=False, what="group_send"))
        full = int(rows[0][1]) if rows else 0
        if full:
            self.group_send_full += full
            GROUP_SEND_FULL.inc(full)
            logger.info("channel layer: %d member(s) of group %s over capacity, message skipped for them", full, group)

    async def flush(self) -> None:
        """Delete every message and group membership of this layer's prefix."""
        await self._call(self._flush())

    async def receive(self, channel: str) -> dict[str, Any]:
        """The next message of ``channel``; waits for one. Cancelling it loses no message."""
        self._check_channel(channel)
        key = self._key(channel)
        if "!" in channel and statements.client_part(key) != self.client_prefix:
            raise ValueError("channel layer: %s is another process's channel; receive it there" % channel)
        self._thread.adopt_caller()
        if self._thread.in_loop():
            # No hop: a cancellation reaches _receive itself, which never holds a row across an
            # await (a row is returned the moment it is popped), so nothing can be lost here.
            return self.deserialize((await self._receive(key)).body)
        caller = asyncio.get_running_loop()
        outer: asyncio.Future[Row] = caller.create_future()
        holder: dict[str, asyncio.Task[Row]] = {}
        layer_loop = self._thread.loop

        def start() -> None:
            task = layer_loop.create_task(self._receive(key))
            holder["task"] = task
            task.add_done_callback(finished)

        def finished(task: asyncio.Task[Row]) -> None:
            if task.cancelled():
                return
            exc = task.exception()

            def deliver() -> None:
                if outer.done():  # the caller gave up after the row was taken: give it back
                    if exc is None:
                        layer_loop.call_soon_threadsafe(self._give_back, task.result())
                elif exc is not None:
                    outer.set_exception(exc)
                else:
                    outer.set_result(task.result())

            try:
                caller.call_soon_threadsafe(deliver)
            except RuntimeError:  # the caller's loop is closed
                if exc is None:
                    self._give_back(task.result())

        def cancel() -> None:
            task = holder.get("task")
            if task is not None and not task.done():
                task.cancel()

        layer_loop.call_soon_threadsafe(start)
        try:
            row = await outer
        except asyncio.CancelledError:
            layer_loop.call_soon_threadsafe(cancel)
            raise
        return self.deserialize(row.body)

    async def close(self) -> None:
        """Stop the listener and close the layer's connections (tests, shutdown)."""
        if self._thread.in_loop() and not self._thread.adopted:
            raise RuntimeError("close() must not be called from the layer's own thread")
        await self._call(self._close())
        self._thread.stop()
        self._start_runtime()

    def close_sync(self, timeout: float = 10.0) -> None:
        """close() for sync callers; does nothing if the layer never started its loop. On an
        adopted loop that no longer runs (the server stopped), its tasks cannot run any more: the
        layer just lets go of it, and the process's exit closes the connections."""
        if self._thread.in_loop():
            raise RuntimeError("close_sync() called on the layer's own loop: await close() there")
        if self._thread.runnable():
            self._thread.submit(self._close()).result(timeout)
        self._thread.stop()
        self._start_runtime()

    # ------------------------------------------------------------------ on the layer's loop

    async def _execute(self, sql: str, params: dict[str, Any], *, idempotent: bool, what: str) -> list[tuple[Any, ...]]:
        async def operation(conn: psycopg.AsyncConnection[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
            cursor = await conn.execute(sql, params)
            return await cursor.fetchall() if cursor.description else []

        self._ensure_housekeeping()
        return await self._pool.run(
            operation, idempotent=idempotent, deadline=time.monotonic() + float(self.expiry), what=what
        )

    async def _receive(self, key: str) -> Row:
        state = self._channels.get(key)
        if state is None:
            state = self._channels[key] = ChannelState()
        event = asyncio.Event()
        state.waiters.append(event)
        shared = "!" not in key
        cancelled = False
        try:
            self._ensure_housekeeping()
            await self._listener.ready()
            while True:
                row = state.pop_ready(_utcnow(), dropped=self._inline.forget)
                if row is not None:
                    if row.inline:
                        self._inline.delivered(row)
                    return row
                event.clear()
                if state.dirty:
                    await self._claimer.claim(key, shared=shared)
                else:
                    await event.wait()
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            state.waiters.remove(event)
            state.idle_since = time.monotonic()
            if not state.waiters and not state.buffer and cancelled and not self._claimer.claiming(key):
                # The last receiver left (its consumer is gone): free the channel's memory now.
                # Not while its claim is in flight: its rows must land here, ahead of whatever the
                # next receive claims, not go back to the table behind newer rows.
                self._channels.pop(key, None)
            # Otherwise the state stays: a consumer receives again right after each message, and
            # the state (fed by NOTIFYs meanwhile) spares that receive a claim. A state without a
            # receive for IDLE_BUFFER_SECONDS is freed by housekeeping, its rows handed back; a
            # buffer left by a receive cancelled by a timeout keeps its order for the next one.

    def _give_back(self, row: Row) -> None:
        state = self._channels.get(row.key)
        if state is None:
            state = self._channels[row.key] = ChannelState(dirty=0)
        state.buffer.appendleft(row)
        state.idle_since = time.monotonic()
        state.wake()

    def _hand_back(self, rows: list[Row]) -> None:
        """Rows nobody will receive here: back to the table (claimed) or left there (inline)."""
        claimed = []
        for row in rows:
            if row.inline and self._inline.provisional(row.id):
                self._inline.abandon(row)
            else:
                claimed.append(row)
        self._unclaim(claimed)

    async def _claim_rows(self, keys: list[str], limits: list[int]) -> list[tuple[Row, bool]]:
        """Claim rows; each comes with whether to deliver it (live, and not already out inline)."""
        fence = self._inline.next_fence()
        params = {"keys": keys, "limits": limits, "own": self._own_notify, "sync": "sync %d" % fence}
        found = await self._pool.run(
            lambda conn: _fetch(conn, statements.CLAIM, params), idempotent=True, deadline=float("inf"), what="claim"
        )
        rows = [(Row(int(r[0]), str(r[1]), bytes(r[2]), r[3]), bool(r[4])) for r in found]
        kept = {row.id for row in self._inline.claimed(fence, [row for row, _ in rows])}
        return [(row, live and row.id in kept) for row, live in rows]

    async def _delete_delivered(self, ids: list[int]) -> set[int]:
        found = await self._pool.run(
            lambda conn: _fetch(conn, statements.DELETE_DELIVERED, {"ids": ids}),
            idempotent=True,
            deadline=float("inf"),
            what="delete delivered",
        )
        return {int(r[0]) for r in found}

    def _unclaim(self, rows: list[Row]) -> None:
        rows = [row for row in rows if row.expires > _utcnow()]
        if rows:
            task = asyncio.get_running_loop().create_task(self._unclaim_rows(rows))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _unclaim_rows(self, rows: list[Row]) -> None:
        params = {
            "ids": [row.id for row in rows],
            "keys": [row.key for row in rows],
            "bodies": [row.body for row in rows],
            "expires": [row.expires for row in rows],
            "prefix": self.prefix,
            "shared": self._shared_notify,
        }
        try:
            await self._pool.run(
                lambda conn: _fetch(conn, statements.UNCLAIM, params),
                idempotent=True,
                deadline=time.monotonic() + float(self.expiry),
                what="unclaim",
            )
        except Exception:
            logger.exception("channel layer: could not hand %d claimed message(s) back; they are lost", len(rows))

    def _on_notify(self, payload: str) -> None:
        key, _, rest = payload.partition(" ")
        if ":" not in key:  # a control message: "sync <n>" from one of our claims
            if key == "sync":
                self._inline.fence_passed(int(rest))
            elif key == "ping":
                waiter = self._pings.get(int(rest))
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            return
        state = self._channels.get(key)
        if state is None:
            return  # nobody here receives it (yet): the row waits in the table
        row_id, _, body = rest.partition(" ")
        if not body:  # a shared name, or a body too large for NOTIFY: claim it
            state.mark_dirty()
            return
        if self._inline.known(int(row_id)):
            return
        if len(state.buffer) >= self.capacity:
            # A consumer this far behind holds no more in memory: the row waits in the table
            # (where it counts towards capacity) and is claimed, in order, once there is room.
            state.mark_dirty()
            return
        expires = _utcnow() + datetime.timedelta(seconds=float(self.expiry))
        row = Row(int(row_id), key, base64.b64decode(body), expires, inline=True)
        self._inline.arrived(row)
        state.insert(row)
        state.wake()

    def _on_connected(self) -> None:
        # Notifications sent while the listener was away are gone: every waiter re-reads the table.
        for state in self._channels.values():
            state.mark_dirty()

    def _ensure_housekeeping(self) -> None:
        if self._housekeeping is None:
            self._housekeeping = asyncio.get_running_loop().create_task(self._housekeep(), name="pglayer-housekeeping")

    async def _housekeep(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            try:
                await self.housekeeping_step(time.monotonic())
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                logger.warning("channel layer: housekeeping skipped (%s)", exc)
            except Exception:
                logger.exception("channel layer: housekeeping failed")

    async def housekeeping_step(self, now: float) -> None:
        """Hand back rows of channels nobody receives any more, close idle connections, and now and
        then delete one batch of expired rows (so a cluster with no leader still shrinks)."""
        for key, state in list(self._channels.items()):
            if not state.waiters and now - state.idle_since >= IDLE_BUFFER_SECONDS and not self._claimer.claiming(key):
                self._hand_back(list(state.buffer))
                del self._channels[key]
        self._inline.purge(now)
        await self._pool.reap()
        if now >= self._next_self_gc:
            self._next_self_gc = now + SELF_GC_SECONDS * (0.5 + backoff(10, base=1.0, cap=1.0))
            params = {"now": _utcnow(), "batch": SELF_GC_BATCH}
            for sql in (statements.DELETE_EXPIRED_MESSAGES, statements.DELETE_EXPIRED_MEMBERSHIPS):
                await self._pool.run(
                    lambda conn, sql=sql: _fetch(conn, sql, params),  # type: ignore[misc]
                    idempotent=True,
                    deadline=now,
                    what="expire",
                )

    async def _flush(self) -> None:
        params = {"start": self._start}
        for sql in (statements.FLUSH_MESSAGES, statements.FLUSH_GROUPS):
            await self._pool.run(
                lambda conn, sql=sql: _fetch(conn, sql, params),  # type: ignore[misc]
                idempotent=True,
                deadline=time.monotonic() + float(self.expiry),
                what="flush",
            )
        for state in self._channels.values():
            for row in state.buffer:
                if row.inline:
                    self._inline.forget(row)
            state.buffer.clear()

    async def _close(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            self._housekeeping = None
        await self._listener.stop()
        await self._claimer.stop()
        await self._inline.stop()
        for task in list(self._background):
            # Hand-backs in flight finish first: they carry messages nobody has received yet.
            await asyncio.wait_for(asyncio.shield(task), 5)
        await self._pool.close()

    # ------------------------------------------------------------------ introspection (tests, admin)

    def stats(self) -> dict[str, int]:
        """Counters about this process's layer: channels held in memory, listener connections."""
        return {
            "channels_in_memory": len(self._channels),
            "listener_started": int(self._listener.started),
            "listener_connections": self._listener.connections,
            "pool_size": self._pool.size,
            "pool_opened": self._pool.opened,
            "claim_statements": self._claimer.statements,
            **self._inline.sizes(),
        }

    async def notify_round_trip(self, within: float = 2.0) -> float:
        """Seconds for a NOTIFY to this process's own channel to come back over the listener.

        Raises :class:`NotificationLost` when it was sent but did not arrive within ``within`` s
        (the LISTEN is lost: e.g. its connection goes through a transaction pooler), TimeoutError
        when it could not even be sent in that time (no listener, or no connection).
        """
        return await self._call(self._notify_round_trip(within))

    async def _notify_round_trip(self, within: float) -> float:
        started = time.monotonic()
        self._ping_serial += 1
        serial = self._ping_serial
        arrived = self._pings[serial] = asyncio.get_running_loop().create_future()
        sent = False

        async def send_and_wait() -> None:
            nonlocal sent
            await self._listener.ready()
            await self._execute(
                "SELECT pg_notify(%(channel)s, %(payload)s)",
                {"channel": self._own_notify, "payload": "ping %d" % serial},
                idempotent=True,
                what="notify round trip",
            )
            sent = True
            await arrived

        try:
            await asyncio.wait_for(send_and_wait(), within)
        except TimeoutError:
            if sent:
                raise NotificationLost(
                    "a NOTIFY sent to this process did not come back over its LISTEN connection within %.1fs" % within
                ) from None
            raise
        finally:
            self._pings.pop(serial, None)
        return time.monotonic() - started

    @property
    def listener_backend_pid(self) -> int | None:
        return self._listener.backend_pid


async def _fetch(
    conn: psycopg.AsyncConnection[tuple[Any, ...]], sql: str, params: dict[str, Any]
) -> list[tuple[Any, ...]]:
    cursor = await conn.execute(sql, params)
    return await cursor.fetchall() if cursor.description else []


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _fernet(key: str | bytes) -> Fernet:
    """A Fernet from any key string, as channels-redis derives it (SHA-256, url-safe base64)."""
    raw = key.encode("utf-8") if isinstance(key, str) else key
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(raw).digest()))

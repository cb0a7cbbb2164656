"""The one LISTEN connection of a channel layer, kept alive for the life of the process.

Guarantees: exactly one listening task per layer however many receives start at once (it is
started synchronously on the layer's own loop); after every (re)connection it LISTENs first and
only then calls ``on_connected``, so a caller that re-reads the table from there misses nothing
committed while the connection was down; reconnects with jittered backoff capped at half a second,
so it is back within about a second of PostgreSQL accepting connections again; a silently dead
connection is found by a heartbeat query every ``heartbeat`` seconds (plus TCP keepalives). A
connection the server refuses permanently (pgerrors.py) is not retried: the listening task ends
and every ``ready()`` waiting on it raises :class:`PermanentConnectionError` with the server's
message; the next ``ready()`` tries once more.

Does NOT: deliver anything itself (``on_notify`` gets the payload, the layer claims the rows);
see notifications sent while it was disconnected (PostgreSQL drops them; the re-read covers it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import psycopg

from apps.pglayer.pool import backoff
from iacplatform.pgerrors import PermanentConnectionError, permanent_refusal

logger = logging.getLogger(__name__)


class Listener:
    def __init__(
        self,
        *,
        conninfo: Callable[[], str],
        channels: list[str],
        on_notify: Callable[[str], None],
        on_connected: Callable[[], None],
        heartbeat: float = 15.0,
    ) -> None:
        self._conninfo = conninfo
        self._channels = channels
        self._on_notify = on_notify
        self._on_connected = on_connected
        self._heartbeat = heartbeat
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self.connections = 0
        self.backend_pid: int | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="pglayer-listener")
            # Its PermanentConnectionError is raised to the waiting ready() calls, if any.
            self._task.add_done_callback(lambda task: task.cancelled() or task.exception())

    @property
    def started(self) -> bool:
        return self._task is not None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def ready(self) -> None:
        self.start()
        if self._connected.is_set():
            return
        task = self._task
        assert task is not None
        connected = asyncio.ensure_future(self._connected.wait())
        try:
            await asyncio.wait({connected, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            connected.cancel()
        if not self._connected.is_set() and task.done() and not task.cancelled():
            task.result()  # raises the permanent refusal

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                conn = await self._connect()
                try:
                    for channel in self._channels:
                        # Channel names are "pgl_" + hex digits: safe as quoted identifiers.
                        await conn.execute('LISTEN "%s"' % channel)
                    self.connections += 1
                    self.backend_pid = conn.info.backend_pid
                    self._connected.set()
                    logger.info(
                        "channel layer: listening (backend %s, %d failed attempts before)", self.backend_pid, attempt
                    )
                    attempt = 0
                    self._on_connected()
                    while True:
                        async for notify in conn.notifies(timeout=self._heartbeat):
                            self._on_notify(notify.payload)
                        await conn.execute("SELECT 1")
                finally:
                    self._connected.clear()
                    self.backend_pid = None
                    await conn.close()
            except PermanentConnectionError:
                raise
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                # One warning per outage; the attempts while the server stays away are debug.
                log = logger.warning if attempt == 0 else logger.debug
                log("channel layer: listener connection lost or refused (%s); reconnecting", exc)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("channel layer: listener failed; reconnecting")
            await asyncio.sleep(backoff(attempt))
            attempt += 1

    async def _connect(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        try:
            return await psycopg.AsyncConnection.connect(self._conninfo(), autocommit=True)
        except psycopg.OperationalError as exc:
            refusal = permanent_refusal(exc)
            if refusal is None:
                raise
            logger.error("channel layer: the server refused the listener's connection: %s", refusal)
            raise PermanentConnectionError(refusal) from None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, PermanentConnectionError):
                await self._task
            self._task = None

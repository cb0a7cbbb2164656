"""A small pool of autocommit psycopg connections for the channel layer, living on the layer's loop.

Guarantees: at most ``max_size`` connections at once, of which ``keep`` stay open while idle
(the others close after ``max_idle`` seconds); a connection whose server side went away while it
was idle (PostgreSQL restart, ``pg_terminate_backend``) is noticed before it is used, by the
socket being readable, and replaced; :meth:`run` retries an operation with jittered backoff when
it certainly did not take effect (no connection, or the server said it was shutting down), and
always for operations declared idempotent; a connection the server refuses permanently
(authentication, a missing database, an unsupported startup parameter: pgerrors.py) fails at once
with :class:`PermanentConnectionError` and the server's message.

Does NOT: retry a non-idempotent statement whose outcome is unknown (the connection broke after
it was sent): the caller gets the error, as Channels' at-most-once contract allows; share
connections between event loops (the layer runs on one loop per process, see loopthread.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
import select
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import psycopg
from psycopg import pq

from iacplatform.pgerrors import PermanentConnectionError, permanent_refusal

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Errors that say the statement was refused before it ran: operator intervention, shutdown.
_NOT_EXECUTED_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


def backoff(attempt: int, *, base: float = 0.05, cap: float = 0.5) -> float:
    """Jittered exponential backoff: reconnecting replicas do not hit a restarted server in step."""
    return min(cap, base * (2**attempt)) * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not crypto


class ConnectionPool:
    def __init__(
        self,
        conninfo: Callable[[], str],
        *,
        max_size: int = 4,
        keep: int = 1,
        max_idle: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        session_settings: dict[str, str] | None = None,
    ) -> None:
        self._conninfo = conninfo
        # Set once per new connection (SET, not the ``options`` startup parameter PgBouncer refuses).
        self._session_settings = dict(session_settings or {})
        self._slots = asyncio.Semaphore(max_size)
        self._keep = keep
        self._max_idle = max_idle
        self._clock = clock
        self._idle: list[tuple[psycopg.AsyncConnection[tuple[object, ...]], float]] = []
        self.opened = 0
        self.in_use = 0

    @property
    def size(self) -> int:
        return len(self._idle) + self.in_use

    async def _connect(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        conn = await psycopg.AsyncConnection.connect(self._conninfo(), autocommit=True)
        if self._session_settings:
            try:
                await conn.execute(
                    "SELECT " + ", ".join(["set_config(%s, %s, false)"] * len(self._session_settings)),
                    [item for pair in self._session_settings.items() for item in pair],
                )
            except BaseException:
                await conn.close()
                raise
        self.opened += 1
        return conn

    @staticmethod
    def _looks_dead(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> bool:
        if conn.closed or conn.pgconn.status != pq.ConnStatus.OK:
            return True
        # An idle pooled connection has nothing to read unless the server sent a FATAL and hung up.
        try:
            readable, _, _ = select.select([conn.fileno()], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[tuple[object, ...]]]:
        async with self._slots:
            conn = None
            while self._idle:
                candidate, _ = self._idle.pop()
                if self._looks_dead(candidate):
                    await candidate.close()
                    continue
                conn = candidate
                break
            if conn is None:
                conn = await self._connect()
            self.in_use += 1
            try:
                yield conn
            finally:
                self.in_use -= 1
                if conn.closed or conn.info.transaction_status != pq.TransactionStatus.IDLE:
                    await conn.close()
                else:
                    self._idle.append((conn, self._clock()))
                    await self.reap()

    async def reap(self) -> None:
        """Close idle connections beyond ``keep`` that have been unused for ``max_idle`` seconds."""
        now = self._clock()
        while len(self._idle) > self._keep and now - self._idle[0][1] >= self._max_idle:
            conn, _ = self._idle.pop(0)
            await conn.close()

    async def run(
        self,
        operation: Callable[[psycopg.AsyncConnection[tuple[object, ...]]], Awaitable[T]],
        *,
        idempotent: bool,
        deadline: float,
        what: str,
    ) -> T:
        """Run ``operation`` on a pooled connection, retrying while the server is unreachable."""
        attempt = 0
        while True:
            sent = False
            try:
                async with self.connection() as conn:
                    sent = True
                    return await operation(conn)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                refusal = None if sent else permanent_refusal(exc)
                if refusal is not None:
                    logger.error("channel layer: %s: the server refused the connection: %s", what, refusal)
                    raise PermanentConnectionError(refusal) from None
                certain_not_done = not sent or getattr(exc, "sqlstate", None) in _NOT_EXECUTED_SQLSTATES
                if not (idempotent or certain_not_done) or self._clock() >= deadline:
                    raise
                log = logger.warning if attempt == 0 else logger.debug
                log("channel layer: %s failed (%s); retrying", what, exc)
            await asyncio.sleep(backoff(attempt))
            attempt += 1

    async def close(self) -> None:
        while self._idle:
            conn, _ = self._idle.pop()
            await conn.close()

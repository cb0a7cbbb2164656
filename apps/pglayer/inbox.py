"""Per-process bookkeeping of the channels this process is receiving on, and batched claiming.

Runs only on the layer's own loop (no locks needed). A receive registers a waiter on its channel,
asks the :class:`Claimer` to claim rows of that channel from the table, and waits for a
notification when there were none. Claims from many receives that arrive while one claim is in
flight are merged into the next single ``DELETE ... RETURNING`` (statements.CLAIM).

Guarantees: a channel's state exists only while a receive waits on it, a claim of it is in flight,
or it holds rows; rows claimed for a channel nobody receives any more are handed back to the table
under their own ids (order kept) instead of being kept in memory or dropped. Does NOT: decide delivery order
across senders (rows are ordered by id, i.e. by insertion).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import datetime
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NamedTuple

logger = logging.getLogger(__name__)

# How many rows one claim takes from a process-specific channel (it has a single consumer);
# competing consumers of a shared name take one row per waiting receive.
SPECIFIC_BATCH = 64


class Row(NamedTuple):
    id: int
    key: str
    body: bytes
    expires: datetime.datetime
    inline: bool = False  # came with its NOTIFY (inline.py), not from a claim


# Orders "this channel may have rows in the table we have not seen" marks against claim rounds.
_events = itertools.count(1)


def next_event() -> int:
    return next(_events)


@dataclass
class ChannelState:
    buffer: deque[Row] = field(default_factory=deque)
    waiters: list[asyncio.Event] = field(default_factory=list)
    idle_since: float = 0.0
    # Non-zero while rows of this channel may wait in the table unseen (a new state, a NOTIFY
    # without a body, a reconnect): nothing is handed out of the buffer until a claim that
    # started after the mark has completed, so an inline row never overtakes an older one.
    dirty: int = field(default_factory=next_event)

    def wake(self) -> None:
        for event in self.waiters:
            event.set()

    def mark_dirty(self) -> None:
        self.dirty = next_event()
        self.wake()

    def insert(self, row: Row) -> None:
        """Add ``row`` in id order (claims and inline NOTIFYs may interleave)."""
        if not self.buffer or self.buffer[-1].id < row.id:
            self.buffer.append(row)
        else:
            ids = [r.id for r in self.buffer]
            self.buffer.insert(bisect.bisect_left(ids, row.id), row)

    def pop_ready(self, now: datetime.datetime, *, dropped: Callable[[Row], None]) -> Row | None:
        """The next row that may be handed out. A claimed row always may (a claim returns the
        oldest rows of the channel); an inline one only when no older row can be unseen. Expired
        rows are dropped on the way (``dropped`` is told)."""
        while self.buffer:
            row = self.buffer[0]
            if row.inline and self.dirty:
                return None
            self.buffer.popleft()
            if row.expires > now:
                return row
            dropped(row)
        return None


ClaimFunc = Callable[[list[str], list[int]], Awaitable[list[tuple[Row, bool]]]]
UnclaimFunc = Callable[[list[Row]], None]


class Claimer:
    """Merges concurrent claim requests into one statement and distributes the rows it returns."""

    def __init__(
        self,
        *,
        channels: dict[str, ChannelState],
        claim: ClaimFunc,
        unclaim: UnclaimFunc,
        batch: int = SPECIFIC_BATCH,
    ) -> None:
        self._channels = channels
        self._claim = claim
        self._unclaim = unclaim
        self._batch = batch
        self._pending: dict[str, int] = {}
        self._in_flight: set[str] = set()
        self._next: asyncio.Future[dict[str, int]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.statements = 0

    async def claim(self, key: str, *, shared: bool) -> int:
        """Claim rows of ``key`` into its state's buffer; return how many rows (live or expired) it took."""
        self._pending[key] = self._pending.get(key, 0) + 1 if shared else self._batch
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        round_ = self._next
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="pglayer-claimer")
        # Shielded: one receive being cancelled must not cancel the claim others share.
        counts = await asyncio.shield(round_)
        return counts.get(key, 0)

    def claiming(self, key: str) -> bool:
        """Whether a claim of ``key`` is requested or in flight (its rows may still arrive)."""
        return key in self._pending or key in self._in_flight

    async def _run(self) -> None:
        while self._pending:
            pending, round_ = self._pending, self._next
            self._pending, self._next = {}, None
            assert round_ is not None
            self.statements += 1
            started = next_event()
            self._in_flight = set(pending)
            try:
                rows = await self._claim(list(pending), list(pending.values()))
            except Exception as exc:
                round_.set_exception(exc)
                continue
            finally:
                self._in_flight = set()
            round_.set_result(self._distribute(rows, pending, started))

    def _distribute(self, rows: list[tuple[Row, bool]], pending: dict[str, int], started: int) -> dict[str, int]:
        counts: dict[str, int] = {}
        orphans: list[Row] = []
        for row, deliver in sorted(rows, key=lambda item: item[0].id):
            counts[row.key] = counts.get(row.key, 0) + 1
            if not deliver:  # expired, or already delivered from its NOTIFY
                continue
            state = self._channels.get(row.key)
            if state is None:
                orphans.append(row)
                continue
            # A state without a receive (its receive was cancelled while this claim was in flight)
            # keeps the rows in order for the next receive; housekeeping hands them back if none
            # comes. Handing them back now would let that next receive's claim overtake them.
            state.insert(row)
        for key, limit in pending.items():
            state = self._channels.get(key)
            # A full batch may have left more rows behind: the channel stays dirty.
            if state is not None and state.dirty and state.dirty < started and counts.get(key, 0) < limit:
                state.dirty = 0
        if orphans:
            self._unclaim(orphans)
        return counts

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

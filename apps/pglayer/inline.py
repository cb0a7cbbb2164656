"""Small messages delivered straight from their NOTIFY, exactly once, within the channel's capacity.

For a process-specific channel the announcement carries the body itself when it is small
(statements.INLINE_MAX_BODY), so the owning process can deliver it without a round trip. The row
stays in the table while the body waits in this process's buffer, so it still counts towards
the channel's capacity: a consumer that stops reading makes ``send`` raise ``ChannelFull`` and
``group_send`` skip it after ``capacity`` messages, as for rows nobody has claimed, and its
memory holds at most what its table rows hold. The row is deleted once a receive hands the body
out, in batches: the delete waits ``linger`` seconds (5 ms) for more delivered ids unless
``DELETE_BATCH`` are already waiting, so a busy channel costs one DELETE per batch, not one per
message. Two other paths can also hand out that row: a claim (``DELETE ... RETURNING``) that runs
while the body is buffered or before the delete, and an inline NOTIFY that arrives after a claim
already delivered the row. This module keeps the ids that make both cases recognisable:

- *provisional*: rows whose body is buffered here from their NOTIFY and not handed out yet. A
  claim returning one of them drops it (the buffered body will be handed out) and records that
  the row has left the table (*claimed away*): if the body is then handed back instead, the row
  is put back into the table, else it simply stays there.
- *deleting*: rows handed out whose delete has not completed; a claim returning one drops it.
- *gone*: rows whose delete found nothing (a claim of ours took them, or they expired); a claim
  result processed later still recognises and drops them.
- *fenced*: rows a claim delivered; every claim also NOTIFYs ``sync <n>`` to its own process, and
  notifications arrive in commit order, so once ``sync <n>`` arrives no older inline NOTIFY of
  those rows can still come, and the fence is dropped.
Entries not released that way (a NOTIFY lost with the connection) are dropped after ``keep``
seconds, longer than any message lives.

Guarantees: with these sets checked on every path, each row is delivered at most once by this
process, and a buffered body's row is in the table (or put back) until it is handed out. Does
NOT: apply to shared channel names (competing consumers always claim).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

from apps.pglayer.inbox import Row

logger = logging.getLogger(__name__)

DELETE_LINGER = 0.005
DELETE_BATCH = 100

DeleteFunc = Callable[[list[int]], Awaitable[set[int]]]
UnclaimFunc = Callable[[list[Row]], None]


class InlineDeliveries:
    def __init__(self, *, delete: DeleteFunc, unclaim: UnclaimFunc, keep: float, linger: float = DELETE_LINGER) -> None:
        self._delete = delete
        self._linger = linger
        self._unclaim = unclaim
        self._keep = keep
        self._provisional: dict[int, Row] = {}
        self._claimed_away: set[int] = set()
        self._deleting: set[int] = set()
        self._to_delete: list[int] = []
        self._gone: dict[int, float] = {}
        self._fences: dict[int, tuple[float, list[int]]] = {}
        self._fenced: set[int] = set()
        self._sync = itertools.count(1)
        self._passed = 0  # the newest "sync <n>" seen (they arrive in commit order)
        self._task: asyncio.Task[None] | None = None

    # -- ids seen from the other paths

    def known(self, row_id: int) -> bool:
        """True when an inline NOTIFY of ``row_id`` must be ignored (buffered, out, or claimed)."""
        return row_id in self._provisional or row_id in self._deleting or row_id in self._fenced or row_id in self._gone

    def next_fence(self) -> int:
        return next(self._sync)

    def claimed(self, fence: int, rows: list[Row]) -> list[Row]:
        """Filter what a claim returned: drop rows buffered or out inline; fence the rest."""
        kept: list[Row] = []
        for row in rows:
            if row.id in self._provisional:
                self._claimed_away.add(row.id)  # its buffered body is handed out (or put back)
                continue
            if row.id in self._deleting:
                continue  # out already; the batched delete will find nothing for it
            if self._gone.pop(row.id, None) is not None:
                continue
            kept.append(row)
        # The claim's own "sync" may have arrived before its rows were processed: then no inline
        # NOTIFY of them can still come, and there is nothing to fence.
        if kept and fence > self._passed:
            self._fences[fence] = (time.monotonic(), [row.id for row in kept])
            self._fenced.update(row.id for row in kept)
        return kept

    def fence_passed(self, fence: int) -> None:
        self._passed = max(self._passed, fence)
        for number in [n for n in self._fences if n <= fence]:
            _, ids = self._fences.pop(number)
            self._fenced.difference_update(ids)

    # -- rows that arrived inline

    def arrived(self, row: Row) -> None:
        """Its body is buffered; its row stays in the table (and in the channel's count)."""
        self._provisional[row.id] = row

    def provisional(self, row_id: int) -> bool:
        return row_id in self._provisional

    def delivered(self, row: Row) -> None:
        """A receive handed the buffered body out: delete its row (unless a claim took it)."""
        if self._provisional.pop(row.id, None) is None:
            return
        if row.id in self._claimed_away:  # a claim deleted its row already
            self._claimed_away.discard(row.id)
            return
        self._deleting.add(row.id)
        self._to_delete.append(row.id)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="pglayer-inline-delete")

    def abandon(self, row: Row) -> None:
        """Its receiver left before it was handed out: leave its row in (or put it back into) the table."""
        if self._provisional.pop(row.id, None) is None:
            self._unclaim([row])  # handed out once and given back: its row may be deleted already
        elif row.id in self._claimed_away:
            self._claimed_away.discard(row.id)
            self._unclaim([row])

    def forget(self, row: Row) -> None:
        """A buffered body dropped without delivery (expired, flushed): its row goes with the table's."""
        self._provisional.pop(row.id, None)
        self._claimed_away.discard(row.id)

    async def _run(self) -> None:
        while self._to_delete:
            if self._linger and len(self._to_delete) < DELETE_BATCH:
                await asyncio.sleep(self._linger)
            ids, self._to_delete = self._to_delete, []
            try:
                deleted = await self._delete(ids)
            except Exception:
                logger.exception("channel layer: deleting %d delivered message(s) failed", len(ids))
                deleted = set()
            now = time.monotonic()
            for row_id in ids:
                self._deleting.discard(row_id)
                if row_id not in deleted:
                    self._gone[row_id] = now

    def purge(self, now: float) -> None:
        limit = now - self._keep
        for row_id in [i for i, at in self._gone.items() if at < limit]:
            del self._gone[row_id]
        for number in [n for n, (at, _) in self._fences.items() if at < limit]:
            _, ids = self._fences.pop(number)
            self._fenced.difference_update(ids)

    def sizes(self) -> dict[str, int]:
        return {
            "inline_provisional": len(self._provisional),
            "inline_deleting": len(self._deleting),
            "inline_gone": len(self._gone),
            "inline_fenced": len(self._fenced),
        }

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            await asyncio.wait_for(asyncio.shield(self._task), 5)

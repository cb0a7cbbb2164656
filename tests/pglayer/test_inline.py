"""Exactly once when a message can arrive both with its NOTIFY and through a claim (inline.py)."""

from __future__ import annotations

import asyncio
import base64
import datetime

from apps.pglayer.core import PostgresChannelLayer
from apps.pglayer.inbox import ChannelState, Row
from apps.pglayer.inline import InlineDeliveries
from tests.pglayer.conftest import query

LATER = datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC)


def _row(row_id: int, *, inline: bool = True) -> Row:
    return Row(row_id, "p:c.x!y", b"body", LATER, inline=inline)


class FakeTable:
    """Stands in for the delete statement: which ids are still "in the table"."""

    def __init__(self, ids: set[int]) -> None:
        self.ids = ids
        self.unclaimed: list[Row] = []
        self.deletes: list[list[int]] = []

    async def delete(self, ids: list[int]) -> set[int]:
        self.deletes.append(ids)
        found = self.ids & set(ids)
        self.ids -= found
        return found


async def test_a_claim_returning_a_row_already_out_inline_drops_it() -> None:
    table = FakeTable({1, 2})
    inline = InlineDeliveries(delete=table.delete, unclaim=table.unclaimed.extend, keep=60)
    inline.arrived(_row(1))
    inline.delivered(_row(1))  # handed out from its NOTIFY, delete not yet run
    kept = inline.claimed(inline.next_fence(), [_row(1, inline=False), _row(2, inline=False)])
    assert [row.id for row in kept] == [2]
    await inline.stop()
    assert not inline.provisional(1)


async def test_a_buffered_row_stays_in_the_table_until_it_is_handed_out() -> None:
    table = FakeTable({1})
    inline = InlineDeliveries(delete=table.delete, unclaim=table.unclaimed.extend, keep=60, linger=0)
    inline.arrived(_row(1))
    await asyncio.sleep(0.01)
    assert table.deletes == [] and table.ids == {1}  # still counts towards the channel's capacity
    inline.delivered(_row(1))
    await inline.stop()
    assert table.ids == set()


async def test_a_claim_of_a_buffered_row_drops_it_and_the_buffered_body_is_handed_out_once() -> None:
    table = FakeTable(set())  # the claim deleted row 1 in the database
    inline = InlineDeliveries(delete=table.delete, unclaim=table.unclaimed.extend, keep=60)
    inline.arrived(_row(1))
    assert inline.claimed(inline.next_fence(), [_row(1, inline=False)]) == []
    inline.delivered(_row(1))
    await inline.stop()
    assert table.deletes == []  # nothing left to delete
    assert not inline.known(1)


async def test_a_claim_processed_after_the_inline_delete_found_nothing_still_drops_it() -> None:
    table = FakeTable(set())  # a claim of ours already took row 1 in the database
    inline = InlineDeliveries(delete=table.delete, unclaim=table.unclaimed.extend, keep=60)
    inline.arrived(_row(1))
    inline.delivered(_row(1))
    await inline.stop()  # the delete ran and found nothing
    assert inline.known(1)
    assert inline.claimed(inline.next_fence(), [_row(1, inline=False)]) == []
    assert not inline.known(1)


async def test_an_inline_notify_of_a_claimed_row_is_ignored_until_the_claims_sync() -> None:
    inline = InlineDeliveries(delete=FakeTable(set()).delete, unclaim=lambda rows: None, keep=60)
    fence = inline.next_fence()
    inline.claimed(fence, [_row(5, inline=False)])
    assert inline.known(5)
    inline.fence_passed(fence)
    assert not inline.known(5)


async def test_a_sync_seen_before_the_claims_rows_leaves_no_fence() -> None:
    inline = InlineDeliveries(delete=FakeTable(set()).delete, unclaim=lambda rows: None, keep=60)
    fence = inline.next_fence()
    inline.fence_passed(fence)
    inline.claimed(fence, [_row(6, inline=False)])
    assert not inline.known(6)
    assert inline.sizes()["inline_fenced"] == 0


async def test_abandoned_inline_rows_stay_in_or_return_to_the_table() -> None:
    table = FakeTable({1, 2})
    inline = InlineDeliveries(delete=table.delete, unclaim=table.unclaimed.extend, keep=60, linger=0)
    first, second = _row(1), _row(2)
    inline.arrived(first)
    inline.abandon(first)  # never handed out: its row simply stays
    assert table.ids == {1, 2} and table.unclaimed == []
    inline.arrived(second)
    table.ids.discard(2)
    inline.claimed(inline.next_fence(), [_row(2, inline=False)])  # a claim took its row meanwhile
    inline.abandon(second)
    await inline.stop()
    assert table.unclaimed == [second]  # put back
    assert not inline.provisional(1) and not inline.provisional(2)


async def test_rows_delivered_close_together_are_deleted_in_one_statement() -> None:
    table = FakeTable(set(range(1, 251)))
    inline = InlineDeliveries(delete=table.delete, unclaim=table.unclaimed.extend, keep=60, linger=0.05)
    for row_id in range(1, 4):
        inline.arrived(_row(row_id))
        inline.delivered(_row(row_id))
        await asyncio.sleep(0.001)
    await inline.stop()
    assert table.deletes == [[1, 2, 3]]
    # A full batch does not wait for the linger.
    for row_id in range(4, 251):
        inline.arrived(_row(row_id))
        inline.delivered(_row(row_id))
    await asyncio.wait_for(inline.stop(), 0.04)
    assert table.deletes[1] == list(range(4, 251))
    assert table.ids == set()


async def test_forgotten_entries_are_purged_after_keep_seconds() -> None:
    inline = InlineDeliveries(delete=FakeTable(set()).delete, unclaim=lambda rows: None, keep=60)
    inline.claimed(inline.next_fence(), [_row(7, inline=False)])  # its sync never came (reconnect)
    inline.arrived(_row(8))
    inline.delivered(_row(8))
    await inline.stop()
    inline.purge(now=1e12)
    assert inline.sizes() == {"inline_provisional": 0, "inline_deleting": 0, "inline_gone": 0, "inline_fenced": 0}


async def test_the_notify_of_a_row_a_claim_delivered_is_ignored_by_the_layer(make_layer) -> None:
    layer: PostgresChannelLayer = make_layer()
    channel = await layer.new_channel()
    key = layer._key(channel)
    await layer.send(channel, {"n": 1})  # nobody receives yet: the row waits, its NOTIFY is not heard
    [(row_id,)] = await query("SELECT id FROM pglayer_message WHERE channel = %s", [key])
    body = base64.b64encode(layer.serialize({"n": 1})).decode()

    async def claim_then_late_notify() -> tuple[int, int]:
        # On the layer's loop, with no listener running: the claim's "sync" cannot arrive, as
        # when the real NOTIFY is still in flight behind the claim.
        state = layer._channels[key] = ChannelState()
        rows = await layer._claim_rows([key], [64])
        assert [(row.id, deliver) for row, deliver in rows] == [(row_id, True)]
        layer._on_notify("%s %d %s" % (key, row_id, body))
        ignored = len(state.buffer)
        layer._on_notify("%s %d %s" % (key, row_id + 1000, body))  # an unknown id is delivered
        del layer._channels[key]
        return ignored, len(state.buffer)

    assert await layer._call(claim_then_late_notify()) == (0, 1)

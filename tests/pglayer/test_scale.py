"""20,000 channels, each receiving once: nothing of them is left anywhere afterwards."""

from __future__ import annotations

import asyncio
import datetime
import gc

import psutil
from asgiref.sync import sync_to_async
from django.db import connection
from django.utils import timezone

from apps.coordination.fencing import Tick, raise_epoch
from apps.pglayer.core import PostgresChannelLayer
from apps.pglayer.expiry import collect_expired
from tests.pglayer.conftest import LayerFactory, count, query

CHANNELS = 20_000
CHUNK = 2_000
ADVISORY = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"


async def _store(layer: PostgresChannelLayer, channels: list[str], first: int) -> None:
    """Messages for ``channels`` written in one statement: this test is about the receiving side
    (send's own statement is covered in test_core), and 20,000 sends one by one would be slow."""
    await query(
        "INSERT INTO pglayer_message (channel, body, expires) "
        "SELECT unnest(%s::text[]), unnest(%s::bytea[]), now() + interval '1 minute'",
        [[layer._key(c) for c in channels], [layer.serialize({"n": first + i}) for i in range(len(channels))]],
    )


async def _chunk(layer: PostgresChannelLayer, number: int) -> None:
    channels = [await layer.new_channel() for _ in range(CHUNK)]
    await _store(layer, channels, number * CHUNK)
    received = await asyncio.gather(*(layer.receive(c) for c in channels))
    assert [m["n"] for m in received] == [number * CHUNK + i for i in range(CHUNK)]


def _footprint() -> tuple[int, int]:
    gc.collect()
    return len(gc.get_objects()), psutil.Process().memory_info().rss


async def test_twenty_thousand_channels_each_receive_once_then_nothing_is_left(make_layer: LayerFactory) -> None:
    layer = make_layer()
    locks_before = await count(ADVISORY)
    await _chunk(layer, 0)  # warm-up: listener, pool, caches and allocator pools exist from here on
    await layer._call(layer.housekeeping_step(1e12))
    objects_before, rss_before = _footprint()
    for number in range(1, CHANNELS // CHUNK):
        await _chunk(layer, number)
    # Idle channels' states are freed by the layer's housekeeping (every 2 s, after 5 s idle).
    await layer._call(layer.housekeeping_step(1e12))
    objects_after, rss_after = _footprint()

    assert layer.stats()["channels_in_memory"] == 0
    # 18,000 more channels: a leak of one object per channel would show 18,000 here (channels-postgres
    # keeps a queue and a lock flag per channel ever seen).
    assert objects_after - objects_before < 2_000, (objects_before, objects_after)
    # RSS is the whole process (other threads of the suite allocate too): a loose bound, below the
    # ~61 MB that channels-postgres's ~3.4 KB per channel ever seen would add here.
    assert rss_after - rss_before < 40 * 1024 * 1024, (rss_before, rss_after)
    assert await count(ADVISORY) == locks_before
    assert await count("SELECT count(*) FROM pglayer_message") == 0
    # Claims were merged: one statement served many receives.
    assert layer.stats()["claim_statements"] < CHANNELS / 20

    # Abandoned channels (sent to and joined to a group, never received) are gone after expiry + GC.
    abandoned = [await layer.new_channel() for _ in range(100)]
    for channel in abandoned:
        await layer.send(channel, {"never": "received"})
        await layer.group_add("abandoned", channel)

    def gc_after_expiry() -> None:
        try:
            raise_epoch(name="lease", epoch=1, holder="me")
            later = timezone.now() + datetime.timedelta(days=2)
            collect_expired(Tick(job="channel_layer_gc", holder="me", lease="lease", epoch=1), now=later)
        finally:
            connection.close()

    await sync_to_async(gc_after_expiry)()
    assert await count("SELECT count(*) FROM pglayer_message") == 0
    assert await count("SELECT count(*) FROM pglayer_groupmembership") == 0

"""Capacity on every delivery path, order after a cancelled claim, and a layer used again after close()."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull

from apps.pglayer.core import PostgresChannelLayer
from apps.pglayer.inbox import Row
from tests.pglayer.conftest import LayerFactory, count


@pytest.fixture(params=["own thread", "server loop"])
def layer_loop(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def stored(layer: PostgresChannelLayer, channel: str) -> int:
    return await count("SELECT count(*) FROM pglayer_message WHERE channel = %s", [layer._key(channel)])


async def settled(layer: PostgresChannelLayer, channel: str, *, buffered: int) -> None:
    """Until ``buffered`` rows of ``channel`` came in from their NOTIFYs (and any delete ran)."""
    key = layer._key(channel)
    for _ in range(1000):
        state = layer._channels.get(key)
        if state is not None and len(state.buffer) >= buffered and not layer._inline._to_delete:
            await asyncio.sleep(0.05)  # a delete already sent finishes
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the NOTIFYs of %s never arrived" % channel)


async def a_consumer_that_stopped_reading(layer: PostgresChannelLayer) -> str:
    """A channel whose receiver took one message and then stopped: its state stays in memory for
    a few seconds, fed by NOTIFYs (small bodies ride the NOTIFY)."""
    channel = await layer.new_channel()
    await layer.send(channel, {"n": "first"})
    assert await layer.receive(channel) == {"n": "first"}
    return channel


async def test_inline_deliveries_count_against_capacity_so_send_raises_channel_full(make_layer: LayerFactory) -> None:
    layer = make_layer(capacity=5)
    channel = await a_consumer_that_stopped_reading(layer)
    for n in range(5):
        await layer.send(channel, {"n": n})
    await settled(layer, channel, buffered=5)
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"n": 5})
    assert await stored(layer, channel) == 5  # buffered, and still in the table until received
    assert [(await layer.receive(channel))["n"] for _ in range(5)] == [0, 1, 2, 3, 4]
    for _ in range(1000):  # handed out, then deleted in a batch a few milliseconds later
        if await stored(layer, channel) == 0:
            break
        await asyncio.sleep(0.005)
    await layer.send(channel, {"n": 6})  # room again once received
    assert await layer.receive(channel) == {"n": 6}


async def test_group_send_skips_a_member_whose_inline_backlog_is_full(make_layer: LayerFactory) -> None:
    layer = make_layer(capacity=2)
    channel = await a_consumer_that_stopped_reading(layer)
    await layer.group_add("g", channel)
    for n in range(2):
        await layer.group_send("g", {"n": n})
    await settled(layer, channel, buffered=2)
    await layer.group_send("g", {"n": "skipped"})
    assert layer.group_send_full == 1
    assert [(await layer.receive(channel))["n"] for _ in range(2)] == [0, 1]


async def test_a_consumer_that_stops_reading_holds_at_most_capacity_messages(make_layer: LayerFactory) -> None:
    layer = make_layer(capacity=20)
    channel = await a_consumer_that_stopped_reading(layer)
    accepted = 0
    for n in range(300):
        try:
            await layer.send(channel, {"n": n, "pad": "x" * 1000})
            accepted += 1
        except ChannelFull:
            pass
    await settled(layer, channel, buffered=min(accepted, 20))
    state = layer._channels[layer._key(channel)]
    assert accepted == 20
    assert len(state.buffer) <= 20
    assert layer.stats()["inline_provisional"] <= 20
    # Idle past the buffer's lifetime: the rows are still in the table, no more than capacity.
    await layer._call(layer.housekeeping_step(1e12))
    assert layer.stats()["channels_in_memory"] == 0
    assert await stored(layer, channel) == 20
    assert [(await layer.receive(channel))["n"] for _ in range(20)] == list(range(20))


async def test_rows_of_a_claim_whose_receive_was_cancelled_are_not_overtaken(make_layer: LayerFactory) -> None:
    layer = make_layer()
    channel = await layer.new_channel()
    for n in range(2):
        await layer.send(channel, {"n": n})
    claim_started, release_claim, release_unclaim = asyncio.Event(), asyncio.Event(), asyncio.Event()
    caller = asyncio.get_running_loop()
    claim = layer._claimer._claim
    unclaim = layer._unclaim_rows

    async def on_caller(event: asyncio.Event) -> None:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(event.wait(), caller))

    async def slow_claim(keys: list[str], limits: list[int]) -> list[tuple[Row, bool]]:
        rows = await claim(keys, limits)
        caller.call_soon_threadsafe(claim_started.set)
        await on_caller(release_claim)  # the claim committed; its reply is "in flight"
        return rows

    async def slow_unclaim(rows: list[Row]) -> None:
        await on_caller(release_unclaim)
        await unclaim(rows)

    layer._claimer._claim = slow_claim
    layer._unclaim_rows = slow_unclaim  # type: ignore[method-assign]
    first = asyncio.ensure_future(layer.receive(channel))
    await asyncio.wait_for(claim_started.wait(), 10)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await layer.send(channel, {"n": 2})
    release_claim.set()
    await asyncio.sleep(0.1)  # the claim's rows are distributed
    layer._claimer._claim = claim
    second = asyncio.ensure_future(layer.receive(channel))
    try:
        assert (await asyncio.wait_for(second, 10))["n"] == 0
    finally:
        release_unclaim.set()
    assert [(await layer.receive(channel))["n"] for _ in range(2)] == [1, 2]


async def test_a_closed_layer_receives_again(layer: PostgresChannelLayer) -> None:
    channel, busy = await layer.new_channel(), await layer.new_channel()
    # Enough at once that sends queue for the pool's connections, and a receive that waits for
    # the listener: both wait on asyncio primitives of the loop the layer runs on.
    await asyncio.gather(*(layer.send(busy, {"n": n}) for n in range(10)))
    receive = asyncio.ensure_future(layer.receive(channel))
    await layer.send(channel, {"n": 1})
    assert await receive == {"n": 1}
    await layer.close()
    await asyncio.gather(*(layer.send(busy, {"n": n}) for n in range(10)))
    await layer._call(layer._listener.ready())
    assert layer._listener.connected
    await layer.send(channel, {"n": 2})
    assert await asyncio.wait_for(layer.receive(channel), 10) == {"n": 2}
    await layer.group_add("g", channel)
    await layer.group_send("g", {"n": 3})
    assert await asyncio.wait_for(layer.receive(channel), 10) == {"n": 3}


def test_the_cached_layer_works_again_after_close_all_layers(transactional_db: None, settings: Any) -> None:
    from channels.layers import channel_layers, get_channel_layer

    from apps.pglayer.core import close_all_layers

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "apps.pglayer.core.PostgresChannelLayer", "CONFIG": {}}}
    channel_layers.backends.pop("default", None)
    try:
        layer = get_channel_layer()
        assert isinstance(layer, PostgresChannelLayer)
        send: Callable[..., Awaitable[None]] = layer.send
        channel = async_to_sync(layer.new_channel)()
        async_to_sync(send)(channel, {"n": 1})
        assert async_to_sync(layer.receive)(channel) == {"n": 1}
        close_all_layers()
        again = get_channel_layer()
        assert again is layer
        async_to_sync(again.send)(channel, {"n": 2})
        assert async_to_sync(again.receive)(channel) == {"n": 2}
    finally:
        close_all_layers()
        channel_layers.backends.pop("default", None)

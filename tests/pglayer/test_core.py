"""The channel layer's API on a real PostgreSQL (single process; see test_processes.py for more)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull
from cryptography.fernet import InvalidToken
from django.db import connection

from apps.pglayer import statements
from apps.pglayer.core import PostgresChannelLayer
from apps.pglayer.loopthread import treat_as_server_loop
from tests.pglayer.conftest import LayerFactory, count, query, rows_left

BIG = "x" * 9000  # over NOTIFY's 8000-byte payload limit


@pytest.fixture(params=["own thread", "server loop"])
def layer_loop(request: pytest.FixtureRequest) -> str:
    """Every test of the API runs with the layer on its own thread and on the caller's (server) loop."""
    return str(request.param)


async def waiting(layer: PostgresChannelLayer, channel: str) -> None:
    """Until a receive on ``channel`` is registered and the listener is up (no sleeps for timing)."""
    key = layer._key(channel)
    for _ in range(2000):
        state = layer._channels.get(key)
        claimer = layer._claimer._task
        if state is not None and state.waiters and layer._listener.connected and claimer and claimer.done():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("receive on %s never started waiting" % channel)


async def test_a_message_sent_before_the_first_receive_is_delivered(layer: PostgresChannelLayer) -> None:
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "hello", "n": 1})
    assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "hello", "n": 1}


async def test_a_waiting_receive_is_woken_by_send_and_the_row_is_deleted(layer: PostgresChannelLayer) -> None:
    channel = await layer.new_channel()
    receive = asyncio.ensure_future(layer.receive(channel))
    await waiting(layer, channel)
    await layer.send(channel, {"type": "late"})
    assert await asyncio.wait_for(receive, 5) == {"type": "late"}
    assert await rows_left() == 0


async def test_messages_arrive_once_and_in_order_small_and_large(layer: PostgresChannelLayer) -> None:
    channel = await layer.new_channel()
    sent = [{"type": "m", "n": n, "pad": BIG if n % 3 == 0 else ""} for n in range(60)]

    async def receive_all() -> list[dict[str, object]]:
        return [await layer.receive(channel) for _ in sent]

    receiver = asyncio.ensure_future(receive_all())
    for message in sent:
        await layer.send(channel, message)
    assert await asyncio.wait_for(receiver, 10) == sent
    # The channel's state stays while its consumer keeps receiving, and goes once it is idle.
    assert layer.stats()["channels_in_memory"] == 1
    await layer._call(layer.housekeeping_step(1e12))
    assert layer.stats()["channels_in_memory"] == 0
    # Rows delivered from their NOTIFY are deleted in batches a few milliseconds later.
    for _ in range(200):
        if layer.stats()["inline_provisional"] == 0:
            break
        await asyncio.sleep(0.01)
    assert layer.stats()["inline_provisional"] == 0


async def test_group_send_reaches_every_member_once_through_their_notify_channel(make_layer: LayerFactory) -> None:
    a, b = make_layer(), make_layer()
    ca, cb = await a.new_channel(), await b.new_channel()
    await a.group_add("room", ca)
    await b.group_add("room", cb)
    await b.group_add("room", cb)  # idempotent
    ra, rb = asyncio.ensure_future(a.receive(ca)), asyncio.ensure_future(b.receive(cb))
    await waiting(a, ca)
    await waiting(b, cb)
    # Both receives already waited on an empty table: only the NOTIFY that GROUP_SEND addresses
    # in SQL to each owner's process channel can wake them.
    await a.group_send("room", {"type": "big", "pad": BIG})
    assert (await asyncio.wait_for(ra, 5))["pad"] == BIG
    assert (await asyncio.wait_for(rb, 5))["pad"] == BIG
    await b.group_discard("room", cb)
    await a.group_send("room", {"type": "second"})
    assert await asyncio.wait_for(a.receive(ca), 5) == {"type": "second"}
    assert await rows_left("SELECT count(*) FROM pglayer_message WHERE channel <> %s", [a._key(ca)]) == 0


def test_the_sql_and_python_notify_channel_names_agree(transactional_db: None) -> None:
    key = "pre:specific.abc123!xyz"
    expected = statements.process_notify_channel("pre", "abc123")
    sql = "SELECT " + statements._NOTIFY_TARGET.format(col="%(key)s")
    with connection.cursor() as cursor:
        cursor.execute(sql, {"key": key, "prefix": "pre", "shared": "shared-x"})
        assert cursor.fetchone() == (expected,)
        cursor.execute(sql, {"key": "pre:plain.name", "prefix": "pre", "shared": "shared-x"})
        assert cursor.fetchone() == ("shared-x",)
    assert statements.client_part(key) == "abc123"


async def test_send_past_capacity_raises_channel_full_and_stores_nothing_more(make_layer: LayerFactory) -> None:
    layer = make_layer(capacity=3)
    channel = await layer.new_channel()
    for n in range(3):
        await layer.send(channel, {"n": n})
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"n": 3})
    assert await count("SELECT count(*) FROM pglayer_message WHERE channel = %s", [layer._key(channel)]) == 3
    assert [(await layer.receive(channel))["n"] for _ in range(3)] == [0, 1, 2]
    await layer.send(channel, {"n": 4})  # room again once received


async def test_group_send_skips_full_members_and_counts_them(make_layer: LayerFactory) -> None:
    layer = make_layer(capacity=1)
    full, free = await layer.new_channel(), await layer.new_channel()
    await layer.send(full, {"n": "first"})
    await layer.group_add("g", full)
    await layer.group_add("g", free)
    await layer.group_send("g", {"n": "group"})
    assert layer.group_send_full == 1
    assert await layer.receive(free) == {"n": "group"}
    assert await layer.receive(full) == {"n": "first"}
    assert await rows_left() == 0


async def test_ten_receives_starting_at_once_share_one_listener(layer: PostgresChannelLayer) -> None:
    channels = [await layer.new_channel() for _ in range(10)]
    receives = [asyncio.ensure_future(layer.receive(c)) for c in channels]
    for channel in channels:
        await waiting(layer, channel)
    for n, channel in enumerate(channels):
        await layer.send(channel, {"n": n})
    assert [m["n"] for m in await asyncio.wait_for(asyncio.gather(*receives), 5)] == list(range(10))
    assert layer.stats()["listener_connections"] == 1
    listeners = await _count_sessions("%/listen:" + layer.client_prefix)
    assert listeners == 1, "one LISTEN connection, found %d" % listeners
    # Nothing is left to deliver twice: the next receive waits.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(channels[0]), 0.3)


async def _count_sessions(pattern: str) -> int:
    return await count(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE %s",
        [pattern],
    )


async def test_shared_channel_consumers_compete_and_each_message_goes_to_one(make_layer: LayerFactory) -> None:
    a, b = make_layer(), make_layer()  # two processes' layers
    got: list[tuple[str, int]] = []

    async def consume(layer: PostgresChannelLayer, name: str) -> None:
        while True:
            message = await layer.receive("work.queue")
            got.append((name, message["n"]))

    consumers = [asyncio.ensure_future(consume(a, "a")), asyncio.ensure_future(consume(b, "b"))]
    for n in range(100):
        await a.send("work.queue", {"n": n})
    for _ in range(500):
        if len(got) >= 100:
            break
        await asyncio.sleep(0.01)
    for consumer in consumers:
        consumer.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)
    assert sorted(n for _, n in got) == list(range(100))
    # Each consumer sees its share in order.
    for name in ("a", "b"):
        mine = [n for who, n in got if who == name]
        assert mine == sorted(mine)


async def test_a_cancelled_receive_frees_its_channel_and_loses_nothing(layer: PostgresChannelLayer) -> None:
    channel = await layer.new_channel()
    receive = asyncio.ensure_future(layer.receive(channel))
    await waiting(layer, channel)
    receive.cancel()
    with pytest.raises(asyncio.CancelledError):
        await receive
    for _ in range(200):
        if layer.stats()["channels_in_memory"] == 0:
            break
        await asyncio.sleep(0.005)
    assert layer.stats()["channels_in_memory"] == 0
    await layer.send(channel, {"n": 1})
    assert await layer.receive(channel) == {"n": 1}


async def test_claimed_rows_of_an_abandoned_channel_go_back_to_the_table_in_order(layer: PostgresChannelLayer) -> None:
    channel = await layer.new_channel()
    for n in range(3):
        await layer.send(channel, {"n": n})
    assert await layer.receive(channel) == {"n": 0}  # claims all three, keeps two in memory
    assert layer.stats()["channels_in_memory"] == 1
    await layer._call(layer.housekeeping_step(1e12))
    assert layer.stats()["channels_in_memory"] == 0
    for _ in range(200):
        if await count("SELECT count(*) FROM pglayer_message WHERE channel = %s", [layer._key(channel)]) == 2:
            break
        await asyncio.sleep(0.005)
    assert [await layer.receive(channel) for _ in range(2)] == [{"n": 1}, {"n": 2}]


async def test_a_give_back_after_the_caller_left_returns_the_row(layer: PostgresChannelLayer) -> None:
    channel = await layer.new_channel()
    await layer.send(channel, {"n": "kept"})
    row = await layer._call(layer._receive(layer._key(channel)))  # claimed, as if the caller had gone
    layer._thread.loop.call_soon_threadsafe(layer._give_back, row)
    assert await asyncio.wait_for(layer.receive(channel), 5) == {"n": "kept"}


async def test_on_the_server_loop_calls_run_in_place_and_other_threads_still_reach_it(
    make_layer: LayerFactory, layer_loop: str
) -> None:
    layer = make_layer()
    channel = await layer.new_channel()
    await layer.send(channel, {"n": 0})
    assert await asyncio.wait_for(layer.receive(channel), 5) == {"n": 0}
    threaded = any(t.name == "pglayer-" + layer.client_prefix for t in threading.enumerate())
    assert threaded == (layer_loop == "own thread")

    # A sync caller on another thread (async_to_sync on a fresh loop there) submits to the layer's loop.
    def worker() -> None:
        async_to_sync(layer.send)(channel, {"n": 1})

    await asyncio.to_thread(worker)
    assert await asyncio.wait_for(layer.receive(channel), 5) == {"n": 1}

    # event_loop="own": a thread of its own even when called on the server's loop.
    own = make_layer(event_loop="own")
    own_channel = await own.new_channel()
    await own.send(own_channel, {"n": 2})
    assert await asyncio.wait_for(own.receive(own_channel), 5) == {"n": 2}
    assert not own._thread.adopted


def test_a_layer_whose_server_loop_has_closed_says_so(transactional_db: None) -> None:
    layer = PostgresChannelLayer(prefix="gone")

    async def serve() -> None:
        treat_as_server_loop(asyncio.get_running_loop())
        await layer.group_discard("g", "c.x!y")  # one statement, on this loop
        await layer._pool.close()  # (no listener was started: nothing else holds a connection)

    asyncio.run(serve())
    with pytest.raises(RuntimeError, match="server's event loop it ran on has closed"):
        async_to_sync(layer.group_discard)("g", "c.x!y")
    layer.close_sync(timeout=1)  # nothing left to run: lets go of the loop without waiting
    assert not layer._thread.started


def test_sync_callers_through_async_to_sync_work_on_fresh_loops(transactional_db: None) -> None:
    layer = PostgresChannelLayer(prefix="sync")
    try:
        channel = async_to_sync(layer.new_channel)()
        results: list[dict[str, object]] = []

        def worker() -> None:
            for n in range(5):
                async_to_sync(layer.send)(channel, {"n": n})
                results.append(async_to_sync(layer.receive)(channel))

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join(20)
        assert results == [{"n": n} for n in range(5)]
    finally:
        async_to_sync(layer.close)()


async def test_names_up_to_channels_limits_work(layer: PostgresChannelLayer) -> None:
    group = "g" * 99
    channel = "c." + "n" * 97
    await layer.group_add(group, channel)
    await layer.group_send(group, {"type": "long"})
    assert await layer.receive(channel) == {"type": "long"}
    specific = await layer.new_channel("p" * 20)
    specific = specific + "s" * (99 - len(specific))
    await layer.send(specific, {"type": "long"})
    assert await layer.receive(specific) == {"type": "long"}


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda layer: layer.send("ok", ["not", "a", "dict"]), TypeError),
        (lambda layer: layer.send("ok", {"__asgi_channel__": "x"}), ValueError),
        (lambda layer: layer.send("bad name", {}), TypeError),
        (lambda layer: layer.send("c" * 100, {}), TypeError),
        (lambda layer: layer.group_add("bad group!", "ok"), TypeError),
        (lambda layer: layer.group_send("g" * 100, {}), TypeError),
        (lambda layer: layer.receive("specific.someoneelse!abc"), ValueError),
    ],
)
async def test_bad_input_gets_a_clear_error_and_stores_nothing(layer: PostgresChannelLayer, call, error) -> None:
    with pytest.raises(error):
        await call(layer)
    assert await count("SELECT count(*) FROM pglayer_message") == 0
    assert await count("SELECT count(*) FROM pglayer_groupmembership") == 0


@pytest.mark.parametrize(
    "config",
    [
        {"capacity": 0},
        {"expiry": 0},
        {"group_expiry": -1},
        {"prefix": "has space"},
        {"prefix": ""},
        {"database": ""},
        {"symmetric_encryption_keys": "one-key-not-a-list"},
        {"event_loop": "main"},
    ],
)
def test_bad_configuration_is_refused(config: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="channel layer"):
        PostgresChannelLayer(**config)  # type: ignore[arg-type]


def test_unknown_configuration_keys_are_refused() -> None:
    with pytest.raises(TypeError):
        PostgresChannelLayer(hosts=["redis://"])  # type: ignore[call-arg]


async def test_encrypted_bodies_are_unreadable_in_the_table_and_need_the_key(make_layer: LayerFactory) -> None:
    sealed = make_layer(symmetric_encryption_keys=["secret one"])
    rotated = make_layer(symmetric_encryption_keys=["secret two", "secret one"])
    channel = "enc.channel"
    await sealed.send(channel, {"type": "secret", "text": "plain-text-marker"})
    [(body,)] = await query("SELECT body FROM pglayer_message WHERE channel = %s", [sealed._key(channel)])
    assert b"plain-text-marker" not in bytes(body)
    assert await rotated.receive(channel) == {"type": "secret", "text": "plain-text-marker"}
    other = make_layer(symmetric_encryption_keys=["wrong"])
    await sealed.send(channel, {"type": "secret"})
    with pytest.raises(InvalidToken):
        await other.receive(channel)


async def test_flush_removes_this_prefix_only(make_layer: LayerFactory) -> None:
    mine, theirs = make_layer(), make_layer(prefix="other")
    await mine.send("a.b", {"n": 1})
    await mine.group_add("g", "a.b")
    await theirs.send("a.b", {"n": 2})
    await mine.flush()
    assert await count("SELECT count(*) FROM pglayer_message") == 1
    assert await count("SELECT count(*) FROM pglayer_groupmembership") == 0
    assert await theirs.receive("a.b") == {"n": 2}

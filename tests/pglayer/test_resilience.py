"""The layer across connection loss: the listener's backend killed, PostgreSQL restarted."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest
from asgiref.sync import async_to_sync

from apps.pglayer.core import PostgresChannelLayer
from harness.pg import PgServer
from tests.pglayer.conftest import LayerFactory, query
from tests.pglayer.test_core import waiting


class Collector:
    """Receives on each channel forever, recording what arrives and when."""

    def __init__(self, layer: PostgresChannelLayer, channels: list[str]) -> None:
        self.got: dict[str, list[int]] = {channel: [] for channel in channels}
        self.last_at = 0.0
        self.expected = 0
        self.complete = asyncio.Event()
        self.tasks = [asyncio.ensure_future(self._run(layer, channel)) for channel in channels]

    async def _run(self, layer: PostgresChannelLayer, channel: str) -> None:
        while True:
            message = await layer.receive(channel)
            self.got[channel].append(message["n"])
            self.last_at = time.monotonic()
            if all(len(v) >= self.expected for v in self.got.values()):
                self.complete.set()

    async def until(self, expected: int, *, within: float) -> None:
        self.expected = expected
        self.complete.clear()
        if all(len(v) >= expected for v in self.got.values()):
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.complete.wait(), within)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_listener_backend_terminated_while_receivers_wait(make_layer: LayerFactory) -> None:
    receiver, sender = make_layer(), make_layer()
    channels = [await receiver.new_channel() for _ in range(3)]
    collector = Collector(receiver, channels)
    for channel in channels:
        await waiting(receiver, channel)
    pid = receiver.listener_backend_pid
    assert pid is not None
    await query("SELECT pg_terminate_backend(%s)", [pid])
    # Sent while the listener is reconnecting, and after.
    for n in range(30):
        for channel in channels:
            await sender.send(channel, {"n": n})
    await collector.until(30, within=10)
    await asyncio.sleep(0.3)  # a duplicate would show up here
    await collector.stop()
    assert collector.got == {channel: list(range(30)) for channel in channels}
    assert receiver.stats()["listener_connections"] == 2
    assert receiver.listener_backend_pid not in (None, pid)


@pytest.mark.slow
async def test_postgres_restart_while_receivers_wait(throwaway_server: PgServer, make_layer: LayerFactory) -> None:
    receiver = make_layer(database=throwaway_server.url())
    sender = make_layer(database=throwaway_server.url())
    channels = [await receiver.new_channel() for _ in range(3)]
    collector = Collector(receiver, channels)
    for n in range(5):
        for channel in channels:
            await sender.send(channel, {"n": n})
    await collector.until(5, within=5)
    assert all(len(v) == 5 for v in collector.got.values())

    sync_results: list[str] = []

    def sync_sender() -> None:
        # A sync caller: every async_to_sync call runs on a fresh event loop.
        for n in range(5, 10):
            for channel in channels:
                async_to_sync(sender.send)(channel, {"n": n})
        sync_results.append("sent")

    await asyncio.to_thread(throwaway_server.stop)
    # Sent during the outage: these calls wait for the server to come back.
    thread = threading.Thread(target=sync_sender)
    thread.start()
    await asyncio.sleep(1.0)
    await asyncio.to_thread(throwaway_server.start)
    back_at = time.monotonic()
    await asyncio.to_thread(thread.join, 10)
    assert sync_results == ["sent"]
    for n in range(10, 15):  # and after
        for channel in channels:
            await sender.send(channel, {"n": n})
    await collector.until(15, within=10)
    await asyncio.sleep(0.3)
    await collector.stop()
    assert collector.got == {channel: list(range(15)) for channel in channels}
    print("delivered all %.3fs after the server was back" % (collector.last_at - back_at))
    assert collector.last_at - back_at < 2.0, "delivered %.2fs after the server was back" % (
        collector.last_at - back_at
    )
    assert receiver.stats()["listener_connections"] == 2

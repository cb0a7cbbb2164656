"""The Postgres channel layer between real processes, and between real daphne replicas."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from apps.pglayer.core import PostgresChannelLayer
from harness.processes import ROOT, ProcessGroup, free_port, wait_http
from tests.pglayer.conftest import count, rows_left

pytestmark = pytest.mark.slow

BIG = "y" * 9000  # over NOTIFY's 8000-byte payload limit


class Peer:
    """A process running tests/pglayer/peer.py, talked to over its stdin and stdout."""

    def __init__(self, processes: ProcessGroup, name: str, prefix: str) -> None:
        env = processes.env(name, "test", {"PGLAYER_TEST_PREFIX": prefix})
        self.stderr = (processes.tmp_path / ("%s.log" % name)).open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "tests.pglayer.peer"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.popen.stdin is not None and self.popen.stdout is not None
        self.popen.stdin.write(json.dumps(command) + "\n")
        self.popen.stdin.flush()
        line = self.popen.stdout.readline()
        assert line, "peer exited (rc %s)" % self.popen.poll()
        return dict(json.loads(line))

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)
        self.stderr.close()


@pytest.fixture
def peers(processes: ProcessGroup) -> Iterator[Any]:
    prefix = "p%s" % uuid.uuid4().hex[:8]
    started: list[Peer] = []

    def start(name: str) -> Peer:
        peer = Peer(processes, name, prefix)
        started.append(peer)
        return peer

    start.prefix = prefix  # type: ignore[attr-defined]
    yield start
    for peer in started:
        peer.stop()


async def test_process_b_starting_leaves_process_a_its_queued_messages(peers: Any) -> None:
    a = peers("peer-a")
    [channel] = a.ask(op="channels", n=1)["channels"]
    sender = PostgresChannelLayer(prefix=peers.prefix)
    try:
        for n in range(50):
            await sender.send(channel, {"n": n, "pad": BIG if n % 5 == 0 else ""})
        b = peers("peer-b")
        [b_channel] = b.ask(op="channels", n=1)["channels"]
        assert b.ask(op="listen")["listening"] == 1
        # B's listener is up; A's messages are all still in the table, untouched.
        assert await count("SELECT count(*) FROM pglayer_message WHERE channel = %s", [sender._key(channel)]) == 50
        got = a.ask(op="receive", channels=[channel], count=50)["received"][channel]
        assert [m["n"] for m in got] == list(range(50))
        assert b.ask(op="receive", channels=[b_channel], count=0, quiet=0.3)["received"] == {b_channel: []}
    finally:
        await sender.close()


async def test_group_send_across_two_processes_exactly_once_in_order(peers: Any) -> None:
    a, b = peers("peer-a"), peers("peer-b")
    group = "fanout"
    channels_a = a.ask(op="channels", n=5, group=group)["channels"]
    channels_b = b.ask(op="channels", n=5, group=group)["channels"]
    messages = [{"type": "m", "n": n, "pad": BIG if n % 4 == 0 else "s"} for n in range(1000)]
    sender = PostgresChannelLayer(prefix=peers.prefix, capacity=2000)
    try:
        # Receivers first (in their processes), then 1,000 group_sends from a third process (this one).
        loop = asyncio.get_running_loop()
        receive_a = loop.run_in_executor(None, lambda: a.ask(op="receive", channels=channels_a, count=1000, quiet=0.5))
        receive_b = loop.run_in_executor(None, lambda: b.ask(op="receive", channels=channels_b, count=1000, quiet=0.5))
        for message in messages:
            await sender.group_send(group, message)
        got = {**(await receive_a)["received"], **(await receive_b)["received"]}
    finally:
        await sender.close()
    assert set(got) == set(channels_a + channels_b)
    for channel, received in got.items():
        assert [m["n"] for m in received] == list(range(1000)), channel
        assert all(m["pad"] == (BIG if m["n"] % 4 == 0 else "s") for m in received)
    assert await rows_left() == 0


def _daphne(processes: ProcessGroup, name: str, prefix: str) -> Any:
    port = free_port()
    proc = processes.start(
        name,
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "tests.pglayer.asgi_echo:application"],
        role="web",
        port=port,
        env={"CHANNEL_LAYER_BACKEND": "postgres", "CHANNEL_LAYER_PREFIX": prefix},
    )
    wait_http(proc, "/healthz")
    return proc


async def test_a_group_message_sent_on_replica_a_reaches_a_socket_on_replica_b_once(processes: ProcessGroup) -> None:
    prefix = "w%s" % uuid.uuid4().hex[:8]
    replica_a, replica_b = _daphne(processes, "web-a", prefix), _daphne(processes, "web-b", prefix)
    async with (
        websockets.connect(replica_b.ws_url + "/ws/echo/room/") as on_b,
        websockets.connect(replica_a.ws_url + "/ws/echo/room/") as on_a,
    ):
        for n in range(20):
            await on_a.send(json.dumps({"n": n, "pad": BIG if n == 7 else ""}))
        heard_on_b = [json.loads(await asyncio.wait_for(on_b.recv(), 10)) for _ in range(20)]
        heard_on_a = [json.loads(await asyncio.wait_for(on_a.recv(), 10)) for _ in range(20)]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(on_b.recv(), 0.5)  # nothing twice
    assert [m["n"] for m in heard_on_b] == list(range(20))
    assert all(m["from"] == "web-a" and m["to"] == "web-b" for m in heard_on_b)
    assert all(m["server_loop"] for m in heard_on_a + heard_on_b)  # no thread hop under daphne
    assert [m["n"] for m in heard_on_a] == list(range(20))
    assert heard_on_b[7]["pad"] == BIG
    # Delivered rows are deleted.
    for _ in range(100):
        if await count("SELECT count(*) FROM pglayer_message") == 0:
            break
        await asyncio.sleep(0.05)
    assert await rows_left() == 0

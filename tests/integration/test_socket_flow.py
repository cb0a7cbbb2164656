"""A client flooding a real daphne replica's socket is slowed by TCP, not buffered by the replica.

daphne used to read everything a client sent and queue every frame for its consumer without
bound (iacplatform/wsflow.py). Here a pool-token holder floods the C&C socket with 8 KiB
frames, faster than its frame rate lets the consumer take them: the replica's memory stays flat,
the client can only send what the rate, the bounded queue and the kernel's buffers hold, and
nothing is cut off until the client stays over its rate for the grace period, when it gets its
error frame and close 4429.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import time
from typing import Any

import psutil
import pytest
import websockets

from apps.agents.protocol import PROTOCOL_VERSION
from harness.processes import Proc, ProcessGroup
from tests.integration.agentkit import make_pool

pytestmark = pytest.mark.slow

PAD = 8 * 1024
FRAME = json.dumps({"type": "heartbeat", "pad": "x" * PAD})
RATE = 20
BURST = 10
FLOOD_SECONDS = 6.0


def hello(agent_id: str) -> str:
    return json.dumps({"type": "hello", "protocol": PROTOCOL_VERSION, "agent_id": agent_id, "capacity": 1})


def healthz(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/healthz")
    return conn.getresponse().status


async def flood(web: Proc, token: str, frame: str, seconds: float) -> dict[str, Any]:
    """Send ``frame`` as fast as the connection takes it; sample the replica's RSS meanwhile."""
    replica = psutil.Process(web.pid)
    result: dict[str, Any] = {"sent": 0, "received": [], "rss_before": replica.memory_info().rss, "rss_max": 0}
    headers = {"Authorization": "Bearer " + token}
    async with websockets.connect(web.ws_url + "/ws/agents/", additional_headers=headers, max_size=None) as ws:
        await ws.send(hello("flooder"))
        result["received"].append(json.loads(await asyncio.wait_for(ws.recv(), 10))["type"])

        async def read() -> None:
            with contextlib.suppress(websockets.exceptions.ConnectionClosed):
                async for message in ws:
                    result["received"].append(json.loads(message).get("code") or "frame")

        async def sample() -> None:
            while True:
                result["rss_max"] = max(result["rss_max"], replica.memory_info().rss)
                await asyncio.sleep(0.1)

        reader, sampler = asyncio.create_task(read()), asyncio.create_task(sample())
        started = time.monotonic()
        try:
            while time.monotonic() - started < seconds:
                await ws.send(frame)
                result["sent"] += 1
                if result["sent"] % 100 == 0:
                    # While the kernel takes its writes, a client's send never yields and it
                    # would never read its error and close frames (a RST discards them unread).
                    await asyncio.sleep(0)
        except websockets.exceptions.ConnectionClosed:
            pass
        result["elapsed"] = time.monotonic() - started
        result["healthz"] = await asyncio.to_thread(healthz, web.port or 0)
        result["open"] = ws.state is websockets.protocol.State.OPEN
        sampler.cancel()
        if not result["open"]:
            await asyncio.wait_for(reader, 10)
        reader.cancel()
        result["close_code"] = ws.close_code
    return result


def test_a_flooding_client_is_held_by_tcp_and_the_replica_memory_stays_flat(processes: ProcessGroup) -> None:
    _, token = make_pool()
    env = {
        "AGENT_FRAME_RATE": str(RATE),
        "AGENT_FRAME_BURST": str(BURST),
        "WS_THROTTLE_GRACE_SECONDS": "600",  # never cut off here: this test is about holding
        "WS_QUEUE_BYTES": str(1024 * 1024),
    }
    web = processes.daphne("web-flow", env=env)
    result = asyncio.run(flood(web, token, FRAME, FLOOD_SECONDS))
    grown = result["rss_max"] - result["rss_before"]
    assert result["received"][0] == "welcome"
    assert result["open"], result  # slowed, not cut off
    assert result["healthz"] == 200
    # What the client got out of its socket: the consumer's rate over the flood, the queue's
    # 1 MiB, and what the kernel's socket buffers hold (a few MiB each way; 16 MiB allowed).
    # Without flow control: 23,649 frames (185 MiB) in 6 s, and the replica's RSS grew by 250 MiB.
    allowed = BURST + RATE * result["elapsed"] + (17 * 1024 * 1024) // len(FRAME)
    assert result["sent"] <= allowed, "sent %d frames of 8 KiB in %.1f s" % (result["sent"], result["elapsed"])
    assert grown < 32 * 1024 * 1024, "RSS grew by %d MiB while %d frames of 8 KiB came" % (grown >> 20, result["sent"])
    assert web.alive()


def test_a_client_kept_over_its_rate_past_the_grace_period_is_closed_with_4429(processes: ProcessGroup) -> None:
    _, token = make_pool()
    env = {"AGENT_FRAME_RATE": str(RATE), "AGENT_FRAME_BURST": str(BURST), "WS_THROTTLE_GRACE_SECONDS": "1"}
    web = processes.daphne("web-flow", env=env)
    result = asyncio.run(flood(web, token, json.dumps({"type": "heartbeat"}), 15.0))
    assert not result["open"]
    assert result["close_code"] == 4429, result
    assert "rate_limited" in result["received"], result["received"][-5:]
    # Cut off after about a second over the rate, not after the burst, and not after 15 s.
    assert result["elapsed"] < 10, result["elapsed"]
    assert result["healthz"] == 200
    assert web.alive()

"""The agent's loopback forwarder in front of the state backend: passes requests and answers on
unchanged, and moves to the next replica only when one cannot be reached."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

from apps.agents.runtime import AgentConfig, AgentRuntime
from apps.agents.stateproxy import StateProxy
from tests.agents.httpbackend import serve


def dead_origin() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return "http://127.0.0.1:%d" % sock.getsockname()[1]  # closed again: connection refused


def call(url: str, method: str, body: bytes = b"", **headers: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body or None, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_requests_go_to_the_first_reachable_replica_unchanged() -> None:
    with serve() as backend:
        live = backend.address.rsplit("/state/", 1)[0]
        origins = [dead_origin(), live]
        proxy = StateProxy(lambda: list(origins))
        base = proxy.start() + "/state/"
        try:
            assert call(base, "GET", Authorization="Basic abc") == (204, b"")
            info = json.dumps({"ID": "l1"}).encode()
            assert call(base, "LOCK", info, **{"Content-Type": "application/json"})[0] == 200
            refused = call(base, "LOCK", json.dumps({"ID": "l2"}).encode())
            assert (refused[0], json.loads(refused[1])["ID"]) == (423, "l1")  # the answer, as given
            assert call(base + "?ID=l1", "POST", b'{"serial": 1}', **{"Content-MD5": "x"})[0] == 200
            assert call(base, "GET") == (200, b'{"serial": 1}')
            assert call(base, "UNLOCK", info)[0] == 200
            assert backend.requests[3] == ("POST", "/state/?ID=l1")
            assert backend.auth[0] == "Basic abc"
            origins.clear()
            origins.append(dead_origin())
            status, body = call(base, "GET")
            assert status == 502 and b"no replica reachable" in body
        finally:
            proxy.stop()


def test_the_runtime_offers_its_connected_replica_first() -> None:
    config = AgentConfig(urls=["ws://a:1/ws/agents/", "wss://b:2/ws/agents/"], token="t", agent_id="x")
    runtime: Any = AgentRuntime(config)
    assert runtime.state_origins() == ["http://a:1", "https://b:2"]
    runtime.connected_url = "wss://b:2/ws/agents/"
    assert runtime.state_origins() == ["https://b:2", "http://a:1"]

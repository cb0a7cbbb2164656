"""A web replica's /metrics: request latency, sockets open per kind and the channel layer's
counters, only for the bearer token the operator configured."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from typing import Any

import pytest
from django.test import Client, override_settings
from prometheus_client import REGISTRY

from harness.processes import ProcessGroup
from iacplatform.webmetrics import CountSockets, socket_kind

pytestmark = pytest.mark.django_db


@override_settings(METRICS_TOKEN="the-metrics-token")
def test_metrics_need_the_bearer_token() -> None:
    client = Client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="the-metrics-token").status_code == 401
    # Scraped by pod IP, which is no allowed host: the token is the check, not the Host header.
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer the-metrics-token", HTTP_HOST="10.1.2.3:8000")
    assert response.status_code == 200
    body = response.content.decode()
    assert 'iacplatform_http_request_duration_seconds_count{method="GET",status="200",view="healthz"}' in body
    assert "iacplatform_websockets_open" in body
    assert "channel_layer_group_send_full_total" in body


@override_settings(METRICS_TOKEN="")
def test_metrics_are_off_without_a_token() -> None:
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 404


def _open(kind: str) -> float:
    return REGISTRY.get_sample_value("iacplatform_websockets_open", {"kind": kind}) or 0.0


def test_a_socket_counts_from_accept_to_disconnect() -> None:
    seen: list[float] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept"})
        seen.append(_open("session"))
        await receive()  # the client goes away
        seen.append(_open("session"))

    async def main() -> None:
        messages = asyncio.Queue[dict[str, Any]]()
        await messages.put({"type": "websocket.disconnect", "code": 1000})

        async def send(message: dict[str, Any]) -> None:
            return None

        await CountSockets(app)({"type": "websocket", "path": "/ws/sessions/x/"}, messages.get, send)

    before = _open("session")
    asyncio.run(main())
    assert seen == [before + 1, before]
    assert _open("session") == before


def test_a_socket_refused_before_accept_is_never_counted_and_a_crash_uncounts() -> None:
    async def refuse(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "websocket.close", "code": 4401})

    async def crash(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept"})
        raise RuntimeError("consumer bug")

    async def send(message: dict[str, Any]) -> None:
        return None

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    before = _open("agent")
    asyncio.run(CountSockets(refuse)({"type": "websocket", "path": "/ws/agents/"}, receive, send))
    with pytest.raises(RuntimeError):
        asyncio.run(CountSockets(crash)({"type": "websocket", "path": "/ws/agents/"}, receive, send))
    assert _open("agent") == before


def test_socket_kinds_are_bounded() -> None:
    assert [socket_kind(p) for p in ("/ws/agents/", "/ws/sessions/1/", "/ws/tasks/2/logs/", "/x")] == [
        "agent",
        "session",
        "task_log",
        "other",
    ]


@pytest.mark.slow
def test_a_daphne_replica_serves_its_metrics(processes: ProcessGroup) -> None:
    web = processes.daphne("web-m", env={"METRICS_TOKEN": "tok-123"})
    # /healthz is answered before Django (iacplatform/asgi.py), so it is no view; /readyz is.
    with urllib.request.urlopen(web.url + "/readyz", timeout=5) as response:  # noqa: S310 - local test URL
        assert response.status == 200
    request = urllib.request.Request(web.url + "/metrics", headers={"Authorization": "Bearer tok-123"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - local test URL
        body = response.read().decode()
    assert 'view="readyz"' in body
    assert "channel_layer_group_send_full_total" in body
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(web.url + "/metrics", timeout=5)  # noqa: S310 - local test URL
    assert refused.value.code == 401

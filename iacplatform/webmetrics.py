"""Prometheus metrics of a web replica, served at ``/metrics``: request latency per view and
status, WebSockets open per kind, and everything else counted in this process's default registry
(the channel layer's counters among them).

Guarantees: ``/metrics`` answers only a request with ``Authorization: Bearer <METRICS_TOKEN>``
(compared in constant time), 401 to any other, and 404 when METRICS_TOKEN is unset (metrics
off); label values are bounded (URL names, not paths; status codes; four socket kinds). Does NOT:
aggregate across replicas (Prometheus scrapes each pod), or count sockets closed before accept.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, Histogram, generate_latest

REQUEST_DURATION = Histogram(
    "iacplatform_http_request_duration_seconds",
    "HTTP requests served by this web replica, by URL name, method and status.",
    ["view", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SOCKETS_OPEN = Gauge("iacplatform_websockets_open", "WebSockets accepted and not yet closed, by kind.", ["kind"])
SOCKET_KINDS = (("/ws/agents/", "agent"), ("/ws/sessions/", "session"), ("/ws/tasks/", "task_log"))
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}

ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]],
    Awaitable[None],
]


def metrics(request: HttpRequest) -> HttpResponse:
    token = settings.METRICS_TOKEN
    if not token:
        return HttpResponse("Not found.\n", status=404, content_type="text/plain")
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), ("Bearer " + token).encode()):
        response = HttpResponse("A bearer token (METRICS_TOKEN) is required.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)


class RequestMetricsMiddleware:
    """Times every request (outermost, so the time includes the other middleware), and answers
    ``/metrics`` itself, before ALLOWED_HOSTS is checked: Prometheus scrapes a pod by its IP, which
    is no allowed host, and the response names no host. The token is the check."""

    async_capable = True
    sync_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if request.path == "/metrics":
            return metrics(request) if not self.is_async else self._metrics(request)
        if self.is_async:
            return self._acall(request)
        started = time.monotonic()
        response = self.get_response(request)
        self._observe(request, response, time.monotonic() - started)
        return response

    async def _metrics(self, request: HttpRequest) -> HttpResponse:
        return metrics(request)

    async def _acall(self, request: HttpRequest) -> Any:
        started = time.monotonic()
        response = await self.get_response(request)
        self._observe(request, response, time.monotonic() - started)
        return response

    @staticmethod
    def _observe(request: HttpRequest, response: HttpResponse, seconds: float) -> None:
        match = getattr(request, "resolver_match", None)
        view = (match.view_name or "unnamed") if match is not None else "unmatched"
        method = request.method if request.method in METHODS else "other"
        REQUEST_DURATION.labels(view=view, method=method, status=str(response.status_code)).observe(seconds)


def socket_kind(path: str) -> str:
    for prefix, kind in SOCKET_KINDS:
        if path.startswith(prefix):
            return kind
    return "other"


class CountSockets:
    """ASGI middleware: counts a WebSocket open from its accept until its close or disconnect."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        gauge = SOCKETS_OPEN.labels(kind=socket_kind(scope.get("path", "")))
        open_ = False

        def closed() -> None:
            nonlocal open_
            if open_:
                open_ = False
                gauge.dec()

        async def counting_send(message: dict[str, Any]) -> None:
            nonlocal open_
            await send(message)
            if message["type"] == "websocket.accept" and not open_:
                open_ = True
                gauge.inc()
            elif message["type"] == "websocket.close":
                closed()

        async def counting_receive() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                closed()
            return message

        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            closed()

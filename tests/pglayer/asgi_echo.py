"""Test-only ASGI app for daphne: Django HTTP (for /healthz) plus ``ws/echo/<group>/``, a consumer
that joins ``<group>`` and group_sends every text frame it receives; every member socket gets it,
tagged with the replica that sent it, the one that delivered it, and whether the layer ran on
daphne's event loop there."""

from __future__ import annotations

import json
import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iacplatform.settings")
django_asgi_app = get_asgi_application()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import path  # noqa: E402


class EchoConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.group = self.scope["url_route"]["kwargs"]["group"]
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        message = json.loads(text_data or "{}")
        message["from"] = settings.POD_NAME
        await self.channel_layer.group_send(self.group, {"type": "echo.message", "payload": message})

    async def echo_message(self, event: dict[str, Any]) -> None:
        # Whether the layer runs on daphne's own loop (adopted) rather than on a thread of its own.
        adopted = self.channel_layer._thread.adopted
        await self.send(text_data=json.dumps({**event["payload"], "to": settings.POD_NAME, "server_loop": adopted}))


application = ProtocolTypeRouter(
    {"http": django_asgi_app, "websocket": URLRouter([path("ws/echo/<str:group>/", EchoConsumer.as_asgi())])}
)

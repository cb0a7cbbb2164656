"""ASGI entry point for daphne: HTTP (Django) and the WebSocket routes of the apps."""

from __future__ import annotations

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iacplatform.settings")
# Django must be set up before consumers (and their models) are imported.
django_asgi_app: Any = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import re_path  # noqa: E402

from apps.agents.routing import websocket_urlpatterns as agent_urlpatterns  # noqa: E402
from apps.hub.routing import websocket_urlpatterns as hub_routes  # noqa: E402

# Browser WebSockets: session auth, so the Origin is checked (cross-site WebSocket hijacking).
websocket_urlpatterns: list = [*hub_routes]
browser_websockets = AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Agents send a bearer pool token and no Origin (they are not browsers): their route comes
        # first, outside the origin check; everything else is a browser socket.
        "websocket": URLRouter([*agent_urlpatterns, re_path(r"^", browser_websockets)]),
    }
)

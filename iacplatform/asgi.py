"""ASGI entry point for daphne: HTTP (Django) and the WebSocket routes of the apps."""

from __future__ import annotations

import os
import sys
from typing import Any

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iacplatform.settings")
# Django must be set up before consumers (and their models) are imported.
django_asgi_app: Any = get_asgi_application()

from iacplatform import bodylimit, wsflow  # noqa: E402
from iacplatform.edge import ForwardedFor, InFlight, Liveness, ThrottleShortcut  # noqa: E402
from iacplatform.requestconn import CloseRequestConnections  # noqa: E402

# daphne imports this module in its own process: request bodies are bounded while they arrive,
# and a WebSocket's queue of frames for its consumer is bounded (daphne stops reading it).
bodylimit.install()
wsflow.install()
# Request threads (one per request) share the GIL with the event loop: a CPU-bound one holds it
# up to the switch interval each time the loop wants it back (5 ms by default, several times per
# answer). A shorter interval keeps the loop's answers (/healthz, socket frames) prompt under load.
sys.setswitchinterval(settings.WEB_GIL_SWITCH_INTERVAL_MS / 1000)

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import re_path  # noqa: E402

from apps.agents.routing import websocket_urlpatterns as agent_urlpatterns  # noqa: E402
from apps.hub.routing import websocket_urlpatterns as hub_routes  # noqa: E402
from iacplatform.sessioncheck import require_session_path  # noqa: E402
from iacplatform.sockets import RefuseWhileDatabaseDown  # noqa: E402
from iacplatform.webmetrics import CountSockets  # noqa: E402

if settings.PROCESS_ROLE == "web" and settings.CHANNEL_LAYER_BACKEND == "postgres":
    # The channel layer's LISTEN needs a session: refuse to serve through a transaction pooler
    # (it would lose every notification silently) instead of finding out from missing messages.
    require_session_path(purpose="web-start")

# Browser WebSockets: session auth, so the Origin is checked (cross-site WebSocket hijacking).
websocket_urlpatterns: list = [*hub_routes]
# A database down while the session is looked up: 4503, like the consumers' own lookups.
browser_websockets = AllowedHostsOriginValidator(
    RefuseWhileDatabaseDown(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
)

# Outermost: the client address everything below keys on (throttles, caps, logs).
application = ForwardedFor(
    ProtocolTypeRouter(
        {
            "http": Liveness(ThrottleShortcut(InFlight(CloseRequestConnections(django_asgi_app)))),
            # Agents send a bearer pool token and no Origin (they are not browsers): their route comes
            # first, outside the origin check; everything else is a browser socket.
            "websocket": CountSockets(URLRouter([*agent_urlpatterns, re_path(r"^", browser_websockets)])),
        }
    )
)

from __future__ import annotations

from django.urls import path

from apps.agents.consumers import AgentConsumer

# Agents authenticate with a pool token, not a browser session, so this route is mounted outside
# the origin check and the session middleware (see iacplatform/asgi.py).
websocket_urlpatterns = [path("ws/agents/", AgentConsumer.as_asgi())]

from __future__ import annotations

from django.urls import path

from apps.hub.consumers import SessionConsumer, TaskLogConsumer

websocket_urlpatterns = [
    path("ws/sessions/<uuid:session_id>/", SessionConsumer.as_asgi()),
    path("ws/tasks/<int:task_id>/logs/", TaskLogConsumer.as_asgi()),
]

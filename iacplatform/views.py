"""Probes for the web replicas: /healthz (liveness, no I/O) and /readyz (the database answers, and
notifications come back: a NOTIFY to this process's own channel-layer channel returns over its
LISTEN connection, so a replica whose LISTEN is lost, e.g. behind a transaction pooler, takes no
traffic it could not deliver)."""

from __future__ import annotations

import logging

import psycopg
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.db.utils import Error as DatabaseError
from django.http import HttpRequest, JsonResponse

from apps.pglayer.core import PostgresChannelLayer
from iacplatform.pgerrors import NotificationLost

logger = logging.getLogger(__name__)


def unavailable(error: str) -> JsonResponse:
    return JsonResponse({"status": "unavailable", "pod": settings.POD_NAME, "error": error}, status=503)


def healthz(request: HttpRequest) -> JsonResponse:
    # Liveness must not depend on PostgreSQL: a database outage would otherwise restart every
    # replica at once and drop every WebSocket for nothing.
    return JsonResponse({"status": "ok", "pod": settings.POD_NAME})


def readyz(request: HttpRequest) -> JsonResponse:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError:
        # The raw error names hosts, users and databases: it goes to the log, not to whoever asks.
        logger.warning("readyz: database unavailable", exc_info=True)
        return unavailable("database unavailable")
    body: dict[str, object] = {"status": "ok", "pod": settings.POD_NAME}
    layer = get_channel_layer()
    if isinstance(layer, PostgresChannelLayer):
        try:
            seconds = async_to_sync(layer.notify_round_trip)(settings.READYZ_NOTIFY_TIMEOUT)
        except NotificationLost as exc:
            logger.warning("readyz: %s", exc)
            return unavailable("notifications lost")
        except (TimeoutError, OSError, psycopg.Error):
            logger.warning("readyz: the channel layer cannot listen or notify", exc_info=True)
            return unavailable("channel layer unavailable")
        body["notify_round_trip_ms"] = round(seconds * 1000, 1)
    return JsonResponse(body)

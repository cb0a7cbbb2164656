"""Probes for the web replicas: /healthz (liveness, no I/O) and /readyz (the database answers)."""

from __future__ import annotations

from django.conf import settings
from django.db import connection
from django.db.utils import Error as DatabaseError
from django.http import HttpRequest, JsonResponse


def healthz(request: HttpRequest) -> JsonResponse:
    # Liveness must not depend on PostgreSQL: a database outage would otherwise restart every
    # replica at once and drop every WebSocket for nothing.
    return JsonResponse({"status": "ok", "pod": settings.POD_NAME})


def readyz(request: HttpRequest) -> JsonResponse:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        return JsonResponse({"status": "unavailable", "pod": settings.POD_NAME, "error": str(exc)}, status=503)
    return JsonResponse({"status": "ok", "pod": settings.POD_NAME})

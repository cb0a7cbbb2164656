"""REST throttling per user and per anonymous source, counted in the database cache
(``CACHES["throttle"]``, table ``iacplatform_throttle_cache``).

Why the database: it is the one store every web replica already shares (no Redis to run), so a
client's count is the same whichever replica its requests reach; a request costs two small
queries on an indexed key. Does NOT: count exactly under concurrent requests of one client (DRF
reads the history, then writes it: two replicas may each add to the same old history, so a burst
can exceed the rate by the number of requests in flight); the error is bounded by concurrency,
not by time. The table is bounded by the cache's ``MAX_ENTRIES`` (culled past it).
The anonymous key is the client address as the edge middleware established it
(iacplatform/edge.py: X-Forwarded-For counts only from TRUSTED_PROXIES), never a header the
client chose. A refusal is also remembered on this replica (iacplatform/edge.Refusals) so that
the same client's next requests within the wait are refused before Django (edge.ThrottleShortcut).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.cache import caches
from rest_framework import throttling

from iacplatform.edge import refusals, request_key


class RememberRefusals(throttling.SimpleRateThrottle):
    """Tells the edge about each refusal, keyed as it will see the client's next request."""

    def allow_request(self, request: Any, view: Any) -> bool:
        allowed = super().allow_request(request, view)
        if not allowed:
            refusals.refuse(request_key(request), self.wait() or 0.0)
        return allowed


class UserRateThrottle(RememberRefusals, throttling.UserRateThrottle):
    def __init__(self) -> None:
        self.cache = caches["throttle"]
        super().__init__()

    def get_rate(self) -> str | None:
        return settings.API_THROTTLE_USER_RATE


class AnonRateThrottle(RememberRefusals, throttling.AnonRateThrottle):
    def __init__(self) -> None:
        self.cache = caches["throttle"]
        super().__init__()

    def get_rate(self) -> str | None:
        return settings.API_THROTTLE_ANON_RATE

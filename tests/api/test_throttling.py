"""REST throttling per user, counted in the database cache that every replica shares."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import caches
from rest_framework.test import APIClient

from tests.access.fixtures import api_token

pytestmark = pytest.mark.django_db


def client_of(name: str) -> APIClient:
    user = get_user_model().objects.create_user(name, password="pw-long-enough")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION="Token " + api_token(user))
    return api


def test_a_user_past_the_rate_gets_429_in_the_error_shape_and_others_do_not(settings: Any) -> None:
    settings.API_THROTTLE_USER_RATE = "3/min"
    caches["throttle"].clear()
    greedy, polite = client_of("greedy"), client_of("polite")
    assert [greedy.get("/api/v1/workspaces/").status_code for _ in range(3)] == [200] * 3
    refused = greedy.get("/api/v1/workspaces/")
    assert refused.status_code == 429
    assert refused.json()["code"] == "throttled"
    assert int(refused["Retry-After"]) > 0
    assert polite.get("/api/v1/workspaces/").status_code == 200


def test_the_count_lives_in_the_database_cache(settings: Any) -> None:
    settings.API_THROTTLE_USER_RATE = "100/min"
    caches["throttle"].clear()
    api = client_of("counted")
    api.get("/api/v1/workspaces/")
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM iacplatform_throttle_cache WHERE cache_key LIKE %s", ["%throttle_user_%"])
        assert cursor.fetchone()[0] == 1


def test_an_empty_rate_disables_throttling(settings: Any) -> None:
    settings.API_THROTTLE_USER_RATE = None
    api = client_of("free")
    assert all(api.get("/api/v1/workspaces/").status_code == 200 for _ in range(5))


async def _ask(app: Any, *, authorization: str, address: str, path: str = "/api/v1/workspaces/") -> int:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"authorization", authorization.encode())]
    await app({"type": "http", "path": path, "headers": headers, "client": [address, 5000]}, None, send)
    return sent[0]["status"] if sent else 0


def test_a_refused_client_is_refused_again_before_django_and_no_one_else_is(settings: Any) -> None:
    import asyncio

    from iacplatform.edge import ThrottleShortcut, refusal_key, refusals

    settings.API_THROTTLE_USER_RATE = "2/min"
    settings.API_THROTTLE_TARPIT_SECONDS = 0
    caches["throttle"].clear()
    refusals.until.clear()
    authorization = "Token " + api_token(get_user_model().objects.create_user("greedy", password="pw-long-enough"))
    greedy = APIClient()
    greedy.credentials(HTTP_AUTHORIZATION=authorization)
    assert [greedy.get("/api/v1/workspaces/").status_code for _ in range(3)] == [200, 200, 429]
    # The refusal is remembered under the key of exactly what the throttles keyed on.
    assert 0 < refusals.remaining(refusal_key(authorization, "", "127.0.0.1")) <= 60

    reached: list[str] = []

    async def django(scope: dict[str, Any], receive: Any, send: Any) -> None:
        reached.append(scope["client"][0])
        await send({"type": "http.response.start", "status": 200, "headers": []})

    edge = ThrottleShortcut(django)
    assert asyncio.run(_ask(edge, authorization=authorization, address="127.0.0.1")) == 429
    assert reached == []  # answered on the event loop: no thread, no query
    # Another address (an anonymous key) or another credential goes through as usual.
    assert asyncio.run(_ask(edge, authorization=authorization, address="192.0.2.1")) == 200
    assert asyncio.run(_ask(edge, authorization="Token other", address="127.0.0.1")) == 200
    assert asyncio.run(_ask(edge, authorization=authorization, address="127.0.0.1", path="/readyz")) == 200
    assert reached == ["192.0.2.1", "127.0.0.1", "127.0.0.1"]
    refusals.until.clear()

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

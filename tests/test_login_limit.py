"""Login attempts are rate-limited per username and address (django-axes, in the database)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

pytestmark = pytest.mark.django_db


def attempt(client: Client, password: str) -> int:
    response = client.post("/admin/login/?next=/admin/", {"username": "admin", "password": password})
    return int(response.status_code)


def test_repeated_failures_lock_the_username_out_even_with_the_right_password(settings: object) -> None:
    get_user_model().objects.create_superuser("admin", password="right-password-123")
    client = Client(raise_request_exception=False)
    assert [attempt(client, "wrong") for _ in range(4)] == [200] * 4  # the form again, with its error
    assert attempt(client, "wrong") == 429  # the fifth failure locks out
    assert attempt(client, "right-password-123") == 429
    other = Client(raise_request_exception=False, REMOTE_ADDR="192.0.2.50")
    assert attempt(other, "right-password-123") == 302  # another address is not locked out


def test_a_success_resets_the_count() -> None:
    get_user_model().objects.create_superuser("admin", password="right-password-123")
    client = Client(raise_request_exception=False)
    assert [attempt(client, "wrong") for _ in range(4)] == [200] * 4
    assert attempt(client, "right-password-123") == 302
    client.logout()
    assert [attempt(client, "wrong") for _ in range(4)] == [200] * 4

"""The web replica's probes: /readyz reports the database and a NOTIFY round trip over the layer."""

from __future__ import annotations

import pytest
from django.test import Client


@pytest.mark.django_db(transaction=True)
def test_readyz_answers_ok_with_the_notify_round_trip_of_the_channel_layer() -> None:
    response = Client().get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert 0 < body["notify_round_trip_ms"] < 2000


def test_healthz_needs_no_database() -> None:
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"

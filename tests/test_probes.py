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


@pytest.mark.django_db(transaction=True)
def test_readyz_says_database_unavailable_and_logs_the_error_only_server_side(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from django.db import OperationalError

    from iacplatform import views

    def refuse() -> None:
        raise OperationalError('connection to "db.internal:5432" failed: password authentication failed for "app"')

    monkeypatch.setattr(views.connection, "cursor", refuse)
    response = Client().get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "pod": views.settings.POD_NAME, "error": "database unavailable"}
    assert "db.internal" not in response.content.decode()
    assert "password authentication failed" in caplog.text

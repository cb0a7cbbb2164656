"""The migrations match the models and create the columns operators and other tools rely on."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.db import connection


@pytest.mark.django_db
def test_models_have_no_pending_migrations() -> None:
    out = io.StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


@pytest.mark.django_db
def test_connected_pod_is_a_nullable_varchar_100() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT data_type, character_maximum_length, is_nullable FROM information_schema.columns "
            "WHERE table_name = 'agents_agent' AND column_name = 'connected_pod'"
        )
        assert cursor.fetchone() == ("character varying", 100, "YES")


@pytest.mark.django_db
def test_one_active_task_index_is_partial_and_unique() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'one_active_task_per_workspace'")
        (indexdef,) = cursor.fetchone()
    assert indexdef.startswith("CREATE UNIQUE INDEX")
    assert "WHERE" in indexdef and "dispatched" in indexdef and "running" in indexdef

"""Settings come from the environment, fail clearly, and name every database session."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from harness.processes import ROOT


def _import_settings(**env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG", "PROCESS_ROLE")}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-c", "import iacplatform.settings as s; print(s.DB_APPLICATION_NAME, s.DEBUG)"],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_secret_key_is_required_when_debug_is_off() -> None:
    result = _import_settings(DEBUG="0")
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in result.stderr


def test_debug_runs_without_a_secret_key() -> None:
    result = _import_settings(DEBUG="1", POD_NAME="web-7", PROCESS_ROLE="web")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["web-7:web", "True"]


AGENT_PROBE = """
import os, django
os.environ["DJANGO_SETTINGS_MODULE"] = "iacplatform.settings"
django.setup()
from django.conf import settings
from django.db import connection
try:
    connection.cursor()
except Exception as exc:
    print(type(exc).__name__)
print(settings.DATABASES["default"]["ENGINE"], len(settings.SECRET_KEY) > 40)
"""


def test_an_agent_needs_neither_database_nor_secret_key_and_gets_no_database() -> None:
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SECRET_KEY", "DEBUG", "PROCESS_ROLE")}
    # Without DATABASE_URL, and with one set (as `make run` sets it for every process).
    for database_url in (None, "postgresql://u:p@postgres.invalid/db"):
        result = subprocess.run(
            [sys.executable, "-c", AGENT_PROBE],
            cwd=ROOT,
            env={
                **base,
                "DEBUG": "0",
                "PROCESS_ROLE": "agent",
                **({"DATABASE_URL": database_url} if database_url else {}),
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        # A query fails at once (no database configured), and the signing key is a random one.
        assert result.stdout.split() == ["ImproperlyConfigured", "django.db.backends.dummy", "True"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEBUG": "maybe"}, "DEBUG must be a boolean"),
        ({"LEADER_ELECTION_LEASE_DURATION": "soon"}, "LEADER_ELECTION_LEASE_DURATION must be a number"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT must be text or json"),
        ({"CHANNEL_LAYER_EVENT_LOOP": "main"}, "CHANNEL_LAYER_EVENT_LOOP must be server or own"),
        ({"DATABASE_URL": "sqlite:///x.db"}, "DATABASE_URL must point at PostgreSQL"),
        ({"DATABASE_URL": ""}, "DATABASE_URL is not set"),
    ],
)
def test_bad_environment_values_fail_with_a_clear_message(env: dict[str, str], message: str) -> None:
    result = _import_settings(SECRET_KEY="x", **env)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.django_db
def test_database_sessions_carry_pod_and_role_as_application_name() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()")
        (name,) = cursor.fetchone()
    assert name == "%s:%s" % (settings.POD_NAME, settings.PROCESS_ROLE)
    assert name == "pytest:test"


@pytest.mark.django_db
def test_the_https_redirect_spares_probes_and_the_agents_state_backend(settings: Any) -> None:
    """Probes and agents reach the web replicas from inside the cluster over plain HTTP; everything
    else is sent to HTTPS, and a request the proxy marks as HTTPS is served."""
    from django.test import Client

    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    client = Client()
    assert client.get("/api/v1/workspaces/").status_code == 301
    assert client.get("/admin/").status_code == 301
    assert client.get("/api/v1/workspaces/", HTTP_X_FORWARDED_PROTO="https").status_code != 301
    assert client.get("/healthz").status_code != 301
    assert client.get("/readyz").status_code != 301
    assert client.get("/api/v1/workspaces/7/terraform-state/").status_code != 301

"""Database URLs are parsed by libpq: multi-host URLs in every form it accepts, libpq's own refusals."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness.processes import ROOT
from iacplatform.dburl import DatabaseURLError, django_database


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p%40ss@h1:5432,h2:5433/db?target_session_attrs=read-write",
        "postgres://u:p%40ss@/db?host=h1,h2&port=5432,5433&target_session_attrs=read-write",
        "host=h1,h2 port=5432,5433 user=u password=p@ss dbname=db target_session_attrs=read-write",
    ],
)
def test_every_multi_host_form_gives_the_same_django_database(url: str) -> None:
    db = django_database(url, conn_max_age=60)
    assert (db["ENGINE"], db["NAME"], db["USER"], db["PASSWORD"]) == (
        "django.db.backends.postgresql",
        "db",
        "u",
        "p@ss",
    )
    assert (db["HOST"], db["PORT"]) == ("h1,h2", "5432,5433")
    assert db["OPTIONS"] == {"target_session_attrs": "read-write"}
    assert (db["CONN_MAX_AGE"], db["CONN_HEALTH_CHECKS"]) == (60, True)


def test_a_unix_socket_directory_and_ipv6_hosts_parse() -> None:
    assert django_database("postgresql://postgres@%2Frun%2Fpostgresql/iac")["HOST"] == "/run/postgresql"
    assert django_database("postgresql://u@[::1]:5432,[fd00::2]:5433/db")["HOST"] == "::1,fd00::2"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///x.db", "DATABASE_URL must point at PostgreSQL"),
        ("mysql://u@h/db", "DATABASE_URL must point at PostgreSQL"),
        ("postgresql://u@h/db?target_session_attr=read-write", 'invalid URI query parameter: "target_session_attr"'),
    ],
)
def test_what_libpq_refuses_is_refused_at_start_with_its_message(url: str, message: str) -> None:
    with pytest.raises(DatabaseURLError, match=message):
        django_database(url)


def test_a_password_never_appears_in_a_parse_error() -> None:
    with pytest.raises(DatabaseURLError) as excinfo:
        django_database("postgresql://u:sekrit-pw@h/db?nonsense=1")
    assert "sekrit-pw" not in str(excinfo.value)


def _settings(**env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "PROCESS_ROLE", "DATABASE_SESSION_URL")}
    full.update(SECRET_KEY="x", **env)
    code = "import iacplatform.settings as s; d = s.DATABASES['default']; print(d['HOST'], d['PORT'], d['OPTIONS'])"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full, capture_output=True, text=True, timeout=60)


def test_settings_accept_a_multi_host_url_that_dj_database_url_refused() -> None:
    result = _settings(DATABASE_URL="postgresql://u@h1:5432,h2:5432/db?target_session_attrs=read-write")
    assert result.returncode == 0, result.stderr
    host, port, options = result.stdout.split(" ", 2)
    assert (host, port) == ("h1,h2", "5432,5432")
    assert "'target_session_attrs': 'read-write'" in options


def test_settings_refuse_a_bad_session_url_at_start() -> None:
    result = _settings(DATABASE_URL="postgresql://u@h/db", DATABASE_SESSION_URL="postgresql://u@h/db?pool=1")
    assert result.returncode != 0
    assert 'DATABASE_SESSION_URL is not a valid PostgreSQL URL: invalid URI query parameter: "pool"' in result.stderr

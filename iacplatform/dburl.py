"""Database URLs, parsed by libpq itself: every form libpq accepts works, and means what it means there.

``postgresql://u@h1:5432,h2:5432/db?target_session_attrs=read-write`` (several hosts in the
authority), ``postgresql://u@/db?host=h1,h2&port=5432,5432`` (hosts as parameters), a Unix socket
directory (``postgresql://u@%2Frun%2Fpostgresql/db``) and a ``key=value`` conninfo string all parse
to the same libpq keywords, which become a Django ``DATABASES`` entry (NAME, USER, PASSWORD, HOST,
PORT; every other keyword, e.g. ``target_session_attrs``, ``sslmode``, goes to OPTIONS, which Django
hands to libpq unchanged). dj-database-url is not used: it parses with ``urllib`` and refuses a
comma-separated host list.

Guarantees: what libpq refuses (an unknown parameter, a malformed URI) is refused here, at start,
with libpq's message; a URL of another scheme is refused. Does NOT: connect or resolve any host.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

_SCHEMES = ("postgresql://", "postgres://")
_DJANGO_KEYS = {"dbname": "NAME", "user": "USER", "password": "PASSWORD", "host": "HOST", "port": "PORT"}


class DatabaseURLError(ValueError):
    pass


def libpq_params(url: str, *, setting: str = "DATABASE_URL") -> dict[str, Any]:
    """The libpq keywords of ``url`` (a ``postgresql://`` URI or a ``key=value`` conninfo string)."""
    if "://" in url.split("?", 1)[0] and not url.startswith(_SCHEMES):
        raise DatabaseURLError(
            "%s must point at PostgreSQL (postgresql://...), got scheme %s" % (setting, url.split(":")[0])
        )
    try:
        return dict(conninfo_to_dict(url))
    except psycopg.ProgrammingError as exc:
        # libpq's message names the offending part; it never echoes a password back.
        raise DatabaseURLError("%s is not a valid PostgreSQL URL: %s" % (setting, str(exc).strip())) from None


def django_database(url: str, *, setting: str = "DATABASE_URL", conn_max_age: int = 0) -> dict[str, Any]:
    """A Django ``DATABASES`` entry for ``url``."""
    params = libpq_params(url, setting=setting)
    database: dict[str, Any] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "",
        "USER": "",
        "PASSWORD": "",
        "HOST": "",
        "PORT": "",
        "CONN_MAX_AGE": conn_max_age,
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": {},
    }
    for key, value in params.items():
        if key in _DJANGO_KEYS:
            database[_DJANGO_KEYS[key]] = value
        else:
            database["OPTIONS"][key] = value
    return database

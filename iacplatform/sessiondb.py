"""The session path: connections that need a PostgreSQL session of their own for their whole life.

LISTEN, session advisory locks (job locks, the election's beacon) and anything else whose state
must outlive one transaction connect through :func:`session_connection_params`. It reads
``DATABASE_SESSION_URL`` when set (e.g. PostgreSQL directly, or a PgBouncer database in session
mode) and otherwise the ``default`` database's settings, so that ``DATABASE_URL`` may point at a
transaction pooler for everything else (web requests, job transactions).

Guarantees: libpq keywords only (usable with ``psycopg.connect(**params)`` and ``make_conninfo``);
the same database as Django's ``default`` alias, including pytest-django's test database (a session
URL naming the configured database name is redirected to the test one); every session named
``<pod>:<role>/<purpose>`` in ``pg_stat_activity``; TCP keepalives so a dead peer is noticed in
seconds. Does NOT: check that the session path really keeps sessions (see sessioncheck.py).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections

# Keys Django's backend adds for psycopg that are not libpq keywords.
_DJANGO_ONLY = ("cursor_factory", "context", "server_side_binding", "prepare_threshold")


def django_connection_params(alias: str = DEFAULT_DB_ALIAS) -> dict[str, Any]:
    """libpq keywords of a Django alias as it is configured now (the test database under pytest)."""
    # A fresh wrapper: the alias's current settings, without touching this thread's connection.
    params = connections.create_connection(alias).get_connection_params()
    for key in _DJANGO_ONLY:
        params.pop(key, None)
    return params


def session_connection_params(*, purpose: str, alias: str = DEFAULT_DB_ALIAS) -> dict[str, Any]:
    """libpq keywords for a session-needing connection of this process, named for ``purpose``."""
    if alias == DEFAULT_DB_ALIAS and settings.DATABASE_SESSION_PARAMS:
        params = dict(settings.DATABASE_SESSION_PARAMS)
        configured, current = settings.DATABASE_CONFIGURED_NAME, connections[alias].settings_dict["NAME"]
        if params.get("dbname", configured) == configured and current != configured:
            params["dbname"] = current  # pytest-django's test database
        params.setdefault("connect_timeout", settings.DB_CONNECT_TIMEOUT)
        params.setdefault("client_encoding", "UTF8")
    else:
        params = django_connection_params(alias)
    name = str(params.get("application_name") or settings.DB_APPLICATION_NAME)
    params["application_name"] = "%s/%s" % (name[: 62 - len(purpose)], purpose)
    for keepalive, value in (("keepalives", 1), ("keepalives_idle", 10), ("keepalives_interval", 5)):
        params.setdefault(keepalive, value)
    params.setdefault("keepalives_count", 3)
    return params

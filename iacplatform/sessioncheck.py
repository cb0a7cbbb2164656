"""At start: refuse a session path that does not keep sessions (a transaction or statement pooler).

A pooler answers like PostgreSQL, and ``SHOW pool_mode`` exists only on its admin console, so the
check is behavioural, on two connections of the session path:
  1. A notes its server backend (``pg_backend_pid()``) and sets a session-level setting;
  2. B opens a transaction and notes its backend: a pooler that handed A's server to B (it was
     idle between A's transactions) pools transactions;
  3. while B holds its server, A asks again: another backend, or the setting gone, means A's
     statements do not share one session.
PostgreSQL itself, or PgBouncer in session mode, passes all three (each client has a server of its
own for its whole connection). A statement pooler refuses B's transaction outright.

With ``DATABASE_SESSION_URL`` set, ``DATABASE_URL`` (Django's connection) is a second path: it is
tried too, so that a wrong password or a missing database there stops the process at start instead
of failing every job and request while the session path works (:func:`database_url_problem`).

Guarantees: a refusal names the setting to change. A permanent connection refusal (pgerrors.py)
is a refusal too, with the server's message (never the password). Does NOT: refuse when the
database is merely unreachable (the process starts, and its connections retry as in any outage).
"""

from __future__ import annotations

import logging
import secrets

import psycopg
from django.core.exceptions import ImproperlyConfigured

from iacplatform.pgerrors import permanent_refusal
from iacplatform.sessiondb import session_connection_params

logger = logging.getLogger(__name__)

PROBE_SETTING = "iacplatform.session_probe"
WHAT_TO_CHANGE = (
    "LISTEN, session advisory locks and the election's beacon need a server session of their own: "
    "point DATABASE_SESSION_URL at PostgreSQL directly or at a PgBouncer database with pool_mode = session "
    "(DATABASE_URL may stay on the transaction pooler)"
)


class SessionPathError(ImproperlyConfigured):
    pass


def _path() -> str:
    from django.conf import settings

    return "DATABASE_SESSION_URL" if settings.DATABASE_SESSION_URL else "DATABASE_URL (DATABASE_SESSION_URL is unset)"


def session_path_problem(*, purpose: str = "session-check", timeout: float = 5.0) -> str | None:
    """What is wrong with the session path, or None when it keeps sessions (or cannot be reached)."""
    params = session_connection_params(purpose=purpose)
    params["connect_timeout"] = max(1, int(timeout))
    token = secrets.token_hex(8)
    try:
        with psycopg.connect(**params, autocommit=True) as a, psycopg.connect(**params) as b:
            row = a.execute("SELECT pg_backend_pid(), set_config(%s, %s, false)", [PROBE_SETTING, token]).fetchone()
            assert row is not None
            pid_a = row[0]
            try:
                row = b.execute("SELECT pg_backend_pid()").fetchone()  # opens B's transaction
            except psycopg.Error as exc:
                return "%s refused a transaction block (%s): a statement pooler. %s" % (
                    _path(),
                    str(exc).strip(),
                    WHAT_TO_CHANGE,
                )
            assert row is not None
            pid_b = row[0]
            if pid_b == pid_a:
                return (
                    "%s goes through a transaction pooler: a second connection ran on the server session of the "
                    "first (backend %s) while the first was idle. %s" % (_path(), pid_a, WHAT_TO_CHANGE)
                )
            row = a.execute("SELECT pg_backend_pid(), current_setting(%s, true)", [PROBE_SETTING]).fetchone()
            assert row is not None
            b.rollback()
            if row[0] != pid_a or row[1] != token:
                return (
                    "%s does not keep sessions: consecutive statements of one connection ran on different server "
                    "sessions (backend %s, then %s) or lost its session settings. %s"
                    % (_path(), pid_a, row[0], WHAT_TO_CHANGE)
                )
    except psycopg.OperationalError as exc:
        refusal = permanent_refusal(exc)
        if refusal is not None:
            return "%s: the server refused the connection: %s" % (_path(), refusal)
        logger.warning("session path check: database unreachable, not judged: %s", exc)
    return None


def database_url_problem() -> str | None:
    """The server's permanent refusal of Django's connection (DATABASE_URL), or None."""
    from django.db import DatabaseError, connection

    try:
        connection.ensure_connection()
    except DatabaseError as exc:
        refusal = permanent_refusal(exc.__cause__ or exc)
        if refusal is not None:
            return "DATABASE_URL: the server refused the connection: %s" % refusal
        logger.warning("DATABASE_URL check: database unreachable, not judged: %s", exc)
    finally:
        connection.close()
    return None


def startup_problem(*, purpose: str = "session-check") -> str | None:
    """What stops a process at start: the session path's problem, then DATABASE_URL's refusal
    (checked separately only when DATABASE_SESSION_URL names another path)."""
    from django.conf import settings

    problem = session_path_problem(purpose=purpose)
    if problem is None and settings.DATABASE_SESSION_URL:
        problem = database_url_problem()
    return problem


def require_session_path(*, purpose: str = "session-check") -> None:
    """Raise :class:`SessionPathError` (ImproperlyConfigured) when the session path is unusable
    or the server refuses DATABASE_URL."""
    problem = startup_problem(purpose=purpose)
    if problem is not None:
        raise SessionPathError(problem)

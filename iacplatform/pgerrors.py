"""Which connection errors are permanent: retrying them only hides a misconfiguration.

libpq reports a refused startup as text (psycopg's ``OperationalError`` carries no SQLSTATE for
it). A server that answered the startup with ``FATAL`` refused this configuration (authentication,
a missing database or role, ``unsupported startup parameter`` from PgBouncer, an invalid
``options`` value), unless its message is one of the conditions that pass by themselves: starting
up, shutting down, recovery, too many connections, an administrator's termination, a pooler that
cannot reach its server yet. Anything without ``FATAL`` (refused, unreachable, timed out, a
read-only host skipped by ``target_session_attrs``) is transient. With several hosts the error is
permanent only when every host refused permanently.

Guarantees: the returned text is the server's own message (it never contains a password).
Does NOT: decide anything about errors after the connection was made.
"""

from __future__ import annotations

import re

import psycopg

# One server message: from FATAL to the end of its line or to libpq's next "connection to server".
_FATAL = re.compile(r"FATAL:\s+(.*?)\s*(?=connection to server|\n|$)")
_MULTIPLE = "Multiple connection attempts failed. All failures were:"

# Server (and PgBouncer) refusals that end by themselves; retrying them is right.
_TRANSIENT = (
    "the database system is",  # starting up, shutting down, in recovery mode, not accepting connections (57P03)
    "too many clients",  # 53300
    "too many connections",
    "remaining connection slots are reserved",
    "terminating connection due to administrator command",  # 57P01
    "no more connections allowed",  # PgBouncer max_client_conn
    "pgbouncer cannot connect to server",
    "server login has been failing",
    "pgbouncer is shutting down",
    "query_wait_timeout",
    "server_login_retry",
)


class PermanentConnectionError(psycopg.OperationalError):
    """The server refused this connection's configuration: not retried, fix the configuration."""


class NotificationLost(TimeoutError):
    """A NOTIFY the database accepted never reached this process's LISTEN connection."""


def _attempts(message: str) -> list[str]:
    if _MULTIPLE in message:
        listed = message.split(_MULTIPLE, 1)[1]
        return [line for line in listed.split("\n- ") if line.strip()]
    return [message]


def permanent_refusal(exc: BaseException) -> str | None:
    """The server's message when ``exc`` (a failed connect) is a permanent refusal, else None."""
    if not isinstance(exc, psycopg.OperationalError):
        return None
    refusals = []
    for attempt in _attempts(str(exc)):
        if "FATAL:" not in attempt:
            return None
        for fatal in _FATAL.findall(attempt):
            fatal = "FATAL: " + " ".join(fatal.split())
            if any(marker in fatal for marker in _TRANSIENT):
                return None
            refusals.append(fatal)
    return "; ".join(dict.fromkeys(refusals)) or None

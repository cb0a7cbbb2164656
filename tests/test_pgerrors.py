"""Permanent connection refusals are told apart from outages, from libpq's own messages."""

from __future__ import annotations

import psycopg
import pytest

from iacplatform.pgerrors import permanent_refusal

SOCKET = 'connection failed: connection to server on socket "/run/pg/.s.PGSQL.5432" failed: '


@pytest.mark.parametrize(
    ("message", "refusal"),
    [
        (SOCKET + 'FATAL:  database "nope" does not exist', 'FATAL: database "nope" does not exist'),
        (
            SOCKET + 'FATAL:  password authentication failed for user "u"',
            'FATAL: password authentication failed for user "u"',
        ),
        (SOCKET + "FATAL:  unsupported startup parameter: options", "FATAL: unsupported startup parameter: options"),
        (SOCKET + "FATAL:  the database system is starting up", None),
        (SOCKET + "FATAL:  sorry, too many clients already", None),
        (SOCKET + "FATAL:  no more connections allowed (max_client_conn)", None),
        (SOCKET + "No such file or directory\n\tIs the server running locally?", None),
        ('connection failed: connection to server at "10.0.0.1", port 5432 failed: session is read-only', None),
    ],
)
def test_a_server_fatal_is_permanent_unless_it_passes_by_itself(message: str, refusal: str | None) -> None:
    assert permanent_refusal(psycopg.OperationalError(message)) == refusal


def multi(*errors: str) -> psycopg.OperationalError:
    lines = [errors[-1], "Multiple connection attempts failed. All failures were:"]
    lines += ["- host: 'h%d', port: '5432', hostaddr: None: %s" % (i, error) for i, error in enumerate(errors)]
    return psycopg.OperationalError("\n".join(lines))


def test_with_several_hosts_it_is_permanent_only_when_every_host_refused() -> None:
    refused = SOCKET + 'FATAL:  role "x" does not exist'
    down = SOCKET + "Connection refused"
    assert permanent_refusal(multi(down, refused)) is None
    assert permanent_refusal(multi(refused, refused)) == 'FATAL: role "x" does not exist'


def test_other_errors_are_not_refusals() -> None:
    assert permanent_refusal(psycopg.InterfaceError("connection is closed")) is None
    assert permanent_refusal(ValueError("FATAL: no")) is None

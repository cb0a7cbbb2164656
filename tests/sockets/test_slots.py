"""The cross-replica caps on real PostgreSQL: each ConnectionCaps here is one replica (its own
process identity); staleness is made by moving a replica's seen_at back, never by sleeping."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from django.db import connection

from apps.sockets import slots
from apps.sockets.models import OpenSocket, SocketReplica
from iacplatform.sockets import RECONCILE_TICKS, ConnectionCaps

pytestmark = pytest.mark.django_db(transaction=True)

USER_AND_SOURCE = {"user:1": 2, "source:a": 3}


def replica() -> ConnectionCaps:
    return ConnectionCaps(background=False)


def socket_id() -> uuid.UUID:
    return uuid.uuid4()


def counts() -> dict[str, int]:
    result: dict[str, int] = {}
    for key in OpenSocket.objects.values_list("key", flat=True):
        result[key] = result.get(key, 0) + 1
    return result


def stop_renewing(caps: ConnectionCaps, *, seconds_ago: float) -> None:
    """As if ``caps``'s process died ``seconds_ago`` (its last renewal)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE sockets_socketreplica SET seen_at = now() - make_interval(secs => %s) WHERE process = %s",
            [seconds_ago, caps.process],
        )


def test_caps_count_every_replica_and_refuse_past_the_limit_of_any_key_taking_nothing_then() -> None:
    a, b = replica(), replica()
    first = socket_id()
    assert a.acquire(first, USER_AND_SOURCE, kind="hub") is None
    assert b.acquire(socket_id(), USER_AND_SOURCE, kind="hub") is None
    assert a.acquire(socket_id(), USER_AND_SOURCE, kind="hub") == "user:1"
    assert b.acquire(socket_id(), USER_AND_SOURCE, kind="hub") == "user:1"
    assert counts() == {"user:1": 2, "source:a": 2}
    assert b.acquire(socket_id(), {"user:2": 2, "source:a": 3}, kind="hub") is None
    assert a.acquire(socket_id(), {"user:3": 2, "source:a": 3}, kind="hub") == "source:a"
    a.release(first)
    assert b.acquire(socket_id(), USER_AND_SOURCE, kind="hub") is None
    assert counts() == {"user:1": 2, "user:2": 1, "source:a": 3}


def test_a_socket_takes_keys_in_two_steps_and_gives_all_back_at_once() -> None:
    a = replica()
    agent = socket_id()
    assert a.acquire(agent, {"source:a": 5}, kind="agent") is None
    assert a.acquire(agent, {"pool:1": 5}, kind="agent") is None
    assert counts() == {"source:a": 1, "pool:1": 1}
    a.release(agent)
    a.release(agent)  # a second disconnect, or one of a socket that held nothing: no-op
    assert counts() == {}


def test_replicas_racing_for_the_last_slot_never_both_get_it() -> None:
    racers = [replica() for _ in range(8)]
    barrier = threading.Barrier(len(racers))
    results: list[str | None] = []

    def race(caps: ConnectionCaps) -> None:
        try:
            barrier.wait()
            results.append(caps.acquire(socket_id(), {"pool:7": 3}, kind="agent"))
        finally:
            connection.close()

    threads = [threading.Thread(target=race, args=(caps,)) for caps in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results, key=str) == [None] * 3 + ["pool:7"] * 5
    assert counts() == {"pool:7": 3}


def test_a_dead_replicas_slots_stop_counting_after_the_window_and_are_swept(settings: Any) -> None:
    settings.SOCKET_CAP_STALE_SECONDS = 30
    dead, live = replica(), replica()
    for _ in range(2):
        assert dead.acquire(socket_id(), {"user:1": 2}, kind="hub") is None
    stop_renewing(dead, seconds_ago=29)
    assert live.acquire(socket_id(), {"user:1": 2}, kind="hub") == "user:1"  # still within the window
    stop_renewing(dead, seconds_ago=31)
    assert live.acquire(socket_id(), {"user:1": 2}, kind="hub") is None
    assert slots.sweep(stale=30, batch=1) == 1  # bounded: one row per batch here
    assert slots.sweep(stale=30, batch=1) == 1
    assert slots.sweep(stale=30, batch=1) == 0  # the last batch found nothing: the replica goes too
    assert list(SocketReplica.objects.values_list("process", flat=True)) == [live.process]
    assert counts() == {"user:1": 1}
    live.step()  # renews; nothing stale left to sweep
    assert slots.sweep(stale=30) == 0


def test_a_replica_whose_row_went_stale_puts_its_sockets_back_at_its_next_step(settings: Any) -> None:
    settings.SOCKET_CAP_STALE_SECONDS = 30
    slow, other = replica(), replica()
    kept = [socket_id(), socket_id()]
    for held in kept:
        assert slow.acquire(held, {"user:1": 2}, kind="hub") is None
    # Its refresher lost the database for longer than the window; another replica swept it.
    stop_renewing(slow, seconds_ago=60)
    while slots.sweep(stale=30):
        pass
    assert counts() == {}
    slow.step()
    assert counts() == {"user:1": 2}
    assert other.acquire(socket_id(), {"user:1": 2}, kind="hub") == "user:1"
    slow.release(kept[0])
    assert other.acquire(socket_id(), {"user:1": 2}, kind="hub") is None


def test_a_release_the_database_missed_is_retried_by_the_next_step() -> None:
    a = replica()
    held = socket_id()
    assert a.acquire(held, {"user:1": 1}, kind="hub") is None
    with connection.cursor() as cursor:
        # The database refuses the delete (as when it is unreachable) without refusing the rest.
        cursor.execute(
            "CREATE FUNCTION sockets_refuse() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'unavailable'; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER sockets_refuse BEFORE DELETE ON sockets_opensocket"
            " FOR EACH ROW EXECUTE FUNCTION sockets_refuse()"
        )
    try:
        a.release(held)
        assert counts() == {"user:1": 1}
        assert a.unreleased == {held}
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER sockets_refuse ON sockets_opensocket")
            cursor.execute("DROP FUNCTION sockets_refuse()")
    a.step()
    assert counts() == {}
    assert a.unreleased == set()


def test_every_reconcile_tick_rewrites_the_replicas_rows_from_the_sockets_it_holds() -> None:
    a = replica()
    held = socket_id()
    assert a.acquire(held, {"user:1": 2}, kind="hub") is None
    # What a database crash can do to an asynchronously committed disconnect: the row of a
    # socket this replica no longer holds is back.
    with connection.cursor() as cursor:
        cursor.execute(slots.INSERT, [a.process, [socket_id()], ["user:1"], ["hub"]])
    assert counts() == {"user:1": 2}
    for _ in range(RECONCILE_TICKS - 1):
        a.step()
    assert counts() == {"user:1": 2}  # renewals only, in between
    a.step()
    assert counts() == {"user:1": 1}
    assert list(OpenSocket.objects.values_list("socket", flat=True)) == [held]

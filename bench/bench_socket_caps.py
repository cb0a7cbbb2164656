"""What the cross-replica connection caps cost a connect, on an empty table and on a large one,
side by side in one run (apps/sockets/slots.py).

One "connect" is what a hub socket's connect and disconnect cost the caps: ``take`` (register
probe, two advisory locks, one count, one insert, commit) under a source key and a user key, then
``give_back`` (one delete, autocommit). Measured first on an empty table, then with 200,000
rows: 100 replicas of which half are dead and not yet swept, 20,000 user keys, and the source
key the connects use already at 999 live sockets (the count of a hot key reads every live row of
that key: the one cost that grows, with the key's limit, never with the table). Goal: the large
table's p99 within 2x the empty table's ("cost grows with work, never with history").

``make bench BENCH=bench_socket_caps``; DATABASE_URL must point at a migrated database. The
benchmark's rows are its own replicas' (random ids) and are deleted at the end.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

from bench.report import Progress, Row
from harness.stats import percentile

BENCH = "socket_caps"
CONNECTS = 500
ROWS = 200_000
REPLICAS = 100
HOT = 999
GOAL_RATIO = 2.0


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iacplatform.settings")
    os.environ.setdefault("SECRET_KEY", "bench-only-secret")
    import django

    django.setup()


def _connects(tag: str, replica: uuid.UUID) -> list[float]:
    from apps.sockets import slots

    samples = []
    for n in range(CONNECTS + 20):
        socket = uuid.uuid4()
        started = time.perf_counter()
        refused = slots.take(
            socket=socket,
            keys={"source:%s" % tag: 100_000, "user:%s-%d" % (tag, n % 50): 50},
            kind="hub",
            replica=replica,
            pod="bench",
            stale=30.0,
            first=n == 0,
        )
        slots.give_back([socket])
        if n >= 20:  # the first are warm-up: plans cached, pages in shared buffers
            samples.append((time.perf_counter() - started) * 1000)
        if refused is not None:
            raise RuntimeError("refused under %s" % refused)
    return samples


def _seed(prefix: str, source: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO sockets_socketreplica (process, pod, started_at, seen_at)"
            " SELECT md5(%s || i)::uuid, 'bench-' || i, now(), now() - make_interval(secs => (i %% 2) * 3600)"
            " FROM generate_series(1, %s) AS i",
            [prefix, REPLICAS],
        )
        cursor.execute(
            "INSERT INTO sockets_opensocket (socket, key, kind, replica, opened_at)"
            " SELECT gen_random_uuid(), 'user:' || (i %% 20000), 'hub', md5(%s || (1 + i %% %s))::uuid, now()"
            " FROM generate_series(1, %s) AS i",
            [prefix, REPLICAS, ROWS],
        )
        # The hot key's live rows: on the live (even) replicas.
        cursor.execute(
            "INSERT INTO sockets_opensocket (socket, key, kind, replica, opened_at)"
            " SELECT gen_random_uuid(), %s, 'agent', md5(%s || (2 * (1 + i %% 50)))::uuid, now()"
            " FROM generate_series(1, %s) AS i",
            [source, prefix, HOT],
        )
        cursor.execute("ANALYZE sockets_opensocket")
        cursor.execute("ANALYZE sockets_socketreplica")


def _clean(prefix: str, replicas: list[uuid.UUID]) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM sockets_opensocket WHERE replica IN"
            " (SELECT md5(%s || i)::uuid FROM generate_series(1, %s) AS i) OR replica = ANY(%s)",
            [prefix, REPLICAS, replicas],
        )
        cursor.execute(
            "DELETE FROM sockets_socketreplica WHERE process IN"
            " (SELECT md5(%s || i)::uuid FROM generate_series(1, %s) AS i) OR process = ANY(%s)",
            [prefix, REPLICAS, replicas],
        )


def run(progress: Progress) -> list[Row]:
    _setup_django()
    prefix = "bench-caps-%s-" % uuid.uuid4().hex[:8]
    empty_replica, large_replica = uuid.uuid4(), uuid.uuid4()
    try:
        progress.step("%d connects on an empty table" % CONNECTS)
        empty = _connects("10.0.0.1", empty_replica)
        progress.step("seeding %d rows" % (ROWS + HOT))
        _seed(prefix, "source:10.0.0.2")
        progress.step("%d connects on %d rows" % (CONNECTS, ROWS + HOT))
        large = _connects("10.0.0.2", large_replica)
    finally:
        _clean(prefix, [empty_replica, large_replica])
    rows = []
    for q in (50, 99):
        base, value = percentile(empty, q), percentile(large, q)
        rows.append(Row(BENCH, "empty table", "p%d connect + disconnect" % q, "ms", base, "reference", None))
        met = value <= GOAL_RATIO * base if q == 99 else None
        rows.append(
            Row(
                BENCH,
                "%d rows (half dead, hot key at %d live)" % (ROWS + HOT, HOT),
                "p%d connect + disconnect" % q,
                "ms",
                value,
                "<= %gx empty" % GOAL_RATIO if q == 99 else "",
                met,
                reference="empty table",
                reference_value=base,
            )
        )
    progress.done("p99 %.2f ms empty, %.2f ms large" % (percentile(empty, 99), percentile(large, 99)))
    return rows


if __name__ == "__main__":
    from bench.run import main

    sys.exit(main(["bench.run", "bench_socket_caps"]))

"""How each operation's cost grows with history and fleet: the database seeded at 1x, 10x and 100x.

Sizes and what stays constant are in bench/scale_seed.py (JobRun 1 / 7 / 30 days at the default
intervals; 1k / 10k / 100k workspaces; 10k / 100k / 1M finished tasks with two log chunks each;
100 / 1,000 / 1,000 agents; the same handful of work due at every size). At each size, median of
``REPEAT`` runs, in this process against DATABASE_URL:

- ``clusterstatus`` and ``clusterstatus --json``, after ``jobrun_retention`` has folded the ticks
  past the 7-day window into daily aggregates (the steady state); at 100x also before (30 days of
  raw ticks: the first run after an upgrade, written before the overlap trigger existed), the
  one-off backfill of their overlap flags, then one planted overlap (written through the trigger)
  counted by the flags (the goal: < 1 s) and by the exact walk over the ~1 million ticks (an
  audit, for comparison); both must find exactly that one;
- each job's tick (its function, in a transaction rolled back afterwards, so every run sees the
  same work due); ``jobrun_retention``'s first tick at 100x does its bounded batches of real work,
  and so does ``task_log_retention``'s on 100,000 tasks moved past the window (last, at 100x);
  at 100x the retention jobs' finding queries are EXPLAINed (ANALYZE) and must read their indexes;
- the first page of the task, workspace and agent lists (REST, as a superuser), and the admin's
  task, workspace, JobRun, agent and state-version changelists;
- enqueue -> dispatched (``enqueue_task`` committed, its kick dispatching to an idle agent).

Goals: clusterstatus < 1 s at 100x (30 days); no operation more than 2x slower from 10x to 100x
(its output is the same size at both: the work due does not grow). Then the channel layer's memory
for a consumer that stopped reading: bodies held for it within 2 x capacity x message size (a
buffer of capacity inline bodies plus one claim, apps/pglayer/inline.py), and the process's RSS
growth while 3,000 sends of 5 KB were attempted.

``make bench BENCH=bench_scale``; it empties the seeded tables of the bench database before and
after (about 4 minutes on 2 shared CPUs, most of it seeding the 100x size).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from datetime import timedelta
from io import StringIO
from typing import Any

from bench.report import Progress, Row

BENCH = "scale"
REPEAT = 5


class _Rollback(Exception):
    pass


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iacplatform.settings")
    os.environ.setdefault("SECRET_KEY", "bench-only-secret")
    import django

    django.setup()


def _median_ms(func: Callable[[], object], repeat: int = REPEAT) -> float:
    func()  # warm: plans cached, pages in shared buffers, as in a running cluster
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        func()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def _once_ms(func: Callable[[], object]) -> float:
    started = time.perf_counter()
    func()
    return (time.perf_counter() - started) * 1000


def _job_tick(name: str) -> Callable[[], None]:
    from django.db import transaction

    from apps.coordination.fencing import Tick, raise_epoch
    from apps.coordination.registry import registered_jobs

    spec = next(spec for spec in registered_jobs() if spec.name == name)

    def tick() -> None:
        try:
            with transaction.atomic():
                raise_epoch(name="bench-scale", epoch=10**9, holder="bench")
                spec.func(Tick(job=name, holder="bench", lease="bench-scale", epoch=10**9))
                raise _Rollback
        except _Rollback:
            pass

    return tick


def _clusterstatus(*args: str) -> Callable[[], None]:
    from django.core.management import call_command

    def run() -> None:
        call_command("clusterstatus", *args, stdout=StringIO())

    return run


def _page(client: Any, path: str) -> Callable[[], None]:
    def get() -> None:
        response = client.get(path)
        if response.status_code != 200:
            raise RuntimeError("%s answered %d" % (path, response.status_code))

    return get


def _enqueue_to_dispatch() -> Callable[[], None]:
    from apps.workspaces.actions import enqueue_task
    from apps.workspaces.models import Task, Workspace

    workspace = Workspace.objects.filter(drift_check_enabled=False, locked=False).order_by("pk")[10]

    def run() -> None:
        task = enqueue_task(workspace=workspace, type=Task.Type.PLAN)
        task.refresh_from_db()
        if task.status != Task.Status.DISPATCHED:
            raise RuntimeError("task %d is %s, not dispatched" % (task.pk, task.status))
        Task.objects.filter(pk=task.pk).update(status=Task.Status.SUCCEEDED)

    return run


def _fresh_agents() -> None:
    from django.db import connection

    from bench.scale_seed import DUE

    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE agents_agent SET last_heartbeat = CASE WHEN id <= %s THEN now() - interval '10 minutes'"
            " ELSE now() END",
            [DUE],
        )


def _measure_size(size: Any, progress: Progress) -> dict[str, float]:
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.test import Client
    from django.utils import timezone

    from apps.coordination.models import JobRun
    from apps.coordination.overlaps import backfill_flags, overlap_counts, overlapping_ticks
    from apps.coordination.registry import autodiscover, registered_jobs
    from apps.coordination.retention import prune
    from bench.scale_seed import SIZES, seed, vacuum

    progress.step("%s: seeding" % size.name)
    started = time.perf_counter()
    rows = seed(size)
    out: dict[str, float] = {"seed_s": time.perf_counter() - started, "jobruns": rows["jobrun"]}
    autodiscover()
    _fresh_agents()
    retention = timedelta(days=settings.JOBRUN_RETENTION_DAYS)
    if size.jobrun_days <= settings.JOBRUN_RETENTION_DAYS:
        backfill_flags()  # the seed is history from before the overlap trigger; timed at 100x
    else:
        progress.step(
            "%s: overlap backfill, clusterstatus and the walk over %d raw ticks" % (size.name, rows["jobrun"])
        )
        out["overlap backfill (once, at the upgrade)"] = _once_ms(backfill_flags)
        out["clusterstatus (raw history)"] = _once_ms(_clusterstatus())
        planted = timezone.now() - timedelta(days=17)
        before = JobRun.objects.filter(job="cmdb_sync", started_at__lte=planted).order_by("-started_at").first()
        assert before is not None
        JobRun.objects.create(
            job="cmdb_sync",
            holder="intruder",
            epoch=1,
            started_at=before.started_at + timedelta(seconds=1),
            finished_at=before.started_at + timedelta(seconds=2),
            outcome="ok",
        )
        counted: list[int] = []
        out["overlap count (raw history)"] = _median_ms(lambda: counted.append(overlap_counts().window))
        found: list[int] = []
        out["overlap walk, exact audit (raw history)"] = _once_ms(lambda: found.append(overlapping_ticks()))
        if set(found) != {1} or set(counted) != {1}:
            raise RuntimeError(
                "overlaps found: %s by the flags, %s by the walk, not the planted one" % (counted, found)
            )
        progress.step("%s: first jobrun_retention tick" % size.name)
        out["job: jobrun_retention (backlog)"] = _once_ms(lambda: prune(retention=retention))
        progress.step("%s: folding the rest of the history into aggregates" % size.name)
        while prune(retention=retention, max_batches=1000).ticks:
            pass
        vacuum()  # autovacuum's work after the deletes (dead index entries slow every scan until then)
        JobRun.objects.filter(holder="intruder").delete()
    out["jobruns kept"] = JobRun.objects.count()
    progress.step("%s: clusterstatus" % size.name)
    out["clusterstatus"] = _median_ms(_clusterstatus())
    out["clusterstatus --json"] = _median_ms(_clusterstatus("--json"))
    for spec in registered_jobs():
        progress.step("%s: job %s" % (size.name, spec.name))
        _fresh_agents()
        out["job: %s" % spec.name] = _median_ms(_job_tick(spec.name))
    if size is SIZES[-1]:
        progress.step("%s: plans of the retention jobs' queries" % size.name)
        _check_retention_plans()
    settings.ALLOWED_HOSTS = ["*"]
    user = User.objects.filter(username="bench-scale").first() or User.objects.create_superuser(
        "bench-scale", "bench@example.com", None
    )
    client = Client()
    client.force_login(user)
    for path in (
        "/api/v1/tasks/",
        "/api/v1/workspaces/",
        "/api/v1/agents/",
        "/admin/workspaces/task/",
        "/admin/workspaces/workspace/",
        "/admin/coordination/jobrun/",
        "/admin/agents/agent/",
        "/admin/workspaces/stateversion/",
    ):
        progress.step("%s: %s" % (size.name, path))
        out["GET " + path] = _median_ms(_page(client, path))
    progress.step("%s: enqueue -> dispatch" % size.name)
    _fresh_agents()
    out["enqueue -> dispatched"] = _median_ms(_enqueue_to_dispatch())
    if size is SIZES[-1]:
        progress.step("%s: task_log_retention on a backlog of %d tasks" % (size.name, LOG_BACKLOG))
        out[BACKLOG_OP] = _log_backlog_tick()
    return out


LOG_BACKLOG = 100_000
BACKLOG_OP = "job: task_log_retention (first tick, %d tasks past the window)" % LOG_BACKLOG


def _log_backlog_tick() -> float:
    """An upgrade onto old logs: LOG_BACKLOG finished tasks moved past the window, then one real
    (committed) tick of the job: its 20 batches (of 1,000 tasks here: 2 chunks each), not the whole backlog."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE workspaces_task SET finished_at = finished_at - interval '60 days'"
            " WHERE id <= %s AND finished_at IS NOT NULL",
            [LOG_BACKLOG],
        )
    from bench.scale_seed import vacuum

    vacuum()
    from django.conf import settings
    from django.utils import timezone

    from apps.workspaces import retention

    cutoff = timezone.now() - timedelta(days=settings.TASK_LOG_RETENTION_DAYS)
    done: list[retention.Pruned] = []
    elapsed = _once_ms(lambda: done.append(retention.prune_task_logs(cutoff=cutoff)))
    if done[0].batches != retention.MAX_BATCHES:
        raise RuntimeError("the backlog tick did %d batches, not one tick's bound" % done[0].batches)
    return elapsed


def _check_retention_plans() -> None:
    """EXPLAIN ANALYZE of each retention batch's finding query at the largest size: each must read
    its partial index (the history outside it is never visited). Plans go to the bench log."""
    import logging

    from django.db import connection, transaction
    from django.utils import timezone

    from apps.workspaces import retention

    now = timezone.now()
    params: dict[str, Any] = {
        "cutoff": now - timedelta(days=30),
        "now": now,
        "batch": 5000,
        "tasks": 500,
        "workspaces": 100,
    }
    for sql, index in (
        (retention.DUE_TASKS_SQL, "task_log_retained"),
        (retention.DUE_WORKSPACES_SQL, "workspace_state_prune_due"),
        (retention.OLD_TRANSITIONS_SQL.replace("%(cutoff)s", "%(old)s"), "state_transition_created"),
    ):
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, {**params, "old": now - timedelta(days=365)})
                plan = "\n".join(row[0] for row in cursor.fetchall())
                raise _Rollback
        except _Rollback:
            pass
        logging.getLogger("bench.scale").warning("plan at the largest size:\n%s", plan)
        if index not in plan:
            raise RuntimeError("the retention query does not read %s:\n%s" % (index, plan))


def _layer_memory(progress: Progress) -> list[Row]:
    """A consumer that took one message and stopped: what its replica holds while 3,000 sends of
    5 KB are attempted (most refused with ChannelFull)."""
    import asyncio

    from channels.exceptions import ChannelFull

    from apps.pglayer.core import PostgresChannelLayer

    capacity, size, attempts = 100, 5000, 3000

    def rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    async def scenario() -> tuple[int, int, int]:
        consumer = PostgresChannelLayer(prefix="benchscale", capacity=capacity)
        sender = PostgresChannelLayer(prefix="benchscale", capacity=capacity)
        try:
            channel = await consumer.new_channel()
            await sender.send(channel, {"n": -1})
            await consumer.receive(channel)
            accepted = 0
            before = rss()
            for n in range(attempts):
                try:
                    await sender.send(channel, {"n": n, "pad": "x" * size})
                    accepted += 1
                except ChannelFull:
                    pass
            await asyncio.sleep(1.0)  # every NOTIFY has arrived
            grown = rss() - before
            state = consumer._channels.get(consumer._key(channel))
            held = sum(len(row.body) for row in state.buffer) if state is not None else 0
            await sender.flush()
            return accepted, held, grown
        finally:
            await consumer.close()
            await sender.close()

    progress.step("channel layer: a consumer that stopped reading")
    accepted, held, grown = asyncio.run(scenario())
    bound = 2 * capacity * size
    scenario_name = "consumer stopped reading; %d sends of 5 KB attempted, capacity %d" % (attempts, capacity)
    return [
        Row(
            BENCH,
            scenario_name,
            "sends accepted",
            "msgs",
            accepted,
            "<= capacity (%d)" % capacity,
            accepted <= capacity,
        ),
        Row(
            BENCH,
            scenario_name,
            "bodies held in the replica",
            "KB",
            held / 1000,
            "<= 2 x capacity x size (%d KB)" % (bound // 1000),
            held <= bound,
        ),
        Row(BENCH, scenario_name, "RSS growth", "KB", grown / 1000, "-", None),
    ]


def run(progress: Progress) -> list[Row]:
    _setup_django()
    from apps.pglayer.core import close_all_layers
    from bench.scale_seed import SIZES, truncate

    results: dict[str, dict[str, float]] = {}
    try:
        for size in SIZES:
            results[size.name] = _measure_size(size, progress)
    finally:
        truncate()
        close_all_layers()
    small, mid, big = (results[size.name] for size in SIZES)
    rows: list[Row] = []
    for op in big:
        if op in ("seed_s", "jobruns", "jobruns kept"):
            continue
        value = big[op]
        if op in mid:
            ratio_ok = value <= 2 * mid[op]
            goal = "<= 2x the 10x size"
            if op.startswith("clusterstatus"):
                goal += "; < 1000 ms at 30 days"
                ratio_ok = ratio_ok and value < 1000
            rows.append(
                Row(
                    BENCH,
                    "100x (1x: %s ms)" % ("%.1f" % small[op] if op in small else "-"),
                    op,
                    "ms",
                    value,
                    goal,
                    ratio_ok,
                    reference="10x",
                    reference_value=mid[op],
                )
            )
        elif op == BACKLOG_OP:
            rows.append(Row(BENCH, "100x, an upgrade onto old logs", op, "ms", value, "-", None))
        else:
            goal = "< 1000 ms" if op.startswith("overlap count") else "-"
            met = value < 1000 if goal != "-" else None
            rows.append(Row(BENCH, "100x, %d raw ticks" % big["jobruns"], op, "ms", value, goal, met))
    rows.append(
        Row(
            BENCH,
            "seeding (1x / 10x: %.0f s / %.0f s)" % (small["seed_s"], mid["seed_s"]),
            "seed 100x by SQL",
            "s",
            big["seed_s"],
            "-",
            None,
        )
    )
    rows.extend(_layer_memory(progress))
    return rows


if __name__ == "__main__":
    import sys

    from bench.report import markdown

    produced = run(Progress())
    sys.stdout.write(markdown(produced, title="bench_scale"))

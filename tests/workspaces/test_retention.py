"""Retention of task logs, state versions and state transitions (apps/workspaces/retention.py):
what is past its window goes in bounded, fenced batches; what anything still needs never does."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from apps.coordination.fencing import StaleEpoch, Tick, raise_epoch
from apps.coordination.registry import registered_jobs
from apps.workspaces import retention, states
from apps.workspaces.jobs import state_transition_retention, state_version_retention, task_log_retention
from apps.workspaces.models import StateTransition, StateVersion, Task, TaskLogChunk, Workspace
from tests import plans
from tests.agents.fixtures import Pool
from tests.workspaces.test_states import tfstate

pytestmark = pytest.mark.django_db(transaction=True)

DAY = timedelta(days=1)


def tick(job: str, epoch: int = 1) -> Tick:
    return Tick(job=job, holder="leader-1", lease="test-lease", epoch=epoch)


@pytest.fixture
def term(db: None) -> None:
    assert raise_epoch(name="test-lease", epoch=1, holder="leader-1")


def finished_task(workspace: Workspace, *, ago: timedelta, chunks: int, status: str = "succeeded") -> Task:
    when = timezone.now() - ago
    task = Task.objects.create(workspace=workspace, type="plan", status=status, started_at=when, finished_at=when)
    TaskLogChunk.objects.bulk_create(TaskLogChunk(task=task, seq=n, text="line %d\n" % n) for n in range(chunks))
    return task


def chunks_of(task: Task) -> list[int]:
    return list(TaskLogChunk.objects.filter(task=task).order_by("seq").values_list("seq", flat=True))


# --- task logs ------------------------------------------------------------------------------------


def test_the_jobs_are_registered_with_their_intervals(settings: Any) -> None:
    every = {spec.name: spec.every for spec in registered_jobs()}
    assert every["task_log_retention"] == settings.JOB_TASK_LOG_RETENTION_EVERY
    assert every["state_version_retention"] == settings.JOB_STATE_VERSION_RETENTION_EVERY
    assert every["state_transition_retention"] == settings.JOB_STATE_TRANSITION_RETENTION_EVERY


def test_the_log_of_a_task_finished_before_the_window_is_deleted_and_the_task_marked(workspace: Workspace) -> None:
    old = finished_task(workspace, ago=31 * DAY, chunks=3)
    recent = finished_task(workspace, ago=29 * DAY, chunks=2, status="failed")
    # Running (started long ago, no finished_at) and pending: never touched.
    running = Task.objects.create(
        workspace=workspace, type="apply", status="running", started_at=timezone.now() - 90 * DAY
    )
    TaskLogChunk.objects.create(task=running, seq=0, text="still going")
    # A late apply whose state is an unresolved conflict: its log is what the operator reads.
    late = finished_task(workspace, ago=60 * DAY, chunks=1, status="errored")
    held = StateVersion.objects.create(
        workspace=workspace, serial=1, lineage="L", state=tfstate(1), status="conflict", task=late, attempt=1
    )
    cutoff = timezone.now() - 30 * DAY
    done = retention.prune_task_logs(cutoff=cutoff)
    assert (done.rows, done.items) == (3, 1)
    assert chunks_of(old) == []
    assert chunks_of(recent) == [0, 1]
    assert chunks_of(running) == [0]
    assert chunks_of(late) == [0]
    StateVersion.objects.filter(pk=held.pk).update(status="discarded")
    assert retention.prune_task_logs(cutoff=cutoff).rows == 1
    assert chunks_of(late) == []
    old.refresh_from_db()
    assert old.log_pruned_at is not None and old.log_prune_complete
    assert (old.log_pruned_chunks, old.log_pruned_bytes) == (3, len("line 0\n") * 3)
    recent.refresh_from_db()
    running.refresh_from_db()
    assert recent.log_pruned_at is None and running.log_pruned_at is None
    # Again: nothing is due, the summary is not counted twice.
    assert retention.prune_task_logs(cutoff=cutoff).items == 0
    old.refresh_from_db()
    assert old.log_pruned_chunks == 3


def test_a_batch_deletes_at_most_its_chunks_and_a_long_log_is_finished_by_the_next(workspace: Workspace) -> None:
    first = finished_task(workspace, ago=40 * DAY, chunks=5)
    second = finished_task(workspace, ago=35 * DAY, chunks=2)
    cutoff = timezone.now() - 30 * DAY
    batch = retention.prune_task_logs_batch(cutoff=cutoff, batch=2)
    assert (batch.rows, batch.more) == (2, True)
    assert chunks_of(first) == [2, 3, 4] and chunks_of(second) == [0, 1]
    first.refresh_from_db()
    second.refresh_from_db()
    # Marked in the batch that deleted its first chunks: reported pruned from then on.
    assert first.log_pruned_at is not None and not first.log_prune_complete
    assert second.log_pruned_at is None
    done = retention.prune_task_logs(cutoff=cutoff, batch=2)
    assert (done.rows, done.batches) == (5, 3)
    first.refresh_from_db()
    assert first.log_prune_complete and first.log_pruned_chunks == 5
    assert chunks_of(second) == []
    # max_batches bounds one call (a tick): the rest waits for the next.
    third = finished_task(workspace, ago=33 * DAY, chunks=6)
    assert retention.prune_task_logs(cutoff=cutoff, batch=2, max_batches=2).rows == 4
    assert chunks_of(third) == [4, 5]


def test_a_task_that_never_had_a_log_is_not_reported_pruned(workspace: Workspace) -> None:
    empty = finished_task(workspace, ago=31 * DAY, chunks=0, status="cancelled")
    assert retention.prune_task_logs(cutoff=timezone.now() - 30 * DAY).items == 1
    empty.refresh_from_db()
    assert empty.log_prune_complete and empty.log_pruned_at is None


def test_the_api_answers_for_a_task_whose_log_was_pruned(workspace: Workspace) -> None:
    old = finished_task(workspace, ago=31 * DAY, chunks=4)
    recent = finished_task(workspace, ago=DAY, chunks=1)
    retention.prune_task_logs(cutoff=timezone.now() - 30 * DAY)
    root = get_user_model().objects.create_superuser("root")
    api = APIClient()
    api.force_authenticate(root)
    answer = api.get("/api/v1/tasks/%d/log/" % old.pk)
    assert answer.status_code == 200
    body = answer.json()
    assert body["chunks"] == [] and body["complete"] is True
    assert body["pruned"] is True and body["pruned_chunks"] == 4 and body["pruned_at"]
    assert api.get("/api/v1/tasks/%d/" % old.pk).json()["log_pruned_at"] == body["pruned_at"]
    kept = api.get("/api/v1/tasks/%d/log/" % recent.pk).json()
    assert kept["pruned"] is False and kept["pruned_at"] is None and [c["seq"] for c in kept["chunks"]] == [0]


def test_a_partly_deleted_log_is_answered_as_pruned_not_as_a_shorter_log(workspace: Workspace) -> None:
    old = finished_task(workspace, ago=31 * DAY, chunks=5)
    retention.prune_task_logs_batch(cutoff=timezone.now() - 30 * DAY, batch=2)
    root = get_user_model().objects.create_superuser("root")
    api = APIClient()
    api.force_authenticate(root)
    body = api.get("/api/v1/tasks/%d/log/" % old.pk, {"after": 1}).json()
    assert (body["chunks"], body["pruned"], body["complete"]) == ([], True, True)


def test_a_stale_leaders_log_prune_writes_nothing(term: None, workspace: Workspace) -> None:
    old = finished_task(workspace, ago=31 * DAY, chunks=3)
    with pytest.raises(StaleEpoch):
        task_log_retention(tick("task_log_retention", epoch=0))
    assert chunks_of(old) == [0, 1, 2]
    old.refresh_from_db()
    assert old.log_pruned_at is None
    task_log_retention(tick("task_log_retention"))
    assert chunks_of(old) == []


# --- state versions -------------------------------------------------------------------------------


def _apply(workspace: Workspace) -> Task:
    return Task.objects.create(workspace=workspace, type="apply", status="running", started_at=timezone.now())


def _write(task: Task, serial: int, *, live: bool = True, **outputs: str) -> StateVersion:
    offer = states.offer_state(task=task, attempt=1, state=tfstate(serial, **outputs), live=live)
    assert offer.version is not None
    return offer.version


def _age(workspace: Workspace, days: float, *, serials: list[int] | None = None) -> None:
    """Versions written ``days`` ago; the workspace's next look (if any) is due by now."""
    versions = StateVersion.objects.filter(workspace=workspace)
    if serials is not None:
        versions = versions.filter(serial__in=serials)
    versions.update(created_at=timezone.now() - timedelta(days=days))
    Workspace.objects.filter(pk=workspace.pk, state_prune_at__isnull=False).update(state_prune_at=timezone.now())


def _serials(workspace: Workspace) -> list[int]:
    return list(StateVersion.objects.filter(workspace=workspace).order_by("serial").values_list("serial", flat=True))


def _prune_versions(*, keep: int, batch: int = 500, max_batches: int = 20) -> retention.Pruned:
    return retention.prune_state_versions(
        keep=keep, window=30 * DAY, now=timezone.now() + timedelta(seconds=1), batch=batch, max_batches=max_batches
    )


def test_old_versions_beyond_the_newest_are_pruned_never_the_current_a_conflict_or_a_young_one(
    settings: Any, workspace: Workspace
) -> None:
    settings.STATE_VERSIONS_KEEP = 3
    task = _apply(workspace)
    for serial in range(1, 6):
        _write(task, serial)  # our serials 1..5, the current is 5
    for n in range(4):
        _write(task, 10 + n, live=False, n=str(n))  # conflicts 6..9: the newest three rows
    _age(workspace, 60)
    _age(workspace, 5, serials=[2])  # younger than the window
    workspace.refresh_from_db()
    current = workspace.current_state
    assert current is not None and current.serial == 5
    assert workspace.state_prune_at is not None  # set by the writes that pushed rows past the newest 3
    done = _prune_versions(keep=3)
    # Beyond the newest three (7, 8, 9): 6 is a conflict, 5 the current, 2 too young.
    assert _serials(workspace) == [2, 5, 6, 7, 8, 9]
    assert done.rows == 3
    workspace.refresh_from_db()
    assert workspace.current_state_id == current.pk
    # Due again when version 2 passes the window, not before.
    assert workspace.state_prune_at is not None
    assert abs((workspace.state_prune_at - (timezone.now() + 25 * DAY)).total_seconds()) < 60
    # The audit rows keep the serials of the versions they pointed to.
    moves = list(StateTransition.objects.order_by("pk").values_list("from_version", "to_version", "to_serial"))
    assert [to_serial for _, _, to_serial in moves] == [1, 2, 3, 4, 5]
    assert moves[0][1] is None and moves[1][0] is None  # serial 1 pruned
    assert moves[4][1] == current.pk


def test_after_pruning_the_state_backend_still_refuses_a_stale_write_and_numbers_on(
    settings: Any, workspace: Workspace
) -> None:
    settings.STATE_VERSIONS_KEEP = 2
    task = _apply(workspace)
    for serial in range(1, 7):
        _write(task, serial)
    _age(workspace, 60)
    _prune_versions(keep=2)
    assert _serials(workspace) == [5, 6]
    with pytest.raises(states.Refused) as refused:
        _write(task, 3)  # below the current serial: Terraform's own rule still holds
    assert refused.value.status == 409
    with pytest.raises(states.Refused):
        states.offer_state(task=task, attempt=1, state=tfstate(9, lineage="other"), live=True)
    newer = _write(task, 7)
    assert newer.serial == 7 and newer.status == "accepted"
    workspace.refresh_from_db()
    assert workspace.current_state_id == newer.pk
    assert _serials(workspace) == [5, 6, 7]


def test_a_discarded_conflict_becomes_prunable_and_batches_are_bounded(settings: Any, workspace: Workspace) -> None:
    settings.STATE_VERSIONS_KEEP = 1
    root = get_user_model().objects.create_superuser("root")
    task = _apply(workspace)
    conflict = _write(task, 1, live=False)
    for serial in range(2, 8):
        _write(task, serial)  # 2..7, the current 7
    _age(workspace, 60)
    done = _prune_versions(keep=1, batch=2, max_batches=1)
    assert done.rows == 2  # one batch: two versions
    assert _serials(workspace) == [1, 4, 5, 6, 7]
    _prune_versions(keep=1, batch=2)
    assert _serials(workspace) == [1, 7]  # the unresolved conflict stays
    workspace.refresh_from_db()
    assert workspace.state_prune_at is None  # nothing left to do until something changes
    states.do_discard(workspace_id=workspace.pk, version_id=conflict.pk, actor=root)
    workspace.refresh_from_db()
    assert workspace.state_prune_at is not None
    _prune_versions(keep=1)
    assert _serials(workspace) == [7]
    assert not states.has_conflict(workspace.pk)


def test_only_due_workspaces_are_read(settings: Any, agent_pool: Pool, workspace: Workspace) -> None:
    settings.STATE_VERSIONS_KEEP = 1
    idle = Workspace.objects.create(name="idle", pool=agent_pool.pool)
    _write(_apply(idle), 1)
    task = _apply(workspace)
    for serial in range(1, 4):
        _write(task, serial)
    _age(workspace, 60)
    _age(idle, 60)
    idle.refresh_from_db()
    assert idle.state_prune_at is None  # one version: nothing will ever be due there
    done = _prune_versions(keep=1)
    assert (done.items, done.rows) == (1, 2)


def test_a_stale_leaders_version_prune_writes_nothing(term: None, settings: Any, workspace: Workspace) -> None:
    settings.STATE_VERSIONS_KEEP = 1
    task = _apply(workspace)
    for serial in range(1, 4):
        _write(task, serial)
    _age(workspace, 60)
    with pytest.raises(StaleEpoch):
        state_version_retention(tick("state_version_retention", epoch=0))
    assert _serials(workspace) == [1, 2, 3]
    state_version_retention(tick("state_version_retention"))
    assert _serials(workspace) == [3]


# --- state transitions ----------------------------------------------------------------------------


def test_transitions_older_than_their_window_are_deleted_in_bounded_batches(
    term: None, settings: Any, workspace: Workspace
) -> None:
    settings.STATE_TRANSITION_RETENTION_DAYS = 365
    task = _apply(workspace)
    for serial in range(1, 6):
        _write(task, serial)
    StateTransition.objects.filter(to_serial__lte=4).update(created_at=timezone.now() - 366 * DAY)
    cutoff = timezone.now() - 365 * DAY
    first = retention.prune_state_transitions_batch(cutoff=cutoff, batch=3)
    assert (first.rows, first.more) == (3, True)
    with pytest.raises(StaleEpoch):
        state_transition_retention(tick("state_transition_retention", epoch=0))
    assert StateTransition.objects.count() == 2
    state_transition_retention(tick("state_transition_retention"))
    assert list(StateTransition.objects.values_list("to_serial", flat=True)) == [5]
    assert _serials(workspace) == [1, 2, 3, 4, 5]  # the versions are not the transitions' to prune


# --- plans: what each batch reads -----------------------------------------------------------------

# A year of history, seeded by SQL: 20,000 workspaces (one in a hundred due for a look at its
# state versions, each on its own page), 60,000 tasks finished over 365 days (the logs of those
# before the window long pruned, a day's backlog still due), a state version for every fifth task
# (one in a thousand an unresolved conflict), 30,000 transitions over 366 days.
WORKSPACES = 20_000
TASKS = 60_000
TRANSITIONS = 30_000
YEAR = 365 * DAY


@pytest.fixture
def a_year_of_history(agent_pool: Pool) -> None:
    """Committed, as in production (the module's tests are transactional): the flush that ends the
    test truncates the tables, so no later test plans over this year's rows."""
    seed: dict[str, Any] = {
        "pool": agent_pool.pool.pk,
        "workspaces": WORKSPACES,
        "tasks": TASKS,
        "transitions": TRANSITIONS,
        "year": YEAR,
        "conflicts": 5000,  # every fifth task writes a version: one version in a thousand
    }
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO workspaces_workspace (name, description, pool_id, terraform_files, variables, locked,"
            " lock_reason, drift_check_enabled, drift_check_interval_minutes, drift_status, state_prune_at,"
            " created_at, updated_at)"
            " SELECT 'ws-' || i, '', %(pool)s, '{}', '{}', false, '', false, 60, 'unknown',"
            # Most have nothing to prune, many a look due later, one in a hundred one due now.
            " CASE WHEN i %% 100 = 7 THEN now() - interval '1 hour'"
            " WHEN i %% 10 < 6 THEN NULL ELSE now() + make_interval(hours => i %% 720) END,"
            " now() - interval '2 years', now()"
            " FROM generate_series(1, %(workspaces)s) AS i",
            seed,
        )
        cursor.execute(
            "INSERT INTO workspaces_task (workspace_id, type, status, attempt, timeout_seconds, created_at,"
            " started_at, finished_at, error, log_pruned_at, log_pruned_chunks, log_pruned_bytes,"
            " log_prune_complete)"
            " SELECT w.id, 'plan', t.status, 1, 3600, t.at, t.finished, t.finished, '',"
            " CASE WHEN t.pruned THEN t.at + interval '31 days' END, 0, 0, t.pruned"
            " FROM (SELECT id, row_number() OVER (ORDER BY id) %% %(workspaces)s AS n FROM workspaces_workspace) AS w"
            " JOIN (SELECT i, at, CASE WHEN i <= 50 THEN NULL ELSE at END AS finished,"
            " CASE WHEN i <= 50 THEN 'pending' WHEN i %% 20 = 0 THEN 'failed' WHEN i %% 50 = 1 THEN 'errored'"
            " ELSE 'succeeded' END AS status,"
            " at < now() - interval '31 days' AS pruned"
            " FROM (SELECT i, now() - %(year)s * i / %(tasks)s AS at FROM generate_series(1, %(tasks)s) AS i) AS s)"
            " AS t ON w.n = t.i %% %(workspaces)s",
            seed,
        )
        cursor.execute(
            "INSERT INTO workspaces_stateversion (workspace_id, serial, lineage, terraform_serial, state, status,"
            " task_id, attempt, created_at)"
            " SELECT workspace_id, row_number() OVER (PARTITION BY workspace_id ORDER BY id), 'L', 1, '{}',"
            " CASE WHEN id %% %(conflicts)s = 0 THEN 'conflict' ELSE 'accepted' END, id, 1, finished_at"
            " FROM workspaces_task WHERE id %% 5 = 0 AND finished_at IS NOT NULL",
            seed,
        )
        cursor.execute(
            "INSERT INTO workspaces_statetransition (workspace_id, kind, from_lineage, to_serial, to_lineage,"
            " created_at)"
            # Over a year and a day: a day's backlog past the window.
            " SELECT w.id, 'terraform', 'L', t.i, 'L', now() - %(year)s * 366 / 365 * t.i / %(transitions)s"
            " FROM (SELECT id, row_number() OVER (ORDER BY id) %% %(workspaces)s AS n FROM workspaces_workspace) AS w"
            " JOIN generate_series(1, %(transitions)s) AS t(i) ON w.n = t.i %% %(workspaces)s",
            seed,
        )
        for table in ("workspace", "task", "stateversion", "statetransition"):
            cursor.execute("ANALYZE workspaces_" + table)


# What a batch of ten may touch: its index pages, its ten rows and the few unresolved conflicts
# (25 to 50 buffers on PostgreSQL 15 and 18). A scan reads the whole table (270 to 1,000 pages
# here); a bitmap of every due workspace reads 200.
BATCH_OF_TEN_BUFFERS = 100


def test_each_batch_finds_its_work_in_its_partial_index_on_a_large_table(a_year_of_history: None) -> None:
    """Without enable_seqscan = off, on ANALYZEd tables of realistic size, the planner reads each
    rule's work from its index, for a batch of ten and for the job's own limits, and a batch of
    ten touches a bounded number of pages: what it returns, not the history. (On an empty or tiny
    table the planner's choice between indexes follows whatever statistics earlier tests left.)"""
    now = timezone.now()
    cases = [
        # statement, its index, the table it must never scan, cutoff, its limit, the job's limit
        (retention.DUE_TASKS_SQL, "task_log_retained", "workspaces_task", now - 30 * DAY, "tasks", retention.LOG_TASKS),
        (
            retention.DUE_WORKSPACES_SQL,
            "workspace_state_prune_due",
            "workspaces_workspace",
            now,
            "workspaces",
            retention.VERSION_WORKSPACES,
        ),
        (
            retention.OLD_TRANSITIONS_SQL,
            "state_transition_created",
            "workspaces_statetransition",
            now - YEAR,
            "batch",
            retention.TRANSITION_BATCH,
        ),
    ]
    for sql, index, table, cutoff, limit, job_limit in cases:
        params: dict[str, Any] = {"cutoff": cutoff, "now": now}
        for size in (10, job_limit):
            plans.assert_indexed(sql, {**params, limit: size}, index, table=table)
        ran = plans.plan(sql, {**params, limit: 10}, analyze=True)
        found = [n["Actual Rows"] for n in plans.nodes(ran) if n.get("Index Name") == index]
        assert found == [10], (index, found)  # ten rows of work, read from the index
        assert plans.buffers(ran) <= BATCH_OF_TEN_BUFFERS, (index, plans.buffers(ran))

"""Bounded counts: exact up to the cap, the planner's estimate beyond it, never a full count."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.coordination.models import JobRunDay
from iacplatform.estimates import BoundedCountPaginator, bounded_count

pytestmark = pytest.mark.django_db


def days(n: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO coordination_jobrunday (job, day, ticks, ok, error, fenced, skipped,"
            " total_duration_seconds, max_duration_seconds, overlapped)"
            " SELECT 'j' || (i %% 7), DATE '2000-01-01' + (i / 7), 1, 1, 0, 0, 0, 0, 0, 0"
            " FROM generate_series(0, %s - 1) AS i",
            [n],
        )
        cursor.execute("ANALYZE coordination_jobrunday")


def test_a_count_up_to_the_cap_is_exact() -> None:
    days(50)
    assert bounded_count(JobRunDay.objects.all(), cap=50) == 50
    assert bounded_count(JobRunDay.objects.filter(job="j1"), cap=50) == 7


def test_past_the_cap_the_count_reads_at_most_cap_plus_one_rows_and_estimates_the_rest() -> None:
    days(5000)
    with CaptureQueriesContext(connection) as queries:
        count = bounded_count(JobRunDay.objects.all(), cap=100)
    assert "LIMIT 101" in queries.captured_queries[0]["sql"]
    assert queries.captured_queries[1]["sql"].startswith("EXPLAIN")
    assert 4000 <= count <= 6000  # ANALYZE's estimate of the 5,000 rows
    assert bounded_count(JobRunDay.objects.filter(job="no such job"), cap=100) == 0


def test_the_admin_paginator_counts_through_the_bound() -> None:
    days(30)
    paginator = BoundedCountPaginator(JobRunDay.objects.order_by("pk"), 10)
    assert (paginator.count, paginator.num_pages) == (30, 3)


GROWING = [
    "coordination/jobrun",
    "workspaces/task",
    "workspaces/workspace",
    "workspaces/stateversion",
    "workspaces/statetransition",
    "workspaces/resource",
    "agents/agent",
    "hub/editingsession",
    "hub/takeoverrequest",
    "hub/draft",
    "pglayer/message",
    "pglayer/groupmembership",
]


@pytest.mark.parametrize("changelist", GROWING)
def test_changelists_of_growing_tables_never_count_or_list_every_row(changelist: str) -> None:
    from django.contrib.auth.models import User
    from django.test import Client

    client = Client()
    client.force_login(User.objects.create_superuser("admin", "a@example.com", "pw-for-tests-only"))
    with CaptureQueriesContext(connection) as queries:
        page = client.get("/admin/%s/" % changelist)
    assert page.status_code == 200
    table = changelist.replace("/", "_")
    for query in queries.captured_queries:
        sql = query["sql"]
        if '"%s"' % table not in sql:
            continue
        assert not (sql.startswith("SELECT COUNT(") and "LIMIT" not in sql), sql  # a count of every row
        if changelist != "agents/agent":  # the agents' pods: DISTINCT over the fleet, not history
            assert not sql.startswith("SELECT DISTINCT"), sql  # a filter listing every value

"""Counting rows without scanning million-row tables: exact up to a cap, the planner's estimate past it.

``bounded_count(qs)`` counts ``qs`` exactly when it has at most ``cap`` rows (one ``COUNT(*)`` over
``LIMIT cap + 1``: it reads at most cap + 1 rows, whatever the table's size) and otherwise returns
PostgreSQL's estimate of its rows (``EXPLAIN``: no rows read), never less than cap + 1.
``BoundedCountPaginator`` is a Django paginator built on it, for the admin's changelists.

Guarantees: a count at or below the cap is exact; the cost of a count is bounded by the cap.
Does NOT: give an exact count above the cap (the estimate follows ANALYZE statistics, and a
filter's selectivity is the planner's guess), so the last page number shown may be off there.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.utils.functional import cached_property

CAP = 10_000


def bounded_count(qs: QuerySet[Any], *, cap: int = CAP) -> int:
    exact = qs.order_by()[: cap + 1].count()
    if exact <= cap:
        return exact
    return max(estimated_count(qs), cap + 1)


def estimated_count(qs: QuerySet[Any]) -> int:
    """The planner's estimate of the rows ``qs`` returns (EXPLAIN: nothing is read)."""
    sql, params = qs.order_by().query.sql_with_params()
    with connections[qs.db].cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        row = cursor.fetchone()
    plan: Any = row[0] if row else [{}]
    if isinstance(plan, str | bytes):
        plan = json.loads(plan)
    return int(plan[0].get("Plan", {}).get("Plan Rows", 0))


class BoundedCountPaginator(Paginator):
    """A paginator whose count reads at most ``CAP`` + 1 rows (ModelAdmin.paginator)."""

    @cached_property
    def count(self) -> int:
        object_list = self.object_list
        if isinstance(object_list, QuerySet):
            return bounded_count(object_list)
        return len(object_list)

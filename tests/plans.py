"""What the planner does with a statement, for tests that assert it reads an index.

Only meaningful on a large, ANALYZEd table: on an empty or tiny one the planner's choice between
indexes (or a scan) depends on whatever statistics earlier tests left, so a test built on one is
order-dependent. Seed realistic row counts by SQL (generate_series), ANALYZE, then ask."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from django.db import connection

Params = Sequence[Any] | Mapping[str, Any]


def plan(sql: str, params: Params, *, analyze: bool = False) -> dict[str, Any]:
    """The plan's root node; with ``analyze`` the statement runs (with BUFFERS counted)."""
    options = "ANALYZE, BUFFERS, FORMAT JSON" if analyze else "FORMAT JSON"
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (%s) %s" % (options, sql), params)
        raw = cursor.fetchone()[0]
    return (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]


def nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node] + [n for child in node.get("Plans", []) for n in nodes(child)]


def assert_indexed(sql: str, params: Params, index: str, *, table: str) -> None:
    """The plan reads ``index`` and never scans ``table`` whole."""
    found = nodes(plan(sql, params))
    scans = {(n["Node Type"], n.get("Relation Name"), n.get("Index Name")) for n in found}
    assert not [s for s in scans if s[0] == "Seq Scan" and s[1] == table], scans
    assert any(s[2] == index for s in scans), scans


def buffers(root: dict[str, Any]) -> int:
    """Shared buffers an executed plan (``analyze=True``) touched, hit or read; planning not counted."""
    return int(root["Shared Hit Blocks"]) + int(root["Shared Read Blocks"])

"""The embedding job across a leader crash: real runleader processes, the real model.

A trigger records every committed vector write (a rolled-back batch leaves no row), so "nothing
lost, nothing repeated" is read from the database itself, whatever each process believed.
"""

from __future__ import annotations

import signal
import time

import pytest
from django.db import connection
from django.db.models import F

from apps.agents.models import AgentPool
from apps.search.models import SearchDocument
from apps.workspaces.models import Resource
from harness import cmdb30
from harness.processes import ProcessGroup
from tests.integration.test_runleader import holder, start_leaders, wait_for

pytestmark = pytest.mark.slow

AUDIT = """
CREATE TABLE search_test_audit (resource_id bigint, sha text, holder text DEFAULT current_setting('application_name'));
CREATE FUNCTION search_test_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO search_test_audit (resource_id, sha) VALUES (NEW.resource_id, NEW.embedded_sha256);
  RETURN NEW;
END $$;
CREATE TRIGGER search_test_audit AFTER UPDATE OF embedded_sha256 ON search_searchdocument FOR EACH ROW
  WHEN (NEW.embedded_sha256 <> '' AND NEW.embedded_sha256 IS DISTINCT FROM OLD.embedded_sha256)
  EXECUTE FUNCTION search_test_audit();
"""


def audit() -> list[tuple[int, str, str]]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT resource_id, sha, holder FROM search_test_audit")
        return list(cursor.fetchall())


def test_a_leader_crash_mid_batch_neither_loses_nor_repeats_work(processes: ProcessGroup) -> None:
    pool = AgentPool(name="pool-search")
    pool.set_new_token()
    pool.save()
    cmdb30.build(pool)
    with connection.cursor() as cursor:
        cursor.execute(AUDIT)
    try:
        env = {
            "JOB_SEARCH_INDEX_EVERY": "0.5",
            "JOB_EMBEDDING_EVERY": "0.3",
            "EMBEDDING_BATCH_SIZE": "3",
            "EMBEDDING_MAX_BATCHES_PER_TICK": "1",
        }
        procs = start_leaders(processes, 2, env=env)
        names = {p.name: p for p in procs}
        wait_for(lambda: len(audit()) >= 6, 90, "the first leader's first batches")
        first = names[holder()]
        first.signal(signal.SIGKILL)
        killed_at = len(audit())
        assert killed_at < 30, "the first leader finished before the crash; nothing was tested"
        wait_for(
            lambda: (
                not SearchDocument.objects.exclude(embedded_sha256=F("text_sha256")).exists()
                and SearchDocument.objects.count() == 30
            ),
            120,
            "the successor to embed the rest",
        )
        time.sleep(1.0)  # a repeat would show up in the next ticks
        rows = audit()
        assert sorted(r[0] for r in rows) == sorted(Resource.objects.values_list("pk", flat=True))
        assert len({(r[0], r[1]) for r in rows}) == len(rows) == 30
        successor = next(p for p in procs if p is not first)
        assert {r[2].split(":")[0] for r in rows} == {first.name, successor.name}
    finally:
        with connection.cursor() as cursor:
            cursor.execute(
                "DROP TRIGGER IF EXISTS search_test_audit ON search_searchdocument;"
                " DROP FUNCTION IF EXISTS search_test_audit(); DROP TABLE IF EXISTS search_test_audit"
            )

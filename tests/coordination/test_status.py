"""clusterstatus and the coordination admin: lease, decoded advisory locks, ticks, overlaps."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from io import StringIO

import psycopg
import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.utils import timezone

from apps.coordination.lockkeys import Namespace, job_key, workspace_key
from apps.coordination.models import AdvisoryLock, JobRun, Lease
from apps.coordination.registry import autodiscover
from apps.coordination.status import cluster_status

pytestmark = pytest.mark.django_db(transaction=True)


def holding(*keys: tuple[int, int]) -> psycopg.Connection[tuple[object, ...]]:
    params = {**connection.get_connection_params(), "application_name": "leader-9:leader"}
    conn = psycopg.connect(**params, autocommit=True)
    for namespace, key in keys:
        conn.execute("SELECT pg_advisory_lock(%s, %s)", [int(namespace), key])
    return conn


def test_the_view_decodes_job_and_workspace_locks_with_their_session() -> None:
    # Names come from the registered jobs; run alone, nothing has imported the apps' jobs yet.
    autodiscover()
    with holding(job_key("cmdb_sync"), workspace_key(42)) as conn:
        pid = conn.info.backend_pid
        locks = {lock.name: lock for lock in AdvisoryLock.objects.filter(pid=pid)}
        assert set(locks) == {"job:cmdb_sync", "workspace:42"}
        assert locks["job:cmdb_sync"].application_name == "leader-9:leader"
        assert locks["job:cmdb_sync"].granted
        assert locks["workspace:42"].namespace == Namespace.WORKSPACE
    # A closed client's backend exits asynchronously: its locks go with it, a moment later.
    deadline = time.monotonic() + 10
    while AdvisoryLock.objects.filter(pid=pid).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not AdvisoryLock.objects.filter(pid=pid).exists()


def test_clusterstatus_json_reports_lease_locks_ticks_and_overlaps() -> None:
    now = timezone.now()
    Lease.objects.create(name="iacplatform-leader", holder_identity="leader-1", lease_transitions=3, renew_time=now)
    JobRun.objects.create(job="cmdb_sync", holder="leader-1", epoch=3, started_at=now, finished_at=now, outcome="ok")
    JobRun.objects.create(
        job="cmdb_sync", holder="leader-2", epoch=4, started_at=now - timedelta(seconds=5), outcome="running"
    )
    out = StringIO()
    with holding(job_key("cmdb_sync")):
        call_command("clusterstatus", "--json", stdout=out)
    status = json.loads(out.getvalue())
    assert status["lease"]["backend"] == "postgres"
    assert status["lease"]["holder"] == "leader-1"
    assert status["lease"]["epoch"] == 3
    ours = [lock for lock in status["advisory_locks"] if lock["application_name"] == "leader-9:leader"]
    assert [lock["name"] for lock in ours] == ["job:cmdb_sync"]
    ticks = {t["job"]: t for t in status["latest_ticks"]}
    assert ticks["cmdb_sync"]["holder"] == "leader-1"
    assert status["overlapping_ticks"] == 1
    assert status["tasks"] == {"active": {}, "finished_last_24h": {}}


def test_clusterstatus_text_flags_overlaps_and_survives_an_unreachable_backend(settings: object) -> None:
    settings.LEADER_ELECTION_BACKEND = "kubernetes"  # type: ignore[attr-defined]
    settings.KUBECONFIG = ""  # type: ignore[attr-defined]
    settings.KUBERNETES_SERVICE_HOST = ""  # type: ignore[attr-defined]
    now = timezone.now()
    JobRun.objects.create(job="j", holder="a", epoch=1, started_at=now, outcome="running")
    JobRun.objects.create(job="j", holder="b", epoch=2, started_at=now, outcome="running")
    out = StringIO()
    call_command("clusterstatus", stdout=out)
    text = out.getvalue()
    assert "error:" in text and "KUBECONFIG" in text
    assert "MUST BE 0" in text
    assert cluster_status()["lease"]["backend"] == "kubernetes"


def test_admin_shows_advisory_locks_decoded_and_the_lease_with_recent_terms() -> None:
    admin = User.objects.create_superuser("admin", "a@example.com", "pw-for-tests-only")
    client = Client()
    # force_login: django-axes needs a request in authenticate(), which Client.login does not pass.
    client.force_login(admin)
    lease = Lease.objects.create(name="iacplatform-leader", holder_identity="leader-1", lease_transitions=2)
    JobRun.objects.create(job="j", holder="leader-1", epoch=2, started_at=timezone.now(), outcome="ok")
    with holding(job_key("pending_tasks")):
        page = client.get("/admin/coordination/advisorylock/")
    assert page.status_code == 200
    assert "job:pending_tasks" in page.content.decode()
    assert "leader-9:leader" in page.content.decode()
    page = client.get("/admin/coordination/lease/%d/change/" % lease.pk)
    assert page.status_code == 200
    assert "recent terms" in page.content.decode().lower()
    assert "leader-1" in page.content.decode()
    page = client.get("/admin/coordination/jobrun/?outcome=ok")
    assert page.status_code == 200

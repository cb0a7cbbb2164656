"""What a newcomer opens first, in a real browser on a real replica cut off from everything else:
the API docs render their operations, and every admin changelist and add page loads without a
500 or a console error."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from harness.processes import ProcessGroup
from tests.browser import Page, chromium
from tests.fixtures import suite_database_url as database_url

pytestmark = pytest.mark.slow

PASSWORD = "browser-test-password"
COLUMNS = "[...document.querySelectorAll('#result_list thead th')].map(t => t.textContent.trim() + ' ' + t.offsetWidth)"
OVERFLOW = """Math.max(
    document.documentElement.scrollWidth - document.documentElement.clientWidth,
    ...[...document.querySelectorAll('#changelist .results')].map(e => e.scrollWidth - e.clientWidth))"""


def _admin_pages() -> list[str]:
    """Every registered model's changelist, and its add page where the admin offers one."""
    request = RequestFactory().get("/admin/")
    request.user = get_user_model().objects.get(username="admin")
    paths = []
    for model, model_admin in admin.site._registry.items():
        meta = model._meta
        paths.append(reverse("admin:%s_%s_changelist" % (meta.app_label, meta.model_name)))
        if model_admin.has_add_permission(request):
            paths.append(reverse("admin:%s_%s_add" % (meta.app_label, meta.model_name)))
    return paths


@contextlib.contextmanager
def held_advisory_lock() -> Iterator[None]:
    """A workspace lock held by another session, so the locks list has a row."""
    from apps.coordination.lockkeys import workspace_key

    with psycopg.connect(database_url(), application_name="iacplatform-leader-6f7d8c9b5-abcde:leader") as conn:
        conn.execute("SELECT pg_advisory_lock(%s, %s)", workspace_key(1))
        yield


def _log_in(page: Page, base: str) -> None:
    page.goto(base + "/admin/login/?next=/admin/")
    page.evaluate(
        "document.querySelector('#id_username').value = 'admin';"
        "document.querySelector('#id_password').value = %r;"
        "document.querySelector('#login-form').submit()" % PASSWORD
    )
    page.wait_event("Page.loadEventFired", 30)
    page.wait_for("location.pathname === '/admin/' && !!document.querySelector('#user-tools')")


@pytest.fixture
def replica(processes: ProcessGroup, tmp_path):
    # The local setup `make run` makes: an admin, a pool, the demo workspace; then a task.
    call_command(
        "bootstrapdemo",
        password_file=tmp_path / "password",
        agent_token_file=tmp_path / "token",
        stdout=open(tmp_path / "bootstrap.log", "w"),  # noqa: SIM115
    )
    user = get_user_model().objects.get(username="admin")
    user.set_password(PASSWORD)
    user.save()
    _realistic_rows()
    return processes.daphne("web-1")


def _realistic_rows() -> None:
    """Rows as long as a running cluster's, so the width check means something."""
    from apps.agents.models import Agent, AgentPool
    from apps.coordination.models import JobRun
    from apps.workspaces.actions import enqueue_task
    from apps.workspaces.models import Task, Workspace

    now = timezone.now()
    demo = Workspace.objects.get(name="demo")
    agent = Agent.objects.create(
        agent_id="local-agent-1-" + "x" * 20,
        name="agent on a-rather-long-node-name.eu-west-1.compute.internal",
        pool=AgentPool.objects.get(name="local"),
        status="online",
        last_heartbeat=now,
        connected_pod="iacplatform-web-5d8f9c7b6d-x2x4z",
        connected_at=now,
        version="1.0.0",
        capacity=4,
    )
    for n in range(3):
        Task.objects.create(
            workspace=demo,
            type="apply",
            status="succeeded",
            agent=agent,
            attempt=2,
            created_at=now,
            dispatched_at=now,
            started_at=now,
            finished_at=now + timedelta(seconds=n),
        )
    enqueue_task(workspace=demo, type="plan")
    JobRun.objects.create(
        job="lock_draft_cleanup",
        holder="iacplatform-leader-6f7d8c9b5-abcde",
        epoch=12,
        started_at=now,
        finished_at=now,
        outcome="error",
        error="OperationalError: " + "the connection to the server was lost " * 8,
    )


def test_the_api_docs_render_their_operations_offline(replica) -> None:
    with chromium() as page:
        _log_in(page, replica.url)
        assert page.goto(replica.url + "/api/v1/docs/") == 200
        count = page.wait_for("document.querySelectorAll('.opblock').length")
        paths = page.evaluate("[...document.querySelectorAll('.opblock-summary-path')].map(e => e.textContent)")
        assert count > 10
        assert "/api/v1/tasks/" in {p.replace("\u200b", "") for p in paths}
        assert page.problems() == []
        assert page.goto(replica.url + "/api/v1/redoc/") == 200
        page.wait_for("document.querySelectorAll('[data-section-id^=\"operation/\"]').length > 10")
        assert page.problems() == []


def test_every_admin_changelist_and_add_page_loads_without_errors(replica) -> None:
    paths = _admin_pages()
    assert len(paths) > 10
    failures = {}
    with held_advisory_lock(), chromium() as page:
        _log_in(page, replica.url)
        for path in paths:
            status = page.goto(replica.url + path)
            page.pump(0.2)  # late console messages
            problems: list[object] = list(page.problems())
            # The window is 1400 px wide (tests/browser.py): neither the page nor a list (the
            # admin's results box scrolls on its own, overflow-x: auto) may scroll sideways.
            overflow = page.evaluate(OVERFLOW)
            if overflow > 0:
                columns = page.evaluate(COLUMNS)
                problems.append("scrolls sideways by %d px; columns: %s" % (overflow, columns))
            if status != 200 or problems:
                failures[path] = (status, problems)
    assert failures == {}

"""The admin as a platform admin finds it: every page loads, every Add either creates a valid
object through the same action as the API or is not offered, and the lists are precise."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.access.models import WorkspaceAccess
from apps.agents.models import Agent, AgentPool, hash_token
from apps.coordination.fencing import raise_epoch
from apps.coordination.models import Fence, JobRun
from apps.workspaces.models import Task, Workspace

pytestmark = pytest.mark.django_db

# Made only by the system (queue, agents, jobs, hub, channel layer): no Add. (Other read-only
# admins may join them; every admin that does offer Add must refuse an empty form cleanly.)
NO_ADD = {
    "agents.agent",
    "coordination.lease",
    "coordination.fence",
    "coordination.jobrun",
    "coordination.jobrunday",
    "coordination.advisorylock",
    "workspaces.stateversion",
    "workspaces.statetransition",
    "workspaces.resource",
    "hub.editingsession",
    "hub.takeoverrequest",
    "hub.draft",
    "pglayer.message",
    "pglayer.groupmembership",
}
# Add runs the API's action: createagentpool's token, enqueue_task, do_create_workspace.
ADD_THROUGH_ACTIONS = {"agents.agentpool", "workspaces.task", "workspaces.workspace"}


@pytest.fixture
def root() -> User:
    return User.objects.create_superuser("root", password="pw-root-123")


@pytest.fixture
def client(root: User) -> Client:
    client = Client()
    client.force_login(root)
    return client


@pytest.fixture
def pool() -> AgentPool:
    return AgentPool.objects.create(name="pool-a", token_hash=hash_token("t"))


def _label(model: Any) -> str:
    return "%s.%s" % (model._meta.app_label, model._meta.model_name)


def test_every_model_admin_lists_and_offers_add_only_where_it_makes_a_valid_object(client: Client) -> None:
    registered = {_label(model): model for model in admin.site._registry}
    assert set(registered) >= NO_ADD and set(registered) >= ADD_THROUGH_ACTIONS
    for label, model in registered.items():
        meta = model._meta
        changelist = client.get(reverse("admin:%s_%s_changelist" % (meta.app_label, meta.model_name)))
        assert changelist.status_code == 200, label
        add_url = reverse("admin:%s_%s_add" % (meta.app_label, meta.model_name))
        add = client.get(add_url)
        if label in NO_ADD or (add.status_code == 403 and label not in ADD_THROUGH_ACTIONS):
            assert add.status_code == 403, label
            assert ('href="%s"' % add_url).encode() not in changelist.content, label
            continue
        assert add.status_code == 200, label
        # An empty form is refused with the form's errors, never a 500.
        empty = client.post(reverse("admin:%s_%s_add" % (meta.app_label, meta.model_name)), {})
        assert empty.status_code == 200, label
        assert b"errornote" in empty.content, label


def test_adding_agent_pools_gives_each_a_token_shown_once(client: Client) -> None:
    tokens = []
    for name in ("pool-one", "pool-two"):  # the second one failed on the unique empty hash
        response = client.post(
            "/admin/agents/agentpool/add/",
            {
                "name": name,
                "kind": "static",
                "min_replicas": 0,
                "max_replicas": 1,
                "agent_capacity": 2,
                "scale_down_delay_seconds": 300,
            },
        )
        assert response.status_code == 200
        assert "no-store" in response["Cache-Control"]
        token = re.search(
            rb'id="agent-pool-token" [^>]*value="([^"]+)"|value="([^"]+)" id="agent-pool-token"', response.content
        )
        assert token is not None
        tokens.append((token.group(1) or token.group(2)).decode())
    pools = {p.name: p for p in AgentPool.objects.all()}
    assert pools["pool-one"].check_token(tokens[0]) and pools["pool-two"].check_token(tokens[1])
    assert tokens[0] != tokens[1] and pools["pool-two"].agent_capacity == 2
    # Shown once: the pool's own page never shows it (nor its hash).
    page = client.get("/admin/agents/agentpool/%d/change/" % pools["pool-one"].pk)
    assert tokens[0].encode() not in page.content
    assert pools["pool-one"].token_hash.encode() not in page.content


def test_adding_a_task_queues_it_as_the_api_does(client: Client, root: User, pool: AgentPool) -> None:
    workspace = Workspace.objects.create(name="ws-a", pool=pool)
    response = client.post(
        "/admin/workspaces/task/add/", {"workspace": workspace.pk, "type": "plan", "timeout_seconds": 600}
    )
    assert response.status_code == 302
    task = Task.objects.get()
    assert (task.workspace, task.type, task.status, task.created_by) == (workspace, "plan", "pending", root)
    assert task.timeout_seconds == 600
    assert response["Location"] == reverse("admin:workspaces_task_changelist")


def test_adding_a_workspace_grants_its_creator_admin_as_the_api_does(
    client: Client, root: User, pool: AgentPool
) -> None:
    response = client.post(
        "/admin/workspaces/workspace/add/",
        {
            "name": "ws-new",
            "pool": pool.pk,
            "terraform_files": "{}",
            "variables": "{}",
            "drift_check_interval_minutes": 60,
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    workspace = Workspace.objects.get(name="ws-new")
    assert WorkspaceAccess.objects.filter(workspace=workspace, user=root).exists()


def test_agent_heartbeat_age_is_in_seconds_against_the_threshold(client: Client, pool: AgentPool) -> None:
    now = timezone.now()
    Agent.objects.create(agent_id="fresh", pool=pool, last_heartbeat=now - timedelta(seconds=12))
    Agent.objects.create(agent_id="late", pool=pool, last_heartbeat=now - timedelta(seconds=50))
    content = client.get("/admin/agents/agent/").content.decode()
    assert re.search(r">1[23] s<", content)
    assert re.search(r">5[01] s \(past the 45 s threshold\)<", content)


def test_job_runs_show_seconds_duration_and_error(client: Client) -> None:
    started = timezone.now().replace(microsecond=0)
    JobRun.objects.create(
        job="cmdb_sync",
        holder="leader-1",
        epoch=3,
        started_at=started,
        finished_at=started + timedelta(milliseconds=1234),
        outcome="error",
        error="ValueError: the state is not JSON\nTraceback ...",
    )
    content = client.get("/admin/coordination/jobrun/").content.decode()
    assert "1.234 s" in content
    assert "ValueError: the state is not JSON" in content and "Traceback" not in content
    assert started.strftime("%Y-%m-%d %H:%M:%S") in content  # to the second


def test_the_lock_filter_names_the_namespaces(client: Client) -> None:
    content = client.get("/admin/coordination/advisorylock/").content.decode()
    assert "workspace" in content and "leader recovery" in content
    assert client.get("/admin/coordination/advisorylock/?namespace=7101").status_code == 200
    assert client.get("/admin/coordination/advisorylock/?namespace=x").status_code == 200


@pytest.mark.django_db(transaction=True)  # each raise in its own transaction, as a new term's
def test_raising_the_epoch_updates_the_fence_timestamp() -> None:
    raise_epoch(name="lease-a", epoch=1, holder="leader-1")
    first = Fence.objects.get(name="lease-a").updated_at
    raise_epoch(name="lease-a", epoch=2, holder="leader-2")
    assert Fence.objects.get(name="lease-a").updated_at > first


def test_view_site_is_the_browsable_api_whose_root_lists_every_endpoint_family(client: Client) -> None:
    index = client.get("/admin/").content.decode()
    assert 'href="/api/v1/"' in index
    root = client.get("/api/v1/", HTTP_ACCEPT="application/json")
    assert root.status_code == 200
    assert {"workspaces", "tasks", "agents", "hub/sessions", "hub/takeovers", "hub/drafts", "docs"} <= set(root.json())
    for url in root.json().values():
        # Each exists (some take POST only, or need a query parameter).
        assert client.get(url).status_code in (200, 400, 405), url

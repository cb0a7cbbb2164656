"""The Terraform http state backend endpoint, as Terraform calls it, against real PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from apps.agents.actions import cleanup_agents
from apps.agents.models import Agent
from apps.workspaces import actions, reports, statebackend
from apps.workspaces.models import StateLock, StateTransition, StateVersion, Task, Workspace
from tests.access.fixtures import api_token
from tests.agents.fixtures import Pool
from tests.workspaces.test_actions import online_agent
from tests.workspaces.test_states import tfstate

pytestmark = pytest.mark.django_db(transaction=True)


class Terraform:
    """What Terraform's http backend sends: basic auth, LockInfo bodies, POST ?ID=<lock id>."""

    def __init__(self, backend: dict[str, Any], *, lock_id: str = "lock-1") -> None:
        self.path = backend["address"]
        auth = "%s:%s" % (backend["username"], backend["password"])
        self.auth = "Basic " + base64.b64encode(auth.encode()).decode()
        self.lock_id = lock_id
        self.client = Client()

    def call(self, method: str, body: bytes | None = None, *, query: str = "", **headers: str) -> Any:
        extra: dict[str, Any] = {"HTTP_AUTHORIZATION": self.auth, **headers}
        return self.client.generic(method, self.path + query, body or b"", content_type="application/json", **extra)

    def info(self) -> bytes:
        return json.dumps(
            {"ID": self.lock_id, "Operation": "OperationTypeApply", "Who": "tf@agent", "Path": ""}
        ).encode()

    def lock(self) -> Any:
        return self.call("LOCK", self.info())

    def unlock(self) -> Any:
        return self.call("UNLOCK", self.info())

    def push(self, state: Any) -> Any:
        body = json.dumps(state).encode() if not isinstance(state, bytes) else state
        md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
        return self.call("POST", body, query="?ID=" + self.lock_id, HTTP_CONTENT_MD5=md5)


def running(pool: Pool, workspace: Workspace, agent: Agent, type: str = "apply") -> tuple[Task, Terraform]:
    task = actions.enqueue_task(workspace=workspace, type=type)
    payload = reports.dispatch_payload(agent_pk=agent.pk, task_id=task.pk)
    assert payload is not None
    assert reports.accept_task(agent=agent, task_id=task.pk, attempt=task.attempt)
    return Task.objects.get(pk=task.pk), Terraform(payload["state_backend"])


def snapshot(workspace: Workspace) -> dict[str, Any]:
    workspace.refresh_from_db()
    return {
        "current": workspace.current_state_id,
        "versions": list(StateVersion.objects.order_by("pk").values_list("pk", "status")),
        "locks": list(StateLock.objects.order_by("pk").values_list("pk", "released_at")),
        "transitions": StateTransition.objects.count(),
    }


def test_terraforms_calls_read_lock_write_and_unlock_the_current_state(agent_pool: Pool, workspace: Workspace) -> None:
    agent = online_agent(agent_pool, "a")
    task, tf = running(agent_pool, workspace, agent)
    assert tf.path == "/api/v1/workspaces/%d/terraform-state/" % workspace.pk
    assert tf.call("GET").status_code == 204
    assert tf.lock().status_code == 200
    assert tf.lock().status_code == 200  # a retried LOCK of the same lock
    held = StateLock.objects.get(workspace=workspace, released_at=None)
    assert (held.task_id, held.attempt, held.lock_id, held.info["Who"]) == (task.pk, 1, "lock-1", "tf@agent")
    # Who holds it, which attempt, since when: in the API and the admin.
    root = get_user_model().objects.create_superuser("root")
    api = APIClient()
    api.force_authenticate(root)
    shown = api.get("/api/v1/workspaces/%d/" % workspace.pk).json()["state_lock"]
    assert (shown["task"], shown["attempt"], shown["who"], shown["operation"]) == (
        task.pk,
        1,
        "tf@agent",
        "OperationTypeApply",
    )
    assert shown["acquired_at"] and shown["released_at"] is None
    assert api.get("/api/v1/workspaces/%d/state/" % workspace.pk).json()["lock"]["lock_id"] == "lock-1"
    admin = Client()
    admin.force_login(root)
    page = admin.get("/admin/workspaces/statelock/?held=yes")
    assert page.status_code == 200 and b"tf@agent" in page.content
    assert tf.push(tfstate(1)).status_code == 200
    assert tf.push(tfstate(1)).status_code == 200  # the same state again: nothing new
    pushed = tf.push(tfstate(2, x="y"))
    assert (pushed.status_code, pushed.json()) == (200, {"result": "current", "serial": 2})
    got = tf.call("GET")
    assert (got.status_code, got.json()) == (200, tfstate(2, x="y"))
    other = Terraform({"address": tf.path, "username": "task-%d" % task.pk, "password": _password(tf)}, lock_id="l2")
    refused = other.lock()
    assert refused.status_code == 423
    assert refused.json()["ID"] == "lock-1"  # Terraform reads the holder's lock info
    assert other.unlock().status_code == 423
    assert tf.unlock().status_code == 200
    assert StateLock.objects.get(pk=held.pk).release_reason == "unlocked"
    after = api.get("/api/v1/workspaces/%d/state/" % workspace.pk).json()
    assert after["lock"] is None
    assert [(lock["lock_id"], lock["release_reason"]) for lock in after["locks"]] == [("lock-1", "unlocked")]
    assert StateVersion.objects.filter(workspace=workspace).count() == 2
    moves = list(StateTransition.objects.values_list("from_serial", "to_serial", "task", "attempt"))
    assert moves == [(None, 1, task.pk, 1), (1, 2, task.pk, 1)]
    assert tf.push(tfstate(3)).status_code == 409  # no lock held: lock first


def _password(tf: Terraform) -> str:
    return base64.b64decode(tf.auth.split()[1]).decode().partition(":")[2]


def test_after_the_attempt_is_settled_its_lock_is_released_and_everything_refused(
    agent_pool: Pool, workspace: Workspace
) -> None:
    agent = online_agent(agent_pool, "a")
    task, tf = running(agent_pool, workspace, agent)
    assert tf.lock().status_code == 200
    assert tf.push(tfstate(1)).status_code == 200
    Task.objects.filter(pk=task.pk).update(started_at=timezone.now() - timedelta(hours=2))
    assert actions.time_out_tasks() == 1
    lock = StateLock.objects.get(workspace=workspace)
    assert (lock.released_at is not None, lock.release_reason) == (True, "timed out")
    before = snapshot(workspace)
    for response in (tf.call("GET"), tf.lock(), tf.unlock()):
        assert response.status_code == 409
        assert "timed_out" in response.json()["detail"]
    assert snapshot(workspace) == before
    late = tf.push(tfstate(2, late="yes"))
    assert late.status_code == 409
    assert "kept as conflict version" in late.json()["detail"]
    workspace.refresh_from_db()
    assert workspace.current_state is not None and workspace.current_state.terraform_serial == 1
    conflict = StateVersion.objects.get(workspace=workspace, status="conflict")
    assert (conflict.task_id, conflict.attempt, conflict.terraform_serial) == (task.pk, 1, 2)


def test_a_requeued_attempts_credential_is_refused_and_its_stale_lock_released(
    agent_pool: Pool, workspace: Workspace
) -> None:
    first = online_agent(agent_pool, "a")
    task, old = running(agent_pool, workspace, first, type="plan")
    assert old.lock().status_code == 200
    Agent.objects.filter(pk=first.pk).update(last_heartbeat=timezone.now() - timedelta(hours=1))
    second = online_agent(agent_pool, "b")
    cleanup_agents()  # a lost plan is re-queued as attempt 2, dispatched to b
    task.refresh_from_db()
    assert (task.attempt, task.agent_id) == (2, second.pk)
    assert StateLock.objects.held().count() == 0
    payload = reports.dispatch_payload(agent_pk=second.pk, task_id=task.pk)
    assert payload is not None
    assert reports.accept_task(agent=second, task_id=task.pk, attempt=2)
    new = Terraform(payload["state_backend"], lock_id="lock-2")
    refused = old.lock()
    assert refused.status_code == 409
    assert "superseded by attempt 2" in refused.json()["detail"]
    assert new.lock().status_code == 200
    assert old.unlock().status_code == 409
    assert StateLock.objects.held().get().lock_id == "lock-2"
    # A plan only reads: a write from it is refused even while live.
    assert new.push(tfstate(1)).status_code == 409
    assert StateVersion.objects.count() == 0


def test_bad_input_is_a_clear_4xx_and_changes_nothing(agent_pool: Pool, workspace: Workspace, settings: Any) -> None:
    agent = online_agent(agent_pool, "a")
    task, tf = running(agent_pool, workspace, agent)
    assert tf.lock().status_code == 200
    assert tf.push(tfstate(5, lineage="L")).status_code == 200
    before = snapshot(workspace)
    settings.TERRAFORM_STATE_MAX_BYTES = 4096
    cases: list[tuple[Any, int]] = [
        (b"{not json", 400),
        (b"[]", 400),
        (tfstate(6, lineage="another"), 409),
        (tfstate(6, lineage=""), 400),
        (tfstate(4), 409),
        (tfstate(5, changed="yes"), 409),
        ({**tfstate(6), "version": 3}, 400),
        ({**tfstate(6), "x": "nul\x00"}, 400),
        (tfstate(6, big="x" * 5000), 413),
    ]
    for body, status in cases:
        response = tf.push(body)
        assert response.status_code == status, (body, response.content)
        assert response.json()["detail"]
    mismatched = tf.call("POST", json.dumps(tfstate(6)).encode(), query="?ID=lock-1", HTTP_CONTENT_MD5="AAAA")
    assert mismatched.status_code == 400
    assert tf.call("POST", json.dumps(tfstate(6)).encode(), query="?ID=other-lock").status_code == 423
    assert tf.call("LOCK", b"{}").status_code == 400
    assert tf.call("PUT", b"{}").status_code == 405

    # Credentials: none, forged, expired, another task's (another workspace), a user's token.
    anonymous = Client().generic("GET", tf.path)
    assert (anonymous.status_code, anonymous["WWW-Authenticate"]) == (401, 'Basic realm="terraform-state"')
    user = get_user_model().objects.create_superuser("root")
    token = api_token(user)
    assert Client().generic("GET", tf.path, HTTP_AUTHORIZATION="Token " + token).status_code == 401
    session = Client()
    session.force_login(user)  # not even a platform admin's session: attempts only
    assert session.generic("GET", tf.path).status_code == 401
    forged = Terraform({"address": tf.path, "username": "task-%d" % task.pk, "password": _password(tf) + "x"})
    assert forged.push(tfstate(6)).status_code == 401
    renamed = Terraform({"address": tf.path, "username": "task-999", "password": _password(tf)})
    assert renamed.call("GET").status_code == 401
    expired = statebackend.mint(task)
    with pytest.raises(statebackend.states.Refused) as caught:
        statebackend.authenticate(tf.auth, workspace_id=workspace.pk, now=time.time() + 10**7)
    assert caught.value.status == 403
    other_ws = Workspace.objects.create(name="other", pool=agent_pool.pool)
    other_agent = online_agent(agent_pool, "c")
    _, foreign = running(agent_pool, other_ws, other_agent)
    foreign.path = tf.path
    assert foreign.push(tfstate(6)).status_code == 403
    assert foreign.lock().status_code == 403
    settings.TERRAFORM_STATE_CREDENTIAL_SLACK = -(10**6)
    stale = Terraform(statebackend.mint(task))
    assert stale.call("GET").status_code == 403
    assert expired["password"] != stale.auth
    assert snapshot(workspace) == before

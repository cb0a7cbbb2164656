"""The current-state pointer: it never goes backwards, conflicts are kept and hold applies."""

from __future__ import annotations

import base64
import io
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from apps.agents.actions import cleanup_agents
from apps.agents.models import Agent
from apps.coordination.status import cluster_status
from apps.workspaces import actions, reports, statebackend, states
from apps.workspaces.models import StateTransition, StateVersion, Task, Workspace
from tests.access.fixtures import api_token, grant
from tests.agents.fixtures import Pool
from tests.workspaces.test_actions import online_agent

pytestmark = pytest.mark.django_db(transaction=True)


def tfstate(serial: int, lineage: str = "L", **outputs: str) -> dict[str, Any]:
    return {
        "version": 4,
        "terraform_version": "1.0.3",
        "serial": serial,
        "lineage": lineage,
        "outputs": {name: {"value": value, "type": "string"} for name, value in outputs.items()},
        "resources": [],
    }


def current(workspace: Workspace) -> StateVersion | None:
    workspace.refresh_from_db()
    return workspace.current_state


def test_a_late_result_of_a_lost_apply_is_kept_as_conflict_and_holds_the_next_apply(
    agent_pool: Pool, workspace: Workspace
) -> None:
    """The reproduction: apply A lost and settled, apply B succeeds, A's late result arrives."""
    agent_a = online_agent(agent_pool, "a")
    apply_a = actions.enqueue_task(workspace=workspace, type="apply")
    assert reports.accept_task(agent=agent_a, task_id=apply_a.pk, attempt=1)
    Agent.objects.filter(pk=agent_a.pk).update(last_heartbeat=timezone.now() - timedelta(hours=1))
    agent_b = online_agent(agent_pool, "b")
    cleanup_agents()
    assert Task.objects.get(pk=apply_a.pk).status == "errored"

    apply_b = actions.enqueue_task(workspace=workspace, type="apply")
    assert Task.objects.get(pk=apply_b.pk).agent_id == agent_b.pk
    assert reports.accept_task(agent=agent_b, task_id=apply_b.pk, attempt=1)
    state_b = tfstate(2, greeting="from B")
    reports.record_result(
        agent=agent_b, task_id=apply_b.pk, attempt=1, report={"status": "succeeded", "state": state_b}
    )
    assert current(workspace).state == state_b  # type: ignore[union-attr]

    # A's agent comes back and reports: a lower serial, and a newer row than B's.
    state_a = tfstate(1, greeting="from A")
    late = reports.record_result(
        agent=agent_a, task_id=apply_a.pk, attempt=1, report={"status": "succeeded", "state": state_a}
    )
    assert late is reports.Outcome.DUPLICATE
    assert Task.objects.get(pk=apply_a.pk).status == "errored"  # the verdict stands
    assert current(workspace).state == state_b  # type: ignore[union-attr]
    conflict = StateVersion.objects.get(workspace=workspace, status="conflict")
    assert (conflict.state, conflict.task_id, conflict.attempt) == (state_a, apply_a.pk, 1)
    # Re-sent after a reconnect: still one conflict version.
    reports.record_result(
        agent=agent_a, task_id=apply_a.pk, attempt=1, report={"status": "succeeded", "state": state_a}
    )
    assert StateVersion.objects.filter(workspace=workspace, status="conflict").count() == 1

    # The next apply is held; a plan behind it still runs; the dispatch carries B's state.
    held = actions.enqueue_task(workspace=workspace, type="apply")
    plan = actions.enqueue_task(workspace=workspace, type="plan")
    assert Task.objects.get(pk=held.pk).status == "pending"
    plan.refresh_from_db()
    assert (plan.status, plan.agent_id) == ("dispatched", agent_b.pk)
    payload = reports.dispatch_payload(agent_pk=agent_b.pk, task_id=plan.pk)
    assert payload is not None
    assert reports.accept_task(agent=agent_b, task_id=plan.pk, attempt=1)
    backend = payload["state_backend"]
    basic = base64.b64encode(("%s:%s" % (backend["username"], backend["password"])).encode()).decode()
    credential = statebackend.authenticate("Basic " + basic, workspace_id=workspace.pk)
    assert statebackend.read(credential) == state_b  # Terraform starts the plan from B's state
    reports.record_result(agent=agent_b, task_id=plan.pk, attempt=1, report={"status": "succeeded", "exit_code": 0})
    assert Task.objects.get(pk=held.pk).status == "pending"
    assert actions.workspaces_to_kick() == []  # nothing runnable: not kicked every round

    # Resolved (discarded): the held apply runs from B's state.
    admin = get_user_model().objects.create_user("admin")
    states.do_discard(workspace_id=workspace.pk, version_id=conflict.pk, actor=admin)
    held.refresh_from_db()
    assert held.status == "dispatched"
    conflict.refresh_from_db()
    assert (conflict.status, conflict.resolved_by) == ("discarded", admin)
    transitions = list(StateTransition.objects.filter(workspace=workspace).values_list("kind", "to_serial", "task"))
    assert transitions == [("terraform", 2, apply_b.pk)]


def test_live_writes_move_forward_only_under_terraforms_rule(agent_pool: Pool, workspace: Workspace) -> None:
    agent = online_agent(agent_pool, "a")
    task = actions.enqueue_task(workspace=workspace, type="apply")
    assert reports.accept_task(agent=agent, task_id=task.pk, attempt=1)
    first = states.offer_state(task=task, attempt=1, state=tfstate(3), live=True)
    assert first.verdict is states.Verdict.CURRENT
    assert states.offer_state(task=task, attempt=1, state=tfstate(3), live=True).verdict is states.Verdict.UNCHANGED
    for refused in (tfstate(4, lineage="other"), tfstate(2), tfstate(3, x="changed")):
        with pytest.raises(states.Refused) as caught:
            states.offer_state(task=task, attempt=1, state=refused, live=True)
        assert caught.value.status == 409
    malformed: list[Any] = [
        [],
        {"version": 3, "serial": 1, "lineage": "L"},
        {**tfstate(5), "serial": True},
    ]
    for bad in malformed:
        with pytest.raises(states.Refused) as caught:
            states.offer_state(task=task, attempt=1, state=bad, live=True)
        assert caught.value.status == 400
    assert StateVersion.objects.filter(workspace=workspace).count() == 1
    # Terraform's errored.tfstate of a first apply has no lineage yet: kept, never current.
    unnamed = states.offer_state(task=task, attempt=1, state=tfstate(9, ""), live=True)
    assert unnamed.verdict is states.Verdict.CONFLICT
    assert unnamed.version is not None
    unnamed.version.delete()
    assert states.offer_state(task=task, attempt=1, state=tfstate(4), live=True).verdict is states.Verdict.CURRENT
    assert current(workspace).terraform_serial == 4  # type: ignore[union-attr]
    moves = list(StateTransition.objects.values_list("from_serial", "to_serial", "task", "attempt", "kind"))
    assert moves == [(None, 3, task.pk, 1, "terraform"), (3, 4, task.pk, 1, "terraform")]


def test_a_state_of_a_settled_attempt_never_becomes_current_even_on_an_empty_workspace(
    agent_pool: Pool, workspace: Workspace
) -> None:
    agent = online_agent(agent_pool, "a")
    task = actions.enqueue_task(workspace=workspace, type="apply")
    assert reports.accept_task(agent=agent, task_id=task.pk, attempt=1)
    actions.cancel_task(task.pk)
    Task.objects.filter(pk=task.pk).update(status="timed_out")
    offer = states.offer_state(task=task, attempt=1, state=tfstate(1), live=False)
    assert offer.verdict is states.Verdict.CONFLICT
    assert current(workspace) is None


def test_promote_makes_a_conflict_current_with_a_serial_above_both(agent_pool: Pool, workspace: Workspace) -> None:
    agent = online_agent(agent_pool, "a")
    task = actions.enqueue_task(workspace=workspace, type="apply")
    assert reports.accept_task(agent=agent, task_id=task.pk, attempt=1)
    states.offer_state(task=task, attempt=1, state=tfstate(7, lineage="B"), live=True)
    conflict = states.offer_state(task=task, attempt=1, state=tfstate(2, lineage="A", y="a"), live=False).version
    assert conflict is not None
    admin = get_user_model().objects.create_user("admin")
    promoted = states.do_promote(workspace_id=workspace.pk, version_id=conflict.pk, actor=admin)
    assert current(workspace) == promoted
    assert (promoted.lineage, promoted.terraform_serial, promoted.state["serial"]) == ("A", 8, 8)
    assert promoted.state["outputs"] == conflict.state["outputs"]
    conflict.refresh_from_db()
    assert (conflict.status, conflict.resolved_by) == ("accepted", admin)
    assert not states.has_conflict(workspace.pk)
    last = StateTransition.objects.filter(workspace=workspace).last()
    assert last is not None
    assert (last.kind, last.actor, last.from_serial, last.from_lineage, last.to_serial, last.to_lineage) == (
        "promote",
        admin,
        7,
        "B",
        8,
        "A",
    )
    with pytest.raises(states.Refused) as caught:
        states.do_discard(workspace_id=workspace.pk, version_id=conflict.pk, actor=admin)
    assert caught.value.status == 409
    with pytest.raises(states.Refused) as caught:
        states.do_promote(workspace_id=workspace.pk, version_id=promoted.pk, actor=admin)
    assert caught.value.status == 409


def _conflicted(agent_pool: Pool, workspace: Workspace) -> StateVersion:
    agent = online_agent(agent_pool, "a")
    task = actions.enqueue_task(workspace=workspace, type="apply")
    assert reports.accept_task(agent=agent, task_id=task.pk, attempt=1)
    states.offer_state(task=task, attempt=1, state=tfstate(2), live=True)
    version = states.offer_state(task=task, attempt=1, state=tfstate(1, y="late"), live=False).version
    assert version is not None
    return version


def _client(*, superuser: bool, name: str | None = None) -> APIClient:
    make = get_user_model().objects.create_superuser if superuser else get_user_model().objects.create_user
    user = make(name or ("root" if superuser else "alice"), password="pw-long-enough")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token " + api_token(user))
    return client


def test_the_api_shows_the_conflict_and_only_a_workspace_admin_resolves_it(
    agent_pool: Pool, workspace: Workspace
) -> None:
    conflict = _conflicted(agent_pool, workspace)
    alice = _client(superuser=False)
    grant(workspace, "write", user=get_user_model().objects.get(username="alice"))
    shown = alice.get("/api/v1/workspaces/%d/" % workspace.pk).json()
    assert shown["current_state"]["terraform_serial"] == 2
    assert [c["id"] for c in shown["state_conflicts"]] == [conflict.pk]
    assert "state" not in shown["current_state"]  # contents stay out of the listing
    detail = alice.get("/api/v1/workspaces/%d/state/" % workspace.pk).json()
    assert [c["terraform_serial"] for c in detail["conflicts"]] == [1]
    assert [(t["kind"], t["to_serial"]) for t in detail["transitions"]] == [("terraform", 2)]
    promote = "/api/v1/workspaces/%d/state-versions/%d/promote/" % (workspace.pk, conflict.pk)
    discard = "/api/v1/workspaces/%d/state-versions/%d/discard/" % (workspace.pk, conflict.pk)
    assert alice.post(promote).status_code == 403
    assert alice.post(discard).status_code == 403
    assert states.has_conflict(workspace.pk)

    # A workspace admin (here not a platform admin) resolves it.
    root = _client(superuser=False, name="root")
    grant(workspace, "admin", user=get_user_model().objects.get(username="root"))
    other = Workspace.objects.create(name="other", pool=agent_pool.pool)
    grant(other, "admin", user=get_user_model().objects.get(username="root"))
    assert root.post("/api/v1/workspaces/%d/state-versions/%d/promote/" % (other.pk, conflict.pk)).status_code == 404
    promoted = root.post(promote)
    assert promoted.status_code == 200, promoted.content
    assert promoted.json()["terraform_serial"] == 3
    assert root.post(discard).status_code == 409  # no longer a conflict
    shown = root.get("/api/v1/workspaces/%d/" % workspace.pk).json()
    assert (shown["state_conflicts"], shown["current_state"]["id"]) == ([], promoted.json()["id"])
    move = root.get("/api/v1/workspaces/%d/state/" % workspace.pk).json()["transitions"][0]
    root_id = get_user_model().objects.get(username="root").pk
    assert (move["kind"], move["from_serial"], move["to_serial"], move["actor"]) == ("promote", 2, 3, root_id)


def test_admin_and_clusterstatus_show_the_conflict(agent_pool: Pool, workspace: Workspace) -> None:
    conflict = _conflicted(agent_pool, workspace)
    out = io.StringIO()
    call_command("clusterstatus", stdout=out)
    assert (
        "workspace ws-a: version %s (serial 1, lineage L) from task %s attempt 1"
        % (
            conflict.pk,
            conflict.task_id,
        )
        in out.getvalue()
    )
    assert cluster_status()["state_conflicts"][0]["version"] == conflict.pk
    admin = Client()
    admin.force_login(get_user_model().objects.create_superuser("root"))
    listing = admin.get("/admin/workspaces/workspace/?state_conflict=yes")
    assert listing.status_code == 200
    assert b"ws-a" in listing.content
    assert b"ws-a" not in admin.get("/admin/workspaces/workspace/?state_conflict=no").content
    versions = admin.get("/admin/workspaces/stateversion/?status=conflict")
    assert versions.status_code == 200 and b"conflict" in versions.content
    done = admin.post(
        "/admin/workspaces/stateversion/", {"action": "discard", "_selected_action": [conflict.pk]}, follow=True
    )
    assert done.status_code == 200
    conflict.refresh_from_db()
    assert conflict.status == "discarded"
    assert admin.get("/admin/workspaces/statetransition/").status_code == 200

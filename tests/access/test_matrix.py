"""Every REST operation of the OpenAPI schema x {anonymous, no role, read, plan, write, admin,
platform admin} -> the expected status.

The operations come from the schema itself, so a new endpoint fails ``test_every_operation_has_a_
row`` until it gets a row below saying who may call it; each row is then checked against every
principal with a real request (a fresh world per call, rolled back after it).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import User
from django.db import transaction
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from apps.access.models import WorkspaceAccess
from apps.access.tokens import do_create_token
from apps.agents.models import Agent, AgentPool
from apps.hub.models import Draft, EditingSession, TakeoverRequest
from apps.workspaces.models import Resource, StateVersion, Task, TaskLogChunk, Variable, Workspace
from tests.access.fixtures import grant, make_user

pytestmark = pytest.mark.django_db

NOT_FOUND = re.compile(r"^(Not found\.|No [A-Za-z]+ matches the given query\.)$")
PRINCIPALS = ["anonymous", "none", "read", "plan", "write", "admin", "platform"]
RANK = {"none": 0, "read": 1, "plan": 2, "write": 3, "admin": 4, "platform": 5}
ADDR = "aws_instance.web"


def schema_operations() -> dict[str, tuple[str, str]]:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return {
        op["operationId"]: (method.upper(), path) for path, ops in schema["paths"].items() for method, op in ops.items()
    }


OPERATIONS = schema_operations()


@dataclass
class World:
    """One workspace and everything an operation may be about, seen from ``me``."""

    me: User
    other: User
    pool: AgentPool
    workspace: Workspace
    task: Task
    agent: Agent
    grant_id: int
    conflict: StateVersion
    resource: Resource
    variable: Variable
    session: EditingSession | None = None  # my session (waiting while ``other`` edits)
    request: TakeoverRequest | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def build(principal: str) -> World:
    pool = AgentPool(name="pool-m")
    pool.set_new_token()
    pool.save()
    workspace = Workspace.objects.create(name="ws-m", pool=pool, terraform_files={"main.tf": ""})
    other = make_user("other-editor")
    grant(workspace, "write", user=other)
    # The anonymous caller still "owns" the objects a call is about (its session, its draft), so
    # that it is refused for being anonymous, not because the object is missing.
    me = make_user("me", "access.platform_admin") if principal == "platform" else make_user("me")
    if principal not in ("anonymous", "none", "platform"):
        grant(workspace, principal, user=me)
    task = Task.objects.create(workspace=workspace, type="plan")
    TaskLogChunk.objects.create(task=task, seq=0, text="hello\n")
    agent = Agent.objects.create(agent_id="agent-m", pool=pool)
    conflict = StateVersion.objects.create(
        workspace=workspace,
        serial=1,
        lineage="L",
        terraform_serial=1,
        state={"version": 4, "serial": 1, "lineage": "L", "resources": []},
        status=StateVersion.Status.CONFLICT,
    )
    resource = Resource.objects.create(
        workspace=workspace, address=ADDR, type="aws_instance", name="web", state_serial=1
    )
    variable = Variable.objects.create(workspace=workspace, key="region", value="eu-west-1")
    outsider = make_user("outsider")  # someone to grant a role to
    grant(workspace, "read", user=outsider)
    grant_id = WorkspaceAccess.objects.get(workspace=workspace, user=outsider).pk
    return World(
        me=me,
        other=other,
        pool=pool,
        workspace=workspace,
        task=task,
        agent=agent,
        grant_id=grant_id,
        conflict=conflict,
        resource=resource,
        variable=variable,
    )


def my_waiting_session(world: World) -> EditingSession:
    """``other`` edits the resource; ``me`` waits on it (made directly: no role check)."""
    EditingSession.objects.create(workspace=world.workspace, resource_address=ADDR, user=world.other, mode="editor")
    world.session = EditingSession.objects.create(
        workspace=world.workspace, resource_address=ADDR, user=world.me, mode="waiting"
    )
    return world.session


def my_editor_session(world: World) -> EditingSession:
    world.session = EditingSession.objects.create(
        workspace=world.workspace, resource_address=ADDR, user=world.me, mode="editor"
    )
    return world.session


def my_request(world: World) -> TakeoverRequest:
    """``me`` asked ``other`` (the editor) for the resource."""
    mine = my_waiting_session(world)
    editor = EditingSession.objects.get(user=world.other, mode="editor")
    return TakeoverRequest.objects.create(
        session=editor, requester=world.me, requester_session_id=mine.session_id, message="please"
    )


def request_to_me(world: World) -> TakeoverRequest:
    """``other`` waits and asked ``me`` (the editor) for the resource."""
    mine = my_editor_session(world)
    theirs = EditingSession.objects.create(
        workspace=world.workspace, resource_address=ADDR, user=world.other, mode="waiting"
    )
    return TakeoverRequest.objects.create(
        session=mine, requester=world.other, requester_session_id=theirs.session_id, message="please"
    )


Call = tuple[dict[str, Any], Any]  # path parameters, body (or query for GET/DELETE)


def my_draft(world: World) -> Call:
    Draft.objects.create(
        workspace=world.workspace,
        resource_address=ADDR,
        user=world.me,
        content={"a": 1},
        expires_at="2099-01-01T00:00:00Z",
    )
    return {}, {"workspace": world.workspace.pk, "resource_address": ADDR}


def locked_by_me(world: World) -> Call:
    """Lifting one's own lock needs write (someone else's: admin, tests/access/test_api.py)."""
    Workspace.objects.filter(pk=world.workspace.pk).update(locked=True, locked_by=world.me)
    return {"id": world.workspace.pk}, None


@dataclass(frozen=True)
class Row:
    """Who may call an operation: ``need`` (a role on the workspace, ``platform``, ``create``
    for the create-workspace permission, ``owner`` for one's own hub session whatever the role,
    ``login`` for any active user), the status when allowed, and the status for a user with no
    role (404: the workspace or the object is invisible; 400: the workspace id in the body reads
    as missing; 200: a list, empty)."""

    need: str
    ok: int
    call: Callable[[World], Call]
    invisible: int = 404
    listed: str | None = None  # list operations: the id that must appear iff the caller may read


def _ws(w: World) -> dict[str, Any]:
    return {"id": w.workspace.pk}


def _task(w: World) -> dict[str, Any]:
    return {"id": w.task.pk}


def _session(setup: Callable[[World], EditingSession]) -> Callable[[World], Call]:
    return lambda w: ({"session_id": setup(w).session_id}, None)


def _var_ws(w: World) -> dict[str, Any]:
    return {"workspace_pk": w.workspace.pk}


def _var(w: World) -> dict[str, Any]:
    return {"workspace_pk": w.workspace.pk, "id": w.variable.pk}


def my_token(w: World) -> Call:
    instance, _ = do_create_token(user=w.me)
    return {"token_key": instance.token_key}, None


def _full_workspace(w: World) -> dict[str, Any]:
    return {"name": "ws-m", "pool": "pool-m", "terraform_files": {"main.tf": ""}, "description": "put"}


ROWS: dict[str, Row] = {
    "agents_list": Row("platform", 200, lambda w: ({}, None)),
    "agents_retrieve": Row("platform", 200, lambda w: ({"id": w.agent.pk}, None)),
    "workspaces_list": Row("read", 200, lambda w: ({}, None), invisible=200, listed="workspace"),
    "workspaces_create": Row(
        "create", 201, lambda w: ({}, {"name": "new-ws", "pool": "pool-m", "terraform_files": {}}), invisible=403
    ),
    "workspaces_retrieve": Row("read", 200, lambda w: (_ws(w), None)),
    "workspaces_update": Row("write", 200, lambda w: (_ws(w), _full_workspace(w))),
    "workspaces_partial_update": Row("write", 200, lambda w: (_ws(w), {"description": "patched"})),
    "workspaces_destroy": Row("admin", 204, lambda w: (_ws(w), None)),
    "workspaces_lock_create": Row("write", 200, lambda w: (_ws(w), {"reason": "r"})),
    "workspaces_unlock_create": Row("write", 200, locked_by_me),
    "workspaces_access_list": Row("admin", 200, lambda w: (_ws(w), None)),
    "workspaces_access_grant": Row("admin", 200, lambda w: (_ws(w), {"user": "outsider", "role": "plan"})),
    "workspaces_access_revoke": Row("admin", 204, lambda w: ({**_ws(w), "grant_id": w.grant_id}, None)),
    "workspaces_access_events_list": Row("admin", 200, lambda w: (_ws(w), None)),
    "workspaces_state_retrieve": Row("read", 200, lambda w: (_ws(w), None)),
    "workspaces_state_versions_promote_create": Row(
        "admin", 200, lambda w: ({**_ws(w), "version_id": w.conflict.pk}, None)
    ),
    "workspaces_state_versions_discard_create": Row(
        "admin", 200, lambda w: ({**_ws(w), "version_id": w.conflict.pk}, None)
    ),
    "tasks_list": Row("read", 200, lambda w: ({}, None), invisible=200, listed="task"),
    "tasks_create": Row("plan", 201, lambda w: ({}, {"workspace": w.workspace.pk, "type": "plan"}), invisible=400),
    "tasks_retrieve": Row("read", 200, lambda w: (_task(w), None)),
    "tasks_cancel_create": Row("plan", 202, lambda w: (_task(w), None)),
    "tasks_log_retrieve": Row("read", 200, lambda w: (_task(w), None)),
    "state_versions_list": Row("read", 200, lambda w: ({}, None), invisible=200, listed="conflict"),
    "state_versions_retrieve": Row("read", 200, lambda w: ({"id": w.conflict.pk}, None)),
    "resources_list": Row("read", 200, lambda w: ({}, None), invisible=200, listed="resource"),
    "tokens_list": Row("login", 200, lambda w: ({}, None)),
    "tokens_create": Row("login", 201, lambda w: ({}, {"days": 1})),
    "tokens_destroy": Row("login", 204, my_token),
    "resources_retrieve": Row("read", 200, lambda w: ({"id": w.resource.pk}, None)),
    # Any active user searches; the results come only from workspaces they may read (tests/search).
    "resources_search_retrieve": Row("login", 200, lambda w: ({}, {"q": "web", "mode": "fulltext"})),
    "workspaces_variables_list": Row("read", 200, lambda w: (_var_ws(w), None)),
    "workspaces_variables_create": Row("write", 201, lambda w: (_var_ws(w), {"key": "zone", "value": "a"})),
    "workspaces_variables_retrieve": Row("read", 200, lambda w: (_var(w), None)),
    "workspaces_variables_update": Row("write", 200, lambda w: (_var(w), {"key": "region", "value": "us-east-1"})),
    "workspaces_variables_partial_update": Row("write", 200, lambda w: (_var(w), {"value": "us-east-2"})),
    "workspaces_variables_destroy": Row("write", 204, lambda w: (_var(w), None)),
    "hub_sessions_create": Row(
        "write", 201, lambda w: ({}, {"workspace": w.workspace.pk, "resource_address": ADDR}), invisible=400
    ),
    "hub_sessions_retrieve": Row("write", 200, _session(my_editor_session)),
    "hub_sessions_heartbeat_create": Row("write", 200, _session(my_editor_session)),
    "hub_sessions_claim_create": Row("write", 200, _session(my_editor_session)),
    "hub_sessions_close_create": Row("owner", 200, _session(my_editor_session)),
    "hub_takeovers_create": Row("write", 201, lambda w: ({}, {"session_id": str(my_waiting_session(w).session_id)})),
    "hub_takeovers_retrieve": Row("write", 200, lambda w: ({"request_id": my_request(w).pk}, None)),
    "hub_takeovers_respond_create": Row(
        "write", 200, lambda w: ({"request_id": request_to_me(w).pk}, {"approve": False})
    ),
    "hub_takeovers_force_create": Row(
        "admin", 201, lambda w: ({}, {"session_id": str(my_waiting_session(w).session_id)})
    ),
    "hub_drafts_retrieve": Row("write", 200, my_draft, invisible=400),
    "hub_drafts_update": Row(
        "write",
        200,
        lambda w: ({}, {"workspace": w.workspace.pk, "resource_address": ADDR, "content": {"a": 2}}),
        invisible=400,
    ),
    "hub_drafts_destroy": Row("write", 204, my_draft, invisible=400),
}


def expected(row: Row, principal: str) -> int | tuple[int, ...]:
    if principal == "anonymous":
        return (401, 403)
    if row.need in ("owner", "login"):
        return row.ok
    if row.need == "platform":
        return row.ok if principal == "platform" else 403
    if row.need == "create":
        return row.ok if principal == "platform" else 403
    if RANK[principal] >= RANK[row.need]:
        return row.ok
    return row.invisible if principal == "none" else 403


class _Rollback(Exception):
    pass


def call(op: str, principal: str) -> tuple[int, Any, World]:
    method, template = OPERATIONS[op]
    row = ROWS[op]
    outcome: list[Any] = []
    try:
        with transaction.atomic():
            world = build(principal)
            params, body = row.call(world)
            path = template
            for name, value in params.items():
                path = path.replace("{%s}" % name, str(value))
            assert "{" not in path, path
            client = APIClient()
            if principal != "anonymous":
                client.force_authenticate(world.me)
            if method in ("GET", "DELETE"):
                query = "?" + urlencode(body) if body else ""
                response = client.generic(method, path + query)
            else:
                response = getattr(client, method.lower())(path, body, format="json")
            data = response.json() if response.content else None
            outcome.extend([response.status_code, data, world])
            raise _Rollback
    except _Rollback:
        pass
    return outcome[0], outcome[1], outcome[2]


def test_every_operation_has_a_row() -> None:
    """A new endpoint needs a row here (who may call it) before this passes."""
    assert sorted(set(OPERATIONS) - set(ROWS)) == [], "operations without an access row"
    assert sorted(set(ROWS) - set(OPERATIONS)) == [], "rows for operations the schema no longer has"


@pytest.mark.parametrize("op", sorted(OPERATIONS))
def test_operation_matrix(op: str) -> None:
    assert op in ROWS, "%s has no access row: add one to ROWS" % op
    row = ROWS[op]
    seen = {}
    for principal in PRINCIPALS:
        status, data, world = call(op, principal)
        seen[principal] = status
        want = expected(row, principal)
        assert status in (want if isinstance(want, tuple) else (want,)), (op, principal, status, data)
        if status == 404:
            # An invisible object reads like a missing one: the queryset never had it.
            assert isinstance(data, dict), (op, principal, data)
            assert data.get("code") == "not_found" or NOT_FOUND.match(data["detail"]), (op, principal, data)
        if row.listed is not None and status == 200:
            ids = [item["id"] for item in data["results"]]
            target = getattr(world, row.listed).pk
            assert (target in ids) == (RANK[principal] >= RANK["read"]), (op, principal, ids)
    # Sanity: the matrix is not flat (someone was refused, someone allowed).
    assert seen["anonymous"] in (401, 403)


def test_the_schema_offers_no_anonymous_access_and_states_each_rule() -> None:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            assert op["security"], (method, path)
            assert {} not in op["security"], (method, path)  # {} would mean "no credentials needed"
            assert op["x-access"] and "no rule" not in op["x-access"], (method, path)


def test_an_unknown_session_id_is_a_404_for_everyone() -> None:
    me = make_user("me", "access.platform_admin")
    client = APIClient()
    client.force_authenticate(me)
    assert client.get("/api/v1/hub/sessions/%s/" % uuid.uuid4()).status_code == 404

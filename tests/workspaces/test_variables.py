"""Workspace variables: sensitive values are write-only, encrypted at rest, and leave the server
only in ``task.dispatch`` to the agent running the task."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from channels.db import database_sync_to_async
from cryptography.fernet import Fernet
from django.apps import apps as django_apps
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from apps.workspaces import actions, encryption
from apps.workspaces.encryption import UndecryptableValue
from apps.workspaces.models import Variable, Workspace
from apps.workspaces.variables import do_rotate_keys, for_dispatch
from tests.access.fixtures import api_token, grant, make_user
from tests.agents.fixtures import Pool

SECRET = "S3cr3t-DB-pass-9f1c"
KEY_A, KEY_B = Fernet.generate_key().decode(), Fernet.generate_key().decode()


def api_as(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token " + api_token(user))
    return client


@pytest.fixture
def writer(workspace: Workspace) -> APIClient:
    user = make_user("writer")
    grant(workspace, "write", user=user)
    return api_as(user)


def url(workspace: Workspace, variable_id: int | None = None) -> str:
    base = "/api/v1/workspaces/%d/variables/" % workspace.pk
    return base if variable_id is None else "%s%d/" % (base, variable_id)


def raw_rows_text() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(string_agg(row_to_json(v)::text, ' '), '') FROM workspaces_variable v")
        rows = cursor.fetchone()[0]
        cursor.execute("SELECT coalesce(string_agg(row_to_json(w)::text, ' '), '') FROM workspaces_workspace w")
        return str(rows) + str(cursor.fetchone()[0])


@pytest.mark.django_db
def test_a_sensitive_value_is_write_only_and_encrypted_at_rest(
    writer: APIClient, workspace: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = writer.post(url(workspace), {"key": "db_password", "value": SECRET, "sensitive": True}, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert (body["value"], body["is_set"], body["sensitive"], body["category"]) == (None, True, True, "terraform")
    plain = writer.post(url(workspace), {"key": "REGION", "value": "eu-1", "category": "env"}, format="json")
    assert plain.json()["value"] == "eu-1"
    responses = [
        created,
        writer.get(url(workspace)),
        writer.get(url(workspace, body["id"])),
        writer.patch(url(workspace, body["id"]), {"value": SECRET + "-2", "description": "rotated"}, format="json"),
        writer.get("/api/v1/workspaces/"),
        writer.get("/api/v1/workspaces/%d/" % workspace.pk),
    ]
    for response in responses:
        assert response.status_code in (200, 201), response.content
        assert SECRET not in response.content.decode()
    listed = {v["key"]: v for v in writer.get(url(workspace)).json()["results"]}
    assert listed["db_password"]["value"] is None and listed["db_password"]["is_set"] is True
    assert listed["REGION"]["value"] == "eu-1"

    row = Variable.objects.get(key="db_password")
    assert row.value == ""
    assert row.encrypted_value and SECRET not in row.encrypted_value
    assert encryption.decrypt(row.encrypted_value) == SECRET + "-2"
    assert SECRET not in raw_rows_text()
    for record in caplog.records:
        assert SECRET not in record.getMessage()
        assert SECRET not in (record.exc_text or "")


@pytest.mark.django_db
def test_refusals_name_the_variable_never_its_value(writer: APIClient, workspace: Workspace) -> None:
    created = writer.post(url(workspace), {"key": "token", "value": SECRET, "sensitive": True}, format="json")
    variable_id = created.json()["id"]
    refusals = [
        writer.patch(url(workspace, variable_id), {"sensitive": False}, format="json"),  # 409
        writer.post(url(workspace), {"key": "token", "value": SECRET, "sensitive": True}, format="json"),  # 409
        writer.post(url(workspace), {"key": "bad name", "value": SECRET, "sensitive": True}, format="json"),
        writer.post(url(workspace), {"key": "BAD-ENV", "value": SECRET, "category": "env"}, format="json"),
        writer.post(url(workspace), {"key": "big", "value": SECRET * 5000, "sensitive": True}, format="json"),
        writer.post(url(workspace), {"key": "n", "value": 5, "sensitive": True}, format="json"),
        writer.post(url(workspace), {"key": "nokey", "category": "nope", "value": SECRET}, format="json"),
        writer.post(url(workspace), {"key": "novalue", "sensitive": True}, format="json"),
    ]
    assert [r.status_code for r in refusals] == [409, 409, 400, 400, 400, 400, 400, 400]
    for response in refusals:
        assert SECRET not in response.content.decode(), response.content
    assert Variable.objects.get(pk=variable_id).sensitive is True


@pytest.mark.django_db
def test_roles_decide_who_reads_and_who_writes(workspace: Workspace) -> None:
    Variable.objects.create(workspace=workspace, key="plain", value="v")
    reader, stranger = make_user("reader"), make_user("stranger")
    grant(workspace, "read", user=reader)
    as_reader, as_stranger = api_as(reader), api_as(stranger)
    assert as_reader.get(url(workspace)).status_code == 200
    assert as_reader.post(url(workspace), {"key": "x", "value": "y"}, format="json").status_code == 403
    variable_id = Variable.objects.get().pk
    assert as_reader.delete(url(workspace, variable_id)).status_code == 403
    assert as_stranger.get(url(workspace)).status_code == 404
    assert as_stranger.get(url(workspace, variable_id)).status_code == 404
    assert as_stranger.post(url(workspace), {"key": "x", "value": "y"}, format="json").status_code == 404
    assert APIClient().get(url(workspace)).status_code in (401, 403)


@pytest.mark.django_db
def test_the_admin_shows_a_sensitive_value_only_as_set(writer: APIClient, workspace: Workspace) -> None:
    writer.post(url(workspace), {"key": "token", "value": SECRET, "sensitive": True}, format="json")
    variable = Variable.objects.get()
    admin = User.objects.create_superuser("root", password="pw-root-long")
    browser = Client()
    browser.force_login(admin)
    pages = [
        "/admin/workspaces/variable/",
        "/admin/workspaces/variable/%d/change/" % variable.pk,
        "/admin/workspaces/workspace/%d/change/" % workspace.pk,
    ]
    for page in pages:
        response = browser.get(page)
        assert response.status_code == 200, page
        assert SECRET not in response.content.decode(), page
    assert "(sensitive, set)" in browser.get(pages[0]).content.decode()


@pytest.mark.django_db
def test_marking_a_variable_sensitive_encrypts_it_and_clears_the_legacy_copy(
    writer: APIClient, workspace: Workspace
) -> None:
    workspace.legacy_variables = {"db_password": SECRET}
    workspace.save()
    migration = __import__("apps.workspaces.migrations.0006_variables", fromlist=["copy_variables"])
    migration.copy_variables(django_apps, None)
    variable = Variable.objects.get(workspace=workspace)
    assert (variable.key, variable.value, variable.sensitive, variable.category) == (
        "db_password",
        SECRET,
        False,
        "terraform",
    )
    marked = writer.patch(url(workspace, variable.pk), {"sensitive": True}, format="json")
    assert marked.status_code == 200, marked.content
    assert marked.json()["value"] is None
    variable.refresh_from_db()
    assert variable.value == "" and encryption.decrypt(variable.encrypted_value) == SECRET
    assert SECRET not in raw_rows_text()
    assert for_dispatch(workspace.pk) == ({"db_password": SECRET}, {})


@pytest.mark.django_db
def test_keys_rotate_first_encrypts_all_decrypt(workspace: Workspace, settings: Any) -> None:
    settings.VARIABLE_ENCRYPTION_KEYS = [KEY_A]
    Variable.objects.create(workspace=workspace, key="k", sensitive=True, encrypted_value=encryption.encrypt(SECRET))
    settings.VARIABLE_ENCRYPTION_KEYS = [KEY_B, KEY_A]
    assert for_dispatch(workspace.pk)[0] == {"k": SECRET}
    assert do_rotate_keys() == 1
    settings.VARIABLE_ENCRYPTION_KEYS = [KEY_B]
    assert for_dispatch(workspace.pk)[0] == {"k": SECRET}
    settings.VARIABLE_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(UndecryptableValue) as refused:
        for_dispatch(workspace.pk)
    assert SECRET not in str(refused.value)


@pytest.mark.django_db(transaction=True)
async def test_the_sensitive_value_reaches_the_agent_in_task_dispatch(agent_pool: Pool, workspace: Workspace) -> None:
    from tests.agents.test_consumer import connect_agent, recv

    await database_sync_to_async(Variable.objects.create)(
        workspace=workspace, key="token", sensitive=True, encrypted_value=encryption.encrypt(SECRET)
    )
    await database_sync_to_async(Variable.objects.create)(
        workspace=workspace, key="AWS_REGION", category="env", value="eu-1"
    )
    comm = await connect_agent(agent_pool)
    task = await database_sync_to_async(actions.enqueue_task)(workspace=workspace, type="plan")
    dispatch = await recv(comm)
    assert dispatch["type"] == "task.dispatch" and dispatch["task_id"] == task.pk
    assert dispatch["variables"] == {"token": SECRET}
    assert dispatch["env"] == {"AWS_REGION": "eu-1"}
    await comm.disconnect()


@pytest.mark.django_db
def test_a_null_value_on_a_change_keeps_the_value_and_is_refused_on_create(
    writer: APIClient, workspace: Workspace
) -> None:
    created = writer.post(url(workspace), {"key": "k", "value": SECRET, "sensitive": True}, format="json").json()
    kept = writer.patch(url(workspace, created["id"]), {"value": None, "description": "d"}, format="json")
    assert kept.status_code == 200, kept.content
    assert for_dispatch(workspace.pk)[0] == {"k": SECRET}
    refused = writer.post(url(workspace), {"key": "n", "value": None}, format="json")
    assert refused.status_code == 400

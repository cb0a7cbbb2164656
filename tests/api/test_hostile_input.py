"""Hostile REST input is a 4xx in the declared error shape, never a 5xx (issue #13's reproductions)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.test import APIClient

from apps.agents.models import Agent
from apps.workspaces.models import Task, Workspace
from tests.access.fixtures import api_token
from tests.agents.fixtures import Pool

pytestmark = pytest.mark.django_db

LIST_ENDPOINTS = ["/api/v1/workspaces/", "/api/v1/tasks/", "/api/v1/agents/"]


@pytest.fixture
def client(db: None) -> APIClient:
    user = get_user_model().objects.create_superuser("root", password="pw-long-enough")
    api = APIClient(raise_request_exception=False)
    api.credentials(HTTP_AUTHORIZATION="Token " + api_token(user))
    return api


def post_raw(client: APIClient, path: str, raw: str | bytes, method: str = "post") -> Any:
    return getattr(client, method)(path, raw, content_type="application/json")


def assert_error_shape(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert isinstance(body.get("code"), str) and isinstance(body.get("detail"), str), body
    return body


@pytest.fixture
def one_of_each(agent_pool: Pool) -> None:
    ws = Workspace.objects.create(name="ws-l", pool=agent_pool.pool)
    agent = Agent.objects.create(agent_id="a-1", pool=agent_pool.pool)
    Task.objects.create(workspace=ws, type="plan", agent=agent)


@pytest.mark.parametrize("path", LIST_ENDPOINTS)
@pytest.mark.parametrize(
    "query",
    [
        {"limit": 2**63},
        {"limit": 2**63 - 1},
        {"limit": 10**30},
        {"limit": "1" * 5000},
        {"limit": 0},
        {"limit": -1},
        {"limit": "x"},
        {"offset": 2**63},
        {"offset": -1},
        {"offset": "1e3"},
    ],
)
def test_an_out_of_range_limit_or_offset_is_a_400(
    client: APIClient, one_of_each: None, path: str, query: dict[str, Any]
) -> None:
    body = assert_error_shape(client.get(path, query), 400)
    assert set(query) <= set(body)


@pytest.mark.parametrize("path", LIST_ENDPOINTS)
def test_the_largest_limit_and_offset_are_served(client: APIClient, one_of_each: None, path: str) -> None:
    response = client.get(path, {"limit": 500})
    assert response.status_code == 200, response.content[:500]
    assert len(response.json()["results"]) == 1
    # An offset past the end needs no query at all (and so cannot overflow bigint either).
    beyond = client.get(path, {"limit": 500, "offset": 2**63 - 1})
    assert beyond.status_code == 200 and beyond.json()["results"] == []


def test_a_page_never_holds_more_than_max_limit(client: APIClient, agent_pool: Pool, settings: Any) -> None:
    for i in range(3):
        Workspace.objects.create(name="ws-%d" % i, pool=agent_pool.pool)
    settings.API_MAX_PAGE_SIZE = 2
    response = client.get("/api/v1/workspaces/", {"limit": 2})
    assert len(response.json()["results"]) == 2
    assert client.get("/api/v1/workspaces/", {"limit": 3}).status_code == 400
    assert len(client.get("/api/v1/workspaces/").json()["results"]) == 2


@pytest.mark.parametrize("bad", ["pool\x00", "\ud800", "a\udfffb"])
def test_nul_or_lone_surrogate_in_a_slug_field_is_a_400(client: APIClient, agent_pool: Pool, bad: str) -> None:
    raw = json.dumps({"name": "x", "pool": bad, "terraform_files": {}})
    body = assert_error_shape(post_raw(client, "/api/v1/workspaces/", raw), 400)
    assert body["code"] == "invalid" and "pool" in body
    assert not Workspace.objects.filter(name="x").exists()


@pytest.mark.parametrize("content", [{"a": "\x00"}, {"\x00": 1}, {"a": "\ud83d"}, {"a": ["ok", {"b": "\udc00"}]}])
def test_nul_or_lone_surrogate_in_draft_content_is_a_400(
    client: APIClient, agent_pool: Pool, content: dict[str, Any]
) -> None:
    ws = Workspace.objects.create(name="ws-d", pool=agent_pool.pool)
    raw = json.dumps({"workspace": ws.pk, "resource_address": "aws_instance.a", "content": content})
    assert_error_shape(post_raw(client, "/api/v1/hub/drafts/", raw, method="put"), 400)


def test_nul_in_a_form_body_is_a_400(client: APIClient, agent_pool: Pool) -> None:
    response = client.post("/api/v1/workspaces/", {"name": "x", "pool": "a\x00", "terraform_files": "{}"})
    assert_error_shape(response, 400)


def test_nul_in_a_query_parameter_is_a_400(client: APIClient, agent_pool: Pool) -> None:
    ws = Workspace.objects.create(name="ws-q", pool=agent_pool.pool)
    response = client.get("/api/v1/hub/drafts/?workspace=%d&resource_address=a%%00b" % ws.pk)
    assert_error_shape(response, 400)


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
def test_deeply_nested_json_is_a_400(client: APIClient, agent_pool: Pool, depth: int) -> None:
    for opener, closer in (("[", "]"), ('{"a":', "}")):
        raw = '{"name": "x", "pool": "pool-a", "terraform_files": {}, "description": %s1%s}' % (
            opener * depth,
            closer * depth,
        )
        body = assert_error_shape(post_raw(client, "/api/v1/workspaces/", raw), 400)
        assert body["code"] == "parse_error"


def test_nesting_within_the_limit_parses(client: APIClient, agent_pool: Pool) -> None:
    ws = Workspace.objects.create(name="ws-n", pool=agent_pool.pool)
    content: dict[str, Any] = {"v": 1}
    for _ in range(20):
        content = {"k": [content, '[[[{{{\\"', "]]]}}}"]}
    raw = json.dumps({"workspace": ws.pk, "resource_address": "a.b", "content": content})
    response = post_raw(client, "/api/v1/hub/drafts/", raw, method="put")
    assert response.status_code == 200, response.content[:500]
    assert response.json()["content"] == content


@pytest.mark.parametrize("raw", ["{", "NaN", '{"name": Infinity}', "\udc80", b"\xff\xfe{}", ""])
def test_malformed_json_is_a_parse_error(client: APIClient, agent_pool: Pool, raw: str | bytes) -> None:
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    response = post_raw(client, "/api/v1/workspaces/", raw)
    assert_error_shape(response, 400)


def test_a_json_body_above_the_limit_is_a_413(client: APIClient, agent_pool: Pool, settings: Any) -> None:
    settings.HTTP_MAX_BODY_BYTES = 1000
    raw = json.dumps({"name": "x", "pool": "pool-a", "terraform_files": {"a.tf": "x" * 2000}})
    body = assert_error_shape(post_raw(client, "/api/v1/workspaces/", raw), 413)
    assert body["code"] == "request_too_large"


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/hub/sessions/not-a-uuid/",
        "/api/v1/hub/takeovers/%C2%B2/",
        "/api/v1/hub/takeovers/99999999999999999999999999/",
        "/api/v1/workspaces/99999999999999999999999/",
        "/api/v1/tasks/abc/",
        "/api/v1/nothing-here/",
    ],
)
def test_unknown_api_paths_are_json_404s(client: APIClient, path: str) -> None:
    assert assert_error_shape(client.get(path), 404)["code"] == "not_found"


def test_non_api_404s_stay_html(db: None) -> None:
    response = Client(raise_request_exception=False).get("/no-such-page")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_validation_errors_carry_code_and_detail_beside_the_field_errors(client: APIClient, agent_pool: Pool) -> None:
    body = assert_error_shape(client.post("/api/v1/workspaces/", {"name": ""}, format="json"), 400)
    assert body["code"] == "invalid"
    assert "name" in body and isinstance(body["name"], list)


def test_anonymous_refusal_has_the_error_shape(db: None) -> None:
    body = assert_error_shape(APIClient().get("/api/v1/workspaces/"), 403)
    assert body["code"] == "not_authenticated"


@pytest.mark.parametrize("query", ["workspace=1%00", "a%00=1", "status=running&x=%00"])
def test_nul_anywhere_in_a_query_string_is_a_400(client: APIClient, query: str) -> None:
    body = assert_error_shape(client.get("/api/v1/tasks/?" + query), 400)
    assert "NUL" in body["detail"]


def test_nul_in_an_admin_query_is_a_400(db: None) -> None:
    admin = get_user_model().objects.create_superuser("admin", password="pw-long-enough")
    browser = Client(raise_request_exception=False)
    browser.force_login(admin)
    assert browser.get("/admin/workspaces/workspace/?q=a%00b").status_code == 400
    assert browser.get("/admin/workspaces/workspace/?q=ab").status_code == 200

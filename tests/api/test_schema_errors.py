"""The OpenAPI schema declares every error status in one shape, and the limits the server enforces."""

from __future__ import annotations

from typing import Any

import pytest
from drf_spectacular.generators import SchemaGenerator

METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return SchemaGenerator().get_schema(request=None, public=True)


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, m, item[m]) for path, item in schema["paths"].items() for m in METHODS if m in item]


def test_every_error_response_has_the_error_shape(schema: dict[str, Any]) -> None:
    error = schema["components"]["schemas"]["Error"]
    assert error["required"] == ["code", "detail"]
    for path, method, operation in operations(schema):
        for code, response in operation["responses"].items():
            if code.startswith("4"):
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/Error", (path, method, code)


def test_every_operation_documents_what_any_request_can_get(schema: dict[str, Any]) -> None:
    for path, method, operation in operations(schema):
        codes = set(operation["responses"])
        assert {"400", "403", "406", "429"} <= codes, (path, method)
        if "{" in path:
            assert "404" in codes, (path, method)
        if "requestBody" in operation:
            assert {"413", "415"} <= codes, (path, method)


def test_conflicts_are_documented_where_views_answer_them(schema: dict[str, Any]) -> None:
    paths = schema["paths"]
    assert "409" in paths["/api/v1/workspaces/{id}/lock/"]["post"]["responses"]
    assert "409" in paths["/api/v1/tasks/{id}/cancel/"]["post"]["responses"]
    assert "202" in paths["/api/v1/tasks/{id}/cancel/"]["post"]["responses"]


def test_page_size_and_body_limits_are_in_the_schema(schema: dict[str, Any], settings: Any) -> None:
    params = {p["name"]: p for p in schema["paths"]["/api/v1/workspaces/"]["get"]["parameters"]}
    assert params["limit"]["schema"]["maximum"] == settings.API_MAX_PAGE_SIZE
    assert params["limit"]["schema"]["minimum"] == 1
    assert params["offset"]["schema"]["minimum"] == 0
    assert str(settings.HTTP_MAX_BODY_BYTES) in schema["info"]["description"]
    post = schema["paths"]["/api/v1/workspaces/"]["post"]["responses"]
    assert str(settings.HTTP_MAX_BODY_BYTES) in post["413"]["description"]

"""The OpenAPI schema's errors and limits, in one place: a drf-spectacular postprocessing hook
adds to every operation each error status it can answer, all in the one error shape of
iacplatform/api/errors.py, and states the limits the server enforces.

Per operation: 400 (every operation: query strings are checked, and bodies parsed), 403 when it
needs a login, 404 when its path has a parameter, 406 (an unsatisfiable ``Accept``), 413 and 415
when it takes a body, 429 (throttling). A view declares the statuses only it knows (409) with
``extend_schema(responses={409: ERROR})``; this hook gives them the error shape.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse

ERROR = OpenApiResponse(description="Refused; see the error's code and detail.")

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": (
        "Every error: a machine-readable code and a message for people. A validation error "
        "(code invalid) also carries DRF's field errors beside them, keyed by field name."
    ),
    "properties": {
        "code": {"type": "string", "example": "invalid"},
        "detail": {"type": "string", "example": "Invalid input."},
    },
    "required": ["code", "detail"],
}

METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


def descriptions() -> dict[str, str]:
    return {
        "400": (
            "Invalid input: field errors, or a body that is not valid JSON (nested deeper than %d "
            "levels, NaN/Infinity, a NUL or a lone surrogate in any string), or a NUL in the query "
            "string." % settings.API_JSON_MAX_DEPTH
        ),
        "403": "Not logged in, or not allowed.",
        "404": "No such object (or not visible to the caller).",
        "406": "No acceptable representation for the Accept header.",
        "409": "Conflicts with the current state.",
        "413": "The request body is larger than %d bytes." % settings.HTTP_MAX_BODY_BYTES,
        "415": "Unsupported Content-Type (use application/json).",
        "429": "Too many requests; retry after the number of seconds in Retry-After.",
    }


def statuses(operation: dict[str, Any], path: str) -> set[str]:
    found = {"400", "406", "429"}
    if {} not in operation.get("security", [{}]):
        found.add("403")
    if "{" in path:
        found.add("404")
    if "requestBody" in operation:
        found |= {"413", "415"}
    return found


def postprocess(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular POSTPROCESSING_HOOKS entry (after enum postprocessing)."""
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    text = descriptions()
    for path, item in result.get("paths", {}).items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            for code in sorted(statuses(operation, path)):
                responses.setdefault(code, {"description": text[code]})
            for code, response in responses.items():
                if code.startswith("4"):
                    response["content"] = content
                    if not response.get("description"):
                        response["description"] = text.get(code, "Refused.")
            operation["responses"] = dict(sorted(responses.items()))
    info = result.setdefault("info", {})
    limits = "Limits: request bodies up to %d bytes; JSON nested up to %d levels; pages of at most %d results." % (
        settings.HTTP_MAX_BODY_BYTES,
        settings.API_JSON_MAX_DEPTH,
        settings.API_MAX_PAGE_SIZE,
    )
    info["description"] = "%s\n\n%s" % (info.get("description", ""), limits)
    return result

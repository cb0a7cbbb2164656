"""One error shape for every refusal of the REST API, and the JSON 404/400/500 pages under /api/.

Every 4xx body is an object with a string ``code`` (machine-readable: ``invalid``,
``parse_error``, ``not_authenticated``, ``permission_denied``, ``not_found``, ``conflict``,
``throttled``, ``request_too_large``, ...) and a string ``detail`` (for people); a validation
error also keeps DRF's field errors beside them (``{"code": "invalid", "detail": ..., "name":
["This field is required."]}``). The OpenAPI schema declares this shape for every error status
(iacplatform/api/schema.py).
"""

from __future__ import annotations

import logging
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"


def _first_message(detail: Any) -> str:
    while isinstance(detail, (list, dict)) and detail:
        detail = next(iter(detail.values())) if isinstance(detail, dict) else detail[0]
    return str(detail) if detail not in ({}, []) else ""


def error_body(exc: exceptions.APIException) -> dict[str, Any]:
    detail = exc.detail
    if isinstance(exc, exceptions.ValidationError):
        body: dict[str, Any] = {"code": "invalid", "detail": "Invalid input."}
        if isinstance(detail, dict):
            fields = dict(detail)
            if "detail" in fields:
                body["detail"] = _first_message(fields.pop("detail"))
            fields.pop("code", None)
            body.update(fields)
        else:
            body["detail"] = _first_message(detail) or body["detail"]
        return body
    codes = exc.get_codes()
    code = codes if isinstance(codes, str) else exc.default_code
    return {"code": str(code), "detail": _first_message(detail) if not isinstance(detail, str) else str(detail)}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.APIException):
        response.data = error_body(exc)
    elif isinstance(response.data, dict) and "code" not in response.data:
        # Django's Http404 / PermissionDenied, turned into DRF's by the default handler.
        response.data = {"code": "not_found" if response.status_code == 404 else "permission_denied", **response.data}
    return response


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


def json_error(code: str, detail: str, status_code: int) -> JsonResponse:
    return JsonResponse({"code": code, "detail": detail}, status=status_code)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler404: malformed ids and unknown paths under /api/ answer in the API's error shape."""
    if _is_api(request):
        return json_error("not_found", "Not found.", 404)
    return defaults.page_not_found(request, exception)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler400: Django's own refusals (too many form fields, a bad Host...)."""
    if _is_api(request):
        return json_error("bad_request", "Bad request.", 400)
    return defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return json_error("permission_denied", "You do not have permission to perform this action.", 403)
    return defaults.permission_denied(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    # The traceback is logged by django.request; the client learns nothing of it.
    if _is_api(request):
        return json_error("server_error", "The server could not handle this request.", 500)
    return defaults.server_error(request)

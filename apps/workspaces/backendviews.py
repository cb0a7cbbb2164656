"""The Terraform ``http`` state backend endpoint: translate HTTP to statebackend.py and back.

One URL, four methods, as Terraform's http backend uses them with ``address``, ``lock_address``
and ``unlock_address`` all set to it: GET (200 with the state, 204 when there is none), POST
(``?ID=<lock id>``; 200), LOCK and UNLOCK (the lock info in the body; 200, or 423/409 with the
holder's lock info, which Terraform reads). Errors are JSON ``{"detail": ...}``. Authorization:
the task attempt's credential only (statebackend.authenticate), never a user's session or token.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from apps.workspaces import statebackend, states

ALLOWED = "GET, POST, LOCK, UNLOCK"


def _read_body(request: HttpRequest, limit: int) -> bytes:
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if not declared.isdigit():
        raise states.Refused(400, "bad Content-Length")
    if int(declared) > limit:
        raise states.Refused(413, "the body is larger than %d bytes" % limit)
    # read() rather than .body: the limit is ours (states are larger than Django's form limit).
    body = request.read(limit + 1)
    if len(body) > limit:
        raise states.Refused(413, "the body is larger than %d bytes" % limit)
    return body


@csrf_exempt
def terraform_state(request: HttpRequest, workspace_id: int) -> HttpResponse:
    method = request.method or ""
    if method not in ("GET", "POST", "LOCK", "UNLOCK"):
        response = JsonResponse({"detail": "method %s not allowed" % method[:20]}, status=405)
        response["Allow"] = ALLOWED
        return response
    try:
        credential = statebackend.authenticate(request.headers.get("Authorization"), workspace_id=workspace_id)
        return _handle(request, method, credential)
    except statebackend.LockHeld as exc:
        return JsonResponse(exc.info, status=exc.status)
    except states.Refused as exc:
        response = JsonResponse({"detail": exc.message}, status=exc.status)
        if exc.status == 401:
            response["WWW-Authenticate"] = 'Basic realm="terraform-state"'
        return response


def _handle(request: HttpRequest, method: str, credential: statebackend.Credential) -> HttpResponse:
    if method == "GET":
        state = statebackend.read(credential)
        if state is None:
            return HttpResponse(status=204)
        return HttpResponse(json.dumps(state), content_type="application/json")
    if method == "POST":
        body = _read_body(request, settings.TERRAFORM_STATE_MAX_BYTES)
        state = statebackend.parse_state(body, content_md5=request.headers.get("Content-MD5"))
        lock_id = request.GET.get("ID")
        offer = statebackend.write(credential, state, lock_id=lock_id)
        body_out: dict[str, Any] = {"result": offer.verdict.value}
        if offer.version is not None:
            body_out["serial"] = offer.version.terraform_serial
        return JsonResponse(body_out)
    info = statebackend.parse_lock_info(_read_body(request, statebackend.MAX_LOCK_INFO_BYTES))
    if method == "LOCK":
        statebackend.lock(credential, info)
    else:
        statebackend.unlock(credential, info)
    return JsonResponse({"ID": info["ID"]})

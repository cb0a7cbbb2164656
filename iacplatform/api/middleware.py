"""Query strings go through the same text check as bodies (iacplatform/inputs.py): a NUL in any
query parameter is refused with a 400 before a view can hand it to a lookup (PostgreSQL refuses
NUL in text, and the failing query would be a 500). Percent-decoding cannot make a lone
surrogate (Django decodes query strings as UTF-8 with replacement), so NUL is the one to stop."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.utils.deprecation import MiddlewareMixin

from iacplatform import inputs
from iacplatform.api.errors import API_PREFIX, json_error


class RefuseBadQueryMiddleware(MiddlewareMixin):
    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        for key, values in request.GET.lists():
            for text in (key, *values):
                reason = inputs.bad_text(text)
                if reason is not None:
                    detail = "query parameter %r: %s" % (key[:50], reason)
                    if request.path.startswith(API_PREFIX):
                        return json_error("invalid", detail, 400)
                    return HttpResponseBadRequest(detail, content_type="text/plain")
        return None

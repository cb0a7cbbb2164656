"""Request bodies above ``HTTP_MAX_BODY_BYTES`` refused while they arrive, inside daphne.

Why here and not in an ASGI middleware: Twisted (under daphne) receives the whole body before
daphne starts the application, and daphne then queues every chunk of it for the application at
once, so a 600 MB POST costs 600 MB of memory before any ASGI code could say no. This module
teaches daphne's request class (``daphne.http_protocol.WebRequest``) to answer 413 as soon as the
declared ``Content-Length`` is too large, or as soon as the bytes received pass the limit (chunked
bodies, or a body longer than it declared), and to close the connection: nothing past the limit is
kept. :func:`install` is called by iacplatform/asgi.py, which daphne imports in its own process.

Guarantees: at most the limit (plus one Twisted read) of any request body is held by a replica.
Does NOT: apply outside daphne (``runserver``, the test client: the REST parsers refuse there,
iacplatform/api/parsers.py), or replace the ingress limit (deploy/: ``proxy-body-size``), which
spares the replica the bytes altogether.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)


def refusal(limit: int) -> bytes:
    body = json.dumps(
        {"code": "request_too_large", "detail": "The request body is larger than %d bytes." % limit}
    ).encode()
    head = (
        "HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        "Connection: close\r\n\r\n" % len(body)
    )
    return head.encode("ascii") + body


def install() -> None:
    from daphne.http_protocol import WebRequest

    if getattr(WebRequest, "body_limit_installed", False):
        return
    got_length = WebRequest.gotLength
    content_chunk = WebRequest.handleContentChunk

    def refuse(request: Any) -> None:
        request.body_refused = True
        limit = settings.HTTP_MAX_BODY_BYTES
        logger.warning("refused a request body above %d bytes from %s", limit, request.client_addr)
        transport = request.channel.transport
        transport.write(refusal(limit))
        transport.loseConnection()

    def gotLength(request: Any, length: int | None) -> None:
        request.body_seen = 0
        request.body_refused = False
        if length is not None and length > settings.HTTP_MAX_BODY_BYTES:
            got_length(request, 0)
            refuse(request)
            return
        got_length(request, length)

    def handleContentChunk(request: Any, data: bytes) -> None:
        if getattr(request, "body_refused", False):
            return
        request.body_seen = getattr(request, "body_seen", 0) + len(data)
        if request.body_seen > settings.HTTP_MAX_BODY_BYTES:
            refuse(request)
            return
        content_chunk(request, data)

    process = WebRequest.process

    def process_unless_refused(request: Any) -> None:
        # The connection is closing with its 413: never start the application for it.
        if getattr(request, "body_refused", False):
            return
        process(request)

    WebRequest.process = process_unless_refused
    WebRequest.gotLength = gotLength
    WebRequest.handleContentChunk = handleContentChunk
    WebRequest.body_limit_installed = True

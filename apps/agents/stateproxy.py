"""The agent's loopback forwarder for Terraform's http state backend.

Terraform's http backend takes one address for a whole run, but the replica the agent was
connected to when the run started may die during it. Terraform therefore talks to this forwarder
on 127.0.0.1, and each request goes to a replica the agent can reach now: the one it is connected
to, else the others of its ``--url`` list, in order.

Guarantees: a request is passed on unchanged (method, path and query, body, ``Authorization``,
``Content-Type``, ``Content-MD5``) and the first answer a replica gives (any status) is passed back
unchanged; only a request that reached no replica (connection refused, reset, timed out) is tried
on the next one, then answered 502. That retry is safe because every state backend request is
idempotent on the server (the same state again is a no-op, a repeated LOCK of the same lock is
granted, an UNLOCK of a released lock is 200). Bound to loopback only; it holds no credential
(Terraform sends the attempt's own with each request).
Does NOT: queue or buffer beyond one request per connection, or follow redirects.
"""

from __future__ import annotations

import http.client
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger(__name__)

FORWARDED_HEADERS = ("Authorization", "Content-Type", "Content-MD5")
RETURNED_HEADERS = ("Content-Type", "Content-MD5", "WWW-Authenticate", "Allow")
METHODS = ("GET", "POST", "LOCK", "UNLOCK", "PUT", "DELETE")
TIMEOUT = 60.0
MAX_BODY = 256 * 1024 * 1024  # far above any state the server accepts; it answers 413 itself


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class StateProxy:
    def __init__(self, origins: Callable[[], list[str]]) -> None:
        """``origins``: the replicas' http(s)://host:port to try for each request, in order."""
        self.origins = origins
        self._server: ThreadingHTTPServer | None = None

    @property
    def origin(self) -> str:
        assert self._server is not None, "start() first"
        return "http://127.0.0.1:%d" % self._server.server_address[1]

    def start(self) -> str:
        if self._server is None:
            self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
            self._server.daemon_threads = True
            threading.Thread(target=self._server.serve_forever, name="state-proxy", daemon=True).start()
        return self.origin

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        tried: list[str] = []
        for origin in self.origins():
            request = urllib.request.Request(  # noqa: S310 - the agent's own replica URLs
                origin.rstrip("/") + path, data=body if body else None, method=method, headers=headers
            )
            try:
                with _OPENER.open(request, timeout=TIMEOUT) as response:
                    return response.status, _returned(response.headers), response.read()
            except urllib.error.HTTPError as exc:  # an answer: pass it back
                with exc:
                    return exc.code, _returned(exc.headers), exc.read()
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                logger.warning("state backend at %s unreachable (%s); trying the next replica", origin, exc)
                tried.append(origin)
        return (
            502,
            {"Content-Type": "application/json"},
            b'{"detail": "no replica reachable: %s"}' % (", ".join(tried).encode()),
        )


def _returned(headers: Any) -> dict[str, str]:
    return {name: headers[name] for name in RETURNED_HEADERS if headers.get(name) is not None}


def _handler(proxy: StateProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 <= length <= MAX_BODY:
                self._answer(413, {}, b"")
                return
            body = self.rfile.read(length) if length else b""
            headers = {name: self.headers[name] for name in FORWARDED_HEADERS if self.headers.get(name) is not None}
            status, returned, content = proxy.forward(self.command, self.path, headers, body)
            self._answer(status, returned, content)

        def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    for method in METHODS:
        setattr(Handler, "do_" + method, Handler._relay)
    return Handler

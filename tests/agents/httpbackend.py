"""A Terraform http state backend in a thread, for the agent's tests that run Terraform without a
platform: it keeps one state and one lock in memory and records every request, so a test can see
what Terraform sent. The platform's own endpoint is tested in tests/workspaces/test_statebackend.py
and, with real Terraform through runagent, in tests/integration/test_agents_terraform.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Backend:
    def __init__(self) -> None:
        self.state: bytes | None = None
        self.lock: dict[str, Any] | None = None
        self.requests: list[tuple[str, str]] = []
        self.auth: list[str | None] = []
        self.mutex = threading.Lock()
        self.address = ""

    def spec(self) -> dict[str, Any]:
        return {"address": self.address, "username": "task-11", "password": "secret"}


def _handler(backend: Backend) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _answer(self, status: int, body: bytes = b"") -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _record(self) -> None:
            backend.requests.append((self.command, self.path))
            backend.auth.append(self.headers.get("Authorization"))

        def do_GET(self) -> None:
            with backend.mutex:
                self._record()
                if backend.state is None:
                    self._answer(204)
                else:
                    self._answer(200, backend.state)

        def do_POST(self) -> None:
            body = self._body()
            with backend.mutex:
                self._record()
                backend.state = body
                self._answer(200)

        def do_LOCK(self) -> None:
            info = json.loads(self._body())
            with backend.mutex:
                self._record()
                if backend.lock is not None:
                    self._answer(423, json.dumps(backend.lock).encode())
                    return
                backend.lock = info
                self._answer(200)

        def do_UNLOCK(self) -> None:
            info = json.loads(self._body())
            with backend.mutex:
                self._record()
                if backend.lock is not None and backend.lock["ID"] == info["ID"]:
                    backend.lock = None
                self._answer(200)

    return Handler


@contextmanager
def serve() -> Iterator[Backend]:
    backend = Backend()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(backend))
    backend.address = "http://127.0.0.1:%d/state/" % server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield backend
    finally:
        server.shutdown()
        server.server_close()

"""A UI client of real web replicas for the hub's integration tests: REST calls with a DRF token,
WebSockets with the Django session cookie (sessions live in the database, so every replica accepts
them), and a listener thread that timestamps every frame as it arrives."""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from harness.processes import Proc
from tests.access.fixtures import api_token


@dataclass
class Login:
    user: User
    token: str
    session_cookie: str

    @classmethod
    def of(cls, user: User) -> Login:
        client = Client()
        client.force_login(user)
        cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
        return cls(user=user, token=api_token(user), session_cookie=cookie)

    def call(self, replica: Proc, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - local test URL
            replica.url + path,
            data=data,
            method=method,
            headers={"Authorization": "Token %s" % self.token, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def websocket(self, replica: Proc, path: str) -> ClientConnection:
        return connect(
            replica.ws_url + path,
            origin=Origin(replica.url),
            additional_headers={"Cookie": "%s=%s" % (settings.SESSION_COOKIE_NAME, self.session_cookie)},
            proxy=None,
            open_timeout=10,
            legacy=True,  # a plain connection object, not the context-manager-only form
        )


class Listener:
    """Reads a socket in a thread; every frame is kept with the monotonic time it arrived."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        self.close_code: int | None = None
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for raw in self.ws:
                self.frames.put((time.monotonic(), json.loads(raw)))
        except ConnectionClosed:
            pass
        self.close_code = self.ws.close_code
        self.closed.set()

    def next(self, timeout: float = 10.0) -> tuple[float, dict[str, Any]]:
        return self.frames.get(timeout=timeout)

    def wait_for(self, frame_type: str, timeout: float = 10.0) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            arrived, frame = self.frames.get(timeout=max(0.0, deadline - time.monotonic()))
            if frame["type"] == frame_type:
                return arrived, frame

    def wait_closed(self, timeout: float = 10.0) -> int | None:
        assert self.closed.wait(timeout), "the server did not close the socket"
        return self.close_code

    def close(self) -> None:
        self.ws.close()
        self.thread.join(5)


def closed_with(ws: ClientConnection) -> int | None:
    """The close code of a socket the server accepts and closes at once."""
    try:
        frame = ws.recv(timeout=10)
    except ConnectionClosed:
        return ws.close_code
    raise AssertionError("expected a close, got %r" % frame)

"""Connection caps across two real daphne replicas, with real WebSocket clients: a user, a pool
token or a source address at its cap on replica A is refused on replica B (4429); a socket closed
on A frees a slot on B; a SIGKILLed replica's slots come back after the staleness window; with
the database unreachable, a connect is refused with 4503, never 1011 or HTTP 500."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from django.contrib.auth.models import User
from django.db import connection
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from apps.agents.protocol import PROTOCOL_VERSION
from apps.sockets.models import OpenSocket, SocketReplica
from apps.workspaces.models import Task
from harness.processes import Proc, ProcessGroup, free_port
from tests.access.fixtures import grant
from tests.integration.agentkit import make_pool, make_workspace
from tests.integration.hubclient import Login

pytestmark = pytest.mark.slow

REFRESH = 0.5
STALE = 2.0
CAPS_ENV = {
    "SOCKET_CAP_REFRESH_SECONDS": str(REFRESH),
    "SOCKET_CAP_STALE_SECONDS": str(STALE),
    "AGENT_HELLO_TIMEOUT": "120",
    "WS_CONNECT_BURST_PER_SOURCE": "10000",
}

# Opens a socket on a replica and reads its first frame: returns it admitted, or raises.
Opener = Callable[[Proc, int], ClientConnection]


def _open_or_code(open_socket: Callable[[], ClientConnection]) -> ClientConnection | int:
    """The admitted socket, or the close code a refused one got."""
    try:
        return open_socket()
    except InvalidStatus as exc:
        return -exc.response.status_code  # refused before the handshake completed
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else 1006


def _refused_with(open_socket: Callable[[], ClientConnection]) -> int | None:
    """The close code a refused socket gets (None: it was admitted, and is closed again)."""
    result = _open_or_code(open_socket)
    if isinstance(result, int):
        return result
    result.close()
    return None


def _agent_opener(token: str) -> Opener:
    def open_agent(replica: Proc, n: int) -> ClientConnection:
        ws = connect(
            replica.ws_url + "/ws/agents/",
            additional_headers={"Authorization": "Bearer " + token},
            proxy=None,
            open_timeout=10,
            legacy=True,
        )
        ws.send(json.dumps({"type": "hello", "protocol": PROTOCOL_VERSION, "agent_id": "caps-%d" % n, "capacity": 1}))
        frame = json.loads(ws.recv(timeout=10))
        assert frame["type"] == "welcome", frame
        return ws

    return open_agent


def _hub_opener(login: Login, task: Task) -> Opener:
    def open_hub(replica: Proc, n: int) -> ClientConnection:
        ws = login.websocket(replica, "/ws/tasks/%d/logs/" % task.pk)
        frame = json.loads(ws.recv(timeout=10))
        assert frame["type"] == "task.status", frame
        return ws

    return open_hub


def _wait_admitted(open_socket: Callable[[], ClientConnection], timeout: float) -> tuple[ClientConnection, float]:
    """The socket ``open_socket`` opens once admitted (a retry every 0.2 s), and the seconds that took."""
    started = time.monotonic()
    while True:
        result = _open_or_code(open_socket)
        if not isinstance(result, int):
            return result, time.monotonic() - started
        assert result == 4429, result
        assert time.monotonic() - started < timeout, "still refused after %ss" % timeout
        time.sleep(0.2)


def _cap_holds_across_replicas(processes: ProcessGroup, env: dict[str, str], opener: Opener) -> None:
    a = processes.daphne("web-a", env={**CAPS_ENV, **env})
    b = processes.daphne("web-b", env={**CAPS_ENV, **env})
    held = [opener(a, 1), opener(a, 2)]
    assert _refused_with(lambda: opener(b, 3)) == 4429  # the cap is 2, both taken on A
    assert _refused_with(lambda: opener(a, 3)) == 4429
    held.pop().close()
    held.append(_wait_admitted(lambda: opener(b, 4), timeout=5)[0])  # A's release is seen by B at once
    assert _refused_with(lambda: opener(a, 5)) == 4429
    # A dies without closing anything: its slot stays taken until its row goes stale.
    a.signal(signal.SIGKILL)
    a.wait(10)
    assert _refused_with(lambda: opener(b, 6)) == 4429
    late, waited = _wait_admitted(lambda: opener(b, 7), timeout=STALE + 5)
    held.append(late)
    assert waited <= STALE + 2 * REFRESH + 2, waited
    assert _refused_with(lambda: opener(b, 8)) == 4429  # B's two sockets are the cap now
    # B's sweep deletes the dead replica's rows: only B's own sockets are left in the table.
    deadline = time.monotonic() + 10
    while SocketReplica.objects.count() != 1 or _orphans():
        assert time.monotonic() < deadline, list(SocketReplica.objects.values())
        time.sleep(0.2)
    for ws in held[1:]:
        ws.close()


def _orphans() -> bool:
    return OpenSocket.objects.exclude(replica__in=SocketReplica.objects.values("process")).exists()


def test_a_user_at_the_cap_on_one_replica_is_refused_on_the_other(processes: ProcessGroup) -> None:
    pool, _ = make_pool()
    workspace = make_workspace(pool, "caps")
    task = Task.objects.create(workspace=workspace, type="plan", status="succeeded")
    user = User.objects.create_user("capped", password="pw-capped-123")
    grant(workspace, "read", user=user)
    login = Login.of(user)
    _cap_holds_across_replicas(processes, {"WS_MAX_CONNECTIONS_PER_USER": "2"}, _hub_opener(login, task))


def test_a_pool_token_at_the_cap_on_one_replica_is_refused_on_the_other(processes: ProcessGroup) -> None:
    _, token = make_pool()
    _cap_holds_across_replicas(processes, {"WS_MAX_CONNECTIONS_PER_POOL": "2"}, _agent_opener(token))


def test_a_source_at_the_cap_on_one_replica_is_refused_on_the_other(processes: ProcessGroup) -> None:
    _, token = make_pool()
    _cap_holds_across_replicas(processes, {"WS_MAX_CONNECTIONS_PER_SOURCE": "2"}, _agent_opener(token))


def test_a_replica_stopped_with_sigterm_gives_its_slots_back_at_once(processes: ProcessGroup) -> None:
    env = {**CAPS_ENV, "SOCKET_CAP_STALE_SECONDS": "60", "WS_MAX_CONNECTIONS_PER_POOL": "2"}
    a = processes.daphne("web-a", env=env)
    b = processes.daphne("web-b", env=env)
    _, token = make_pool()
    opener = _agent_opener(token)
    held = [opener(a, 1), opener(a, 2)]
    assert _refused_with(lambda: opener(b, 3)) == 4429
    a.signal(signal.SIGTERM)
    assert a.wait(30) is not None
    # Well inside the 60 s window: A withdrew its rows on the way out.
    _wait_admitted(lambda: opener(b, 4), timeout=10)
    assert not SocketReplica.objects.exclude(pod="web-b").exists()
    for ws in held:
        with contextlib.suppress(ConnectionClosed):
            ws.close()


def test_a_socket_refused_for_its_token_gives_its_source_slot_back(processes: ProcessGroup) -> None:
    replica = processes.daphne("web-a", env={**CAPS_ENV, "WS_MAX_CONNECTIONS_PER_SOURCE": "1"})
    for _ in range(3):  # each takes the source's only slot, is refused 403, and gives it back
        assert _refused_with(lambda: _agent_opener("not-a-token")(replica, 0)) == -403
    deadline = time.monotonic() + 5
    while OpenSocket.objects.exists():
        assert time.monotonic() < deadline, list(OpenSocket.objects.values())
        time.sleep(0.1)
    _, token = make_pool()
    _agent_opener(token)(replica, 1).close()


class Cuttable:
    """A TCP forwarder to the suite's PostgreSQL that can be cut: every connection through it is
    dropped and new ones are refused, as when the database's host goes away."""

    def __init__(self, target: str | tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.open: list[socket.socket] = []
        self.cut_off = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut_off:
                client.close()
                continue
            # A Unix socket path (the embedded server) or a host and port (an external server).
            upstream = socket.socket(socket.AF_UNIX if isinstance(self.target, str) else socket.AF_INET)
            upstream.connect(self.target)
            self.open += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.cut_off = True
        for sock in self.open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.fixture
def cuttable_db() -> Iterator[tuple[Cuttable, str]]:
    s = connection.settings_dict
    host, port = s["HOST"] or "/tmp", int(s["PORT"] or 5432)
    target: str | tuple[str, int] = "%s/.s.PGSQL.%d" % (host, port) if host.startswith("/") else (host, port)
    forwarder = Cuttable(target)
    auth = s["USER"] + (":" + s["PASSWORD"] if s.get("PASSWORD") else "")
    yield forwarder, "postgresql://%s@127.0.0.1:%d/%s" % (auth, forwarder.port, s["NAME"])
    forwarder.close()


def test_with_the_database_unreachable_a_connect_is_refused_with_4503(
    processes: ProcessGroup, cuttable_db: tuple[Cuttable, str]
) -> None:
    forwarder, url = cuttable_db
    _, token = make_pool()
    replica = processes.daphne("web-a", env={**CAPS_ENV, "DATABASE_URL": url, "DB_CONN_MAX_AGE": "0"})
    open_agent = _agent_opener(token)
    first = open_agent(replica, 1)
    forwarder.cut()
    # The agent socket (source cap, before the token is looked up) and an anonymous hub socket.
    assert _refused_with(lambda: open_agent(replica, 2)) == 4503

    def anonymous() -> ClientConnection:
        ws = connect(
            replica.ws_url + "/ws/tasks/1/logs/", origin=Origin(replica.url), proxy=None, open_timeout=10, legacy=True
        )
        ws.recv(timeout=10)
        return ws

    assert _refused_with(anonymous) == 4503
    with contextlib.suppress(ConnectionClosed):
        first.close()
    assert replica.alive()
    log = replica.log()
    assert "hub socket refused: database unavailable (OperationalError)" in log
    # No connect path raised (frames handled while the database went away may log theirs).
    assert not re.search(r'consumers\.py", line \d+, in (websocket_connect|connect|_connect)\b', log), log


def test_with_the_database_unreachable_a_logged_in_hub_socket_is_refused_with_4503(
    processes: ProcessGroup, cuttable_db: tuple[Cuttable, str]
) -> None:
    """The session and user lookups run before the consumer (channels' AuthMiddleware): a database
    gone at that moment is a 4503 too, not an HTTP 500 of the handshake."""
    forwarder, url = cuttable_db
    user = User.objects.create_user("caps-db-down")
    pool, _ = make_pool()
    workspace = make_workspace(pool, "caps-db-down")
    grant(workspace, "read", user=user)
    task = Task.objects.create(workspace=workspace, type="plan", status="succeeded")
    login = Login.of(user)
    replica = processes.daphne("web-a", env={**CAPS_ENV, "DATABASE_URL": url, "DB_CONN_MAX_AGE": "0"})
    _hub_opener(login, task)(replica, 1).close()  # admitted while the database answers
    forwarder.cut()
    assert _refused_with(lambda: _hub_opener(login, task)(replica, 2)) == 4503
    assert replica.alive()
    assert "Traceback" not in replica.log(), replica.log()

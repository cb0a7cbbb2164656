"""A body above HTTP_MAX_BODY_BYTES is refused by a real daphne replica while it arrives: the
replica's memory does not grow with the body (it grew by the whole body before: 249 -> 843 MB for
a 600 MB POST), whether the body declares its length or comes chunked."""

from __future__ import annotations

import socket

import psutil
import pytest

from harness.processes import ProcessGroup

pytestmark = pytest.mark.slow

LIMIT = 1024 * 1024
SENT = 300 * 1024 * 1024
CHUNK = b"x" * (256 * 1024)


def post(port: int, *, chunked: bool) -> bytes:
    """Send up to SENT bytes of body; return what the server answered (until it closed)."""
    head = "POST /api/v1/workspaces/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else "Content-Length: %d\r\n\r\n" % SENT
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode())
        try:
            for _ in range(SENT // len(CHUNK)):
                sock.sendall(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK) if chunked else CHUNK)
        except OSError:
            pass  # the server closed after its 413: it takes no more
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    return answer


@pytest.mark.parametrize("chunked", [False, True])
def test_a_huge_body_is_refused_before_it_is_buffered(processes: ProcessGroup, chunked: bool) -> None:
    web = processes.daphne("web-body", env={"HTTP_MAX_BODY_BYTES": str(LIMIT)})
    replica = psutil.Process(web.pid)
    before = replica.memory_info().rss
    answer = post(web.port or 0, chunked=chunked)
    grown = replica.memory_info().rss - before
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"request_too_large"' in answer
    assert grown < 50 * 1024 * 1024, "RSS grew by %d MB for a %d MB body" % (grown >> 20, SENT >> 20)
    # The replica still serves everyone else.
    with socket.create_connection(("127.0.0.1", web.port or 0), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")

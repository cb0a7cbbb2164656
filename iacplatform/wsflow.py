"""WebSocket flow control: a client is slowed by TCP instead of being read and dropped.

Measured (py-spy on a replica under bench_isolation's heartbeat flood): 95% of the event loop
was autobahn parsing frames (``Connection.doRead`` -> ``processData``), and the consumers hardly
ran: daphne reads whatever the socket holds and puts every frame on an unbounded
``asyncio.Queue`` per connection, so a client that sends faster than its consumer handles frames
costs the replica memory without bound and every other client its event loop.

Two layers, both installed in daphne's process by :func:`install` (iacplatform/asgi.py):

- **Bounded queue** (every WebSocket): when a connection's application queue holds
  ``WS_QUEUE_FRAMES`` frames, daphne stops parsing that connection's buffered bytes and stops
  reading its socket (``transport.pauseProducing()``); when the consumer has taken the queue down
  to half, parsing and reading resume. The client's sends then block in TCP flow control: a
  flooder costs what its consumer chooses to handle, nothing more.
- **Pacing** (:class:`Pacer`, used by the consumers with their token bucket): a frame over the
  bucket's rate waits for its token instead of being refused; while it waits, the queue fills and
  the first layer stops the socket. A client kept over the rate for ``WS_THROTTLE_GRACE_SECONDS``
  (or one whose next token is further away than that) is abusive: the consumer sends its error
  frame and closes with 4429. When daphne closes a connection whose reading is stopped, it does
  not read the backlog to find the client's close reply: reading stays stopped until autobahn's
  close handshake timeout (1 s) drops the TCP connection.

Guarantees: at most ``WS_QUEUE_FRAMES`` frames, plus what one socket read holds (64 KiB of
frames, up to ``--websocket-max-message-size`` when a message spans reads), are held per
connection whatever the client sends; a connection's frames keep their order and none is
dropped by flow control (only after the application closed). Does NOT: bound the socket's own
kernel buffers (the kernel does), slow a client of plain HTTP (REST throttling does that), or
notice a client that disconnects while its reading is stopped before the consumer drains its
queue (daphne's ping timeout ends such a connection).
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from channels.consumer import get_handler_name
from django.conf import settings

from iacplatform.sockets import TokenBucket


class Pacer:
    """Admits a connection's frames at its token bucket's rate, waiting instead of refusing.

    ``admit`` returns True once the frame may be handled (after waiting for its token if it had
    to), False when the client is abusive: continuously over the rate for longer than ``grace``
    seconds, or so far over it that its next token is further away than ``grace``.
    """

    def __init__(
        self,
        bucket: TokenBucket,
        *,
        grace: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.bucket = bucket
        self.grace = grace
        self.clock = clock
        self.sleep = sleep
        self.throttled_since: float | None = None

    async def admit(self) -> bool:
        bucket = self.bucket
        if bucket.take():
            if bucket.tokens >= 1:
                self.throttled_since = None  # tokens to spare: the client is within its rate
            return True
        now = self.clock()
        if self.throttled_since is None:
            self.throttled_since = now
        wait = (1 - bucket.tokens) / bucket.rate if bucket.rate > 0 else math.inf
        if now + wait - self.throttled_since > self.grace:
            return False
        while True:
            await self.sleep(wait)
            if bucket.take():
                return True
            wait = max((1 - bucket.tokens) / bucket.rate, 0.001)


class LeanDispatch:
    """A consumer's ``dispatch`` without channels' per-message hop to the sync thread.

    channels (4.2+) runs ``close_old_connections`` through ``sync_to_async`` before every
    message: on the one thread-sensitive thread that every consumer's ``database_sync_to_async``
    call also queues on, so each frame of every client (a heartbeat answered from memory, an
    unknown frame answered with an error) waited behind every other client's database calls,
    and a flood of frames delayed everyone's. The consumers here touch the database only through
    ``database_sync_to_async``, which closes old connections itself before and after each call,
    so the hop served nothing. Must come before the channels consumer class in the bases.
    """

    async def dispatch(self, message: dict[str, Any]) -> None:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError("No handler for message type %s" % message["type"])
        await handler(message)


def install() -> None:
    """Teach daphne's WebSocket protocol to bound its application queue (see the module doc)."""
    from autobahn.websocket.protocol import WebSocketProtocol as Autobahn
    from daphne.ws_protocol import WebSocketProtocol

    if getattr(WebSocketProtocol, "flow_control_installed", False):
        return
    open_states = (Autobahn.STATE_OPEN, Autobahn.STATE_CLOSING)
    consume_data = WebSocketProtocol.consumeData
    on_message = WebSocketProtocol.onMessage
    create_worked = WebSocketProtocol.applicationCreateWorked
    server_close = WebSocketProtocol.serverClose

    def applicationCreateWorked(protocol: Any, application_queue: asyncio.Queue) -> None:
        protocol.flow_held = False
        protocol.flow_closed = False
        protocol.flow_bytes = 0
        protocol.flow_sizes = collections.deque()  # the payload size of each queued frame, in order
        low_frames, low_bytes = settings.WS_QUEUE_FRAMES // 2, settings.WS_QUEUE_BYTES // 2
        get_nowait = application_queue.get_nowait

        def get_and_release() -> Any:
            # asyncio.Queue.get() ends in self.get_nowait(): every frame the consumer takes
            # passes here, so the queue's owner learns when it has drained.
            item = get_nowait()
            if item.get("type") == "websocket.receive" and protocol.flow_sizes:
                protocol.flow_bytes -= protocol.flow_sizes.popleft()
            if protocol.flow_held and application_queue.qsize() <= low_frames and protocol.flow_bytes <= low_bytes:
                asyncio.get_running_loop().call_soon(release, protocol)
            return item

        application_queue.get_nowait = get_and_release  # type: ignore[method-assign]
        create_worked(protocol, application_queue)

    def release(protocol: Any) -> None:
        if not protocol.flow_held or protocol.flow_closed or protocol.state == Autobahn.STATE_CLOSED:
            return
        protocol.flow_held = False
        consumeData(protocol)  # the frames already read come first
        if not protocol.flow_held and protocol.transport is not None:
            protocol.transport.resumeProducing()

    def onMessage(protocol: Any, payload: bytes, isBinary: bool) -> None:
        queue = getattr(protocol, "application_queue", None)
        before = queue.qsize() if queue is not None else 0
        on_message(protocol, payload, isBinary)
        if queue is None or queue.qsize() == before:
            return  # muted: daphne dropped it
        protocol.flow_bytes += len(payload)
        protocol.flow_sizes.append(len(payload))
        full = queue.qsize() >= settings.WS_QUEUE_FRAMES or protocol.flow_bytes >= settings.WS_QUEUE_BYTES
        if full and not protocol.flow_held:
            protocol.flow_held = True
            protocol.transport.pauseProducing()

    def consumeData(protocol: Any) -> None:
        if protocol.state not in open_states:
            consume_data(protocol)
            return
        # autobahn's loop, stopped as soon as a frame filled the queue: the rest stays in
        # protocol.data, unparsed, until the consumer catches up.
        while (
            not getattr(protocol, "flow_held", False)
            and protocol.processData()
            and protocol.state != Autobahn.STATE_CLOSED
        ):
            pass

    def serverClose(protocol: Any, code: int | None = None) -> None:
        server_close(protocol, code)
        if getattr(protocol, "flow_held", False):
            # The client is flooding: its close reply is behind everything it sent. Reading stays
            # stopped, and autobahn's close handshake timeout (1 s) drops the connection. Not at
            # once: closing a socket with unread input sends a RST, which would discard the close
            # frame (and the error before it) still in flight to the client.
            protocol.flow_closed = True

    WebSocketProtocol.applicationCreateWorked = applicationCreateWorked
    WebSocketProtocol.onMessage = onMessage
    WebSocketProtocol.consumeData = consumeData
    WebSocketProtocol.serverClose = serverClose
    WebSocketProtocol.flow_control_installed = True

"""The agent C&C WebSocket (``ws/agents/``): translates frames into actions (docs/protocol.md).

Guarantees: a connection without a valid pool token or agent credential is refused before the
handshake completes; a hello the actions refuse for its credential closes the connection (4401)
having changed nothing;
every frame is size-checked, then validated (protocol.py), then handled by one action that commits
or changes nothing; a bad frame gets an ``error`` frame (or close 1009 when oversized) and the
connection keeps serving. Does NOT: hold business logic (the actions do), or trust a group message
(a dispatch carries only the task id; the payload is loaded from the database here).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from datetime import datetime
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db.utils import Error as DatabaseError

from apps.agents import actions
from apps.agents.protocol import (
    CLOSE_CONFLICT,
    CLOSE_FRAME_TOO_BIG,
    CLOSE_HELLO_TIMEOUT,
    CLOSE_PROTOCOL,
    CLOSE_UNAUTHORIZED,
    PROTOCOL_VERSION,
    Code,
    ProtocolError,
    agent_group,
    parse_frame,
)
from apps.sockets.models import OpenSocket
from apps.workspaces import actions as queue
from apps.workspaces import reports
from iacplatform import sockets
from iacplatform.sockets import CLOSE_RATE_LIMITED, CLOSE_UNAVAILABLE, TokenBucket, client_address
from iacplatform.wsflow import LeanDispatch, Pacer

logger = logging.getLogger(__name__)

# Seconds within which a repeated heartbeat (same draining flag) is answered without a write.
HEARTBEAT_COALESCE = 1.0

UNAUTHORIZED_CODES = (Code.CREDENTIAL_REQUIRED, Code.CREDENTIAL_MISMATCH, Code.REVOKED)


def bearer_token(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            try:
                text = value.decode("ascii")
            except UnicodeDecodeError:
                return None
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _kick_pool(pool_id: int) -> None:
    for workspace_id in queue.workspaces_to_kick(pool_id=pool_id, limit=100):
        queue.schedule_workspace(workspace_id)


class AgentConsumer(LeanDispatch, AsyncWebsocketConsumer):
    identity: actions.Identity | None = None
    conn: actions.Connection | None = None
    group: str | None = None
    hello_timer: asyncio.TimerHandle | None = None
    cap_socket: uuid.UUID | None = None
    bucket: TokenBucket | None = None
    pacer: Pacer | None = None
    cut_off = False
    last_heartbeat = -HEARTBEAT_COALESCE
    last_draining: bool | None = None

    async def connect(self) -> None:
        address = client_address(self.scope)
        if not sockets.connect_rate.allow(
            address, rate=settings.WS_CONNECT_RATE_PER_SOURCE, burst=settings.WS_CONNECT_BURST_PER_SOURCE
        ):
            await self.close(code=CLOSE_RATE_LIMITED)
            return
        try:
            await self._connect(address)
        except DatabaseError as exc:
            # Nothing is admitted uncounted: the client is told to come back (it reconnects with
            # backoff), and the error's text (hosts, users) stays in the log.
            logger.warning("agent socket refused: database unavailable (%s)", type(exc).__name__)
            await self.refuse(CLOSE_UNAVAILABLE)

    async def _connect(self, address: str) -> None:
        acquire = database_sync_to_async(sockets.caps.acquire)
        self.cap_socket = uuid.uuid4()
        # Before the token is even looked up: a source opening sockets in a loop costs one
        # indexed count, not a token lookup as well.
        source = {"source:%s" % address: settings.WS_MAX_CONNECTIONS_PER_SOURCE}
        if await acquire(self.cap_socket, source, kind=OpenSocket.Kind.AGENT) is not None:
            await self.refuse(CLOSE_RATE_LIMITED)
            return
        token = bearer_token(self.scope)
        identity = await database_sync_to_async(actions.authenticate)(token) if token else None
        if identity is None:
            # Closing before accept makes daphne answer the handshake with HTTP 403.
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        pool = {"pool:%d" % identity.pool.pk: settings.WS_MAX_CONNECTIONS_PER_POOL}
        if await acquire(self.cap_socket, pool, kind=OpenSocket.Kind.AGENT) is not None:
            await self.refuse(CLOSE_RATE_LIMITED)
            return
        self.identity = identity
        self.bucket = TokenBucket(rate=settings.AGENT_FRAME_RATE, burst=settings.AGENT_FRAME_BURST)
        await self.accept()
        loop = asyncio.get_running_loop()
        self.hello_timer = loop.call_later(
            settings.AGENT_HELLO_TIMEOUT, lambda: loop.create_task(self._hello_timeout())
        )

    async def refuse(self, code: int) -> None:
        # Accepted first, so that the code reaches the client (a refused handshake is a bare 403).
        await self.accept()
        await self.close(code=code)

    async def _hello_timeout(self) -> None:
        if self.conn is None:
            await self.close(code=CLOSE_HELLO_TIMEOUT)

    async def disconnect(self, code: int) -> None:
        if self.cap_socket is not None:
            await database_sync_to_async(sockets.caps.release)(self.cap_socket)
            self.cap_socket = None
        if self.hello_timer is not None:
            self.hello_timer.cancel()
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)
        if self.conn is not None:
            await database_sync_to_async(actions.do_disconnect)(conn=self.conn, pod=settings.POD_NAME)

    async def _pace(self, bucket: TokenBucket) -> bool:
        # Over the rate, a frame waits for its token (daphne stops reading the socket meanwhile,
        # iacplatform/wsflow.py); only a client kept over it for the grace period is cut off.
        if self.pacer is None:
            self.pacer = Pacer(bucket, grace=settings.WS_THROTTLE_GRACE_SECONDS)
        return await self.pacer.admit()

    async def send_frame(self, frame: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(frame))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.cut_off:
            return  # frames the flooder sent before the close took effect: dropped unread
        if self.bucket is not None and not await self._pace(self.bucket):
            self.cut_off = True
            await self.send_frame(
                ProtocolError(Code.RATE_LIMITED, "more than %g frames per second" % settings.AGENT_FRAME_RATE).frame()
            )
            await self.close(code=CLOSE_RATE_LIMITED)
            return
        if text_data is None:
            await self.send_frame(ProtocolError(Code.BINARY_NOT_SUPPORTED, "frames are JSON text").frame())
            return
        limit = settings.AGENT_MAX_FRAME_BYTES
        if len(text_data) > limit or len(text_data.encode("utf-8", "surrogatepass")) > limit:
            await self.send_frame(ProtocolError(Code.FRAME_TOO_BIG, "frames are limited to %d bytes" % limit).frame())
            await self.close(code=CLOSE_FRAME_TOO_BIG)
            return
        kind: str | None = None
        task_id: int | None = None
        attempt: int | None = None
        try:
            frame = parse_frame(text_data)
            kind, task_id, attempt = frame["type"], frame.get("task_id"), frame.get("attempt")
            await self.handle(frame)
        except ProtocolError as exc:
            await self.send_frame(exc.frame(ref=kind, task_id=task_id, attempt=attempt))
            if exc.code in (Code.UNSUPPORTED_VERSION, Code.AGENT_CONFLICT):
                await self.close(code=CLOSE_PROTOCOL)
            elif exc.code in UNAUTHORIZED_CODES:
                await self.close(code=CLOSE_UNAUTHORIZED)
        except Exception:
            # Each action is one transaction, so a failure here left nothing half-written.
            logger.exception("agent frame %s failed", kind)
            await self.send_frame(
                ProtocolError(Code.INTERNAL, "the server could not handle this frame").frame(ref=kind)
            )

    async def handle(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "hello":
            await self.on_hello(frame)
            return
        if self.conn is None:
            raise ProtocolError(Code.HELLO_REQUIRED, "send hello first")
        conn = self.conn
        if kind == "heartbeat":
            draining = frame.get("draining", False)
            now = time.monotonic()
            if draining == self.last_draining and now - self.last_heartbeat < HEARTBEAT_COALESCE:
                # Agents beat every AGENT_HEARTBEAT_INTERVAL seconds; beats closer together than
                # this carry nothing new, and a flood of them must not cost a write each.
                return
            self.last_heartbeat, self.last_draining = now, draining
            if not await database_sync_to_async(actions.do_heartbeat)(
                conn=conn, pod=settings.POD_NAME, draining=draining
            ):
                raise ProtocolError(
                    Code.REVOKED, "agent %s was deleted or its credential revoked" % conn.agent.agent_id
                )
        elif kind == "task.accept":
            won = await database_sync_to_async(reports.accept_task)(
                agent=conn.agent, task_id=frame["task_id"], attempt=frame["attempt"]
            )
            if won:
                await self.send_frame({"type": "task.accepted", "task_id": frame["task_id"]})
            else:
                await self.send_frame({"type": "task.drop", "task_id": frame["task_id"], "reason": "not yours"})
        elif kind == "task.reject":
            if not await database_sync_to_async(reports.reject_task)(
                agent=conn.agent, task_id=frame["task_id"], attempt=frame["attempt"]
            ):
                raise ProtocolError(Code.NOT_OWNED, "task %d is not dispatched to you" % frame["task_id"])
        elif kind == "task.log":
            outcome = await database_sync_to_async(reports.append_log)(
                agent=conn.agent,
                task_id=frame["task_id"],
                attempt=frame["attempt"],
                seq=frame["seq"],
                text=frame["text"],
            )
            if outcome is reports.Outcome.NOT_OWNED:
                raise ProtocolError(Code.NOT_OWNED, "task %d is not running on you" % frame["task_id"])
        elif kind == "task.result":
            outcome = await database_sync_to_async(reports.record_result)(
                agent=conn.agent, task_id=frame["task_id"], attempt=frame["attempt"], report=frame
            )
            if outcome is reports.Outcome.NOT_OWNED:
                raise ProtocolError(Code.NOT_OWNED, "task %d is not running on you" % frame["task_id"])
            await self.send_frame({"type": "task.ack", "task_id": frame["task_id"]})

    async def on_hello(self, frame: dict[str, Any]) -> None:
        if self.conn is not None:
            raise ProtocolError(Code.ALREADY_HELLO, "hello was already sent on this connection")
        if frame["protocol"] != PROTOCOL_VERSION:
            raise ProtocolError(
                Code.UNSUPPORTED_VERSION,
                "protocol %d is not supported (server speaks %d)" % (frame["protocol"], PROTOCOL_VERSION),
            )
        assert self.identity is not None
        conn = await database_sync_to_async(actions.do_hello)(
            identity=self.identity, frame=frame, pod=settings.POD_NAME
        )
        self.conn = conn
        self.group = agent_group(conn.agent.agent_id)
        # One agent id, one live connection: older ones (a half-open socket, or a copy of the
        # credential elsewhere) are told to go, before this one joins the group and hears it too.
        await self.channel_layer.group_send(
            self.group, {"type": "agent.superseded", "connected_at": conn.connected_at.isoformat()}
        )
        await self.channel_layer.group_add(self.group, self.channel_name)
        welcome: dict[str, Any] = {
            "type": "welcome",
            "protocol": PROTOCOL_VERSION,
            "agent_id": conn.agent.agent_id,
            "pod": settings.POD_NAME,
            "heartbeat_interval": settings.AGENT_HEARTBEAT_INTERVAL,
            "max_frame_bytes": settings.AGENT_MAX_FRAME_BYTES,
        }
        if conn.new_credential is not None:
            welcome["credential"] = conn.new_credential  # the only time it crosses the wire
        await self.send_frame(welcome)
        # Dispatches sent while the agent was reconnecting may be lost: send them again, then
        # offer the pool's queued work to the new capacity.
        for task_id in await database_sync_to_async(actions.dispatched_to)(conn.agent):
            await self.task_dispatch({"type": "task.dispatch", "task_id": task_id})
        await database_sync_to_async(_kick_pool)(self.identity.pool.pk)

    # Group messages (sent by any replica to agent.<agent_id>).

    async def task_dispatch(self, message: dict[str, Any]) -> None:
        if self.conn is None:
            return
        payload = await database_sync_to_async(reports.dispatch_payload)(
            agent_pk=self.conn.agent.pk, task_id=int(message["task_id"])
        )
        if payload is not None:
            await self.send_frame(payload)

    async def agent_revoked(self, message: dict[str, Any]) -> None:
        # Checked against the database: the message may arrive after the agent registered again.
        if self.conn is None or await database_sync_to_async(actions.still_valid)(self.conn):
            return
        await self.send_frame(ProtocolError(Code.REVOKED, "agent %s was revoked" % self.conn.agent.agent_id).frame())
        await self.close(code=CLOSE_UNAUTHORIZED)

    async def agent_superseded(self, message: dict[str, Any]) -> None:
        if self.conn is None:
            return
        try:
            newer = datetime.fromisoformat(str(message["connected_at"]))
        except (KeyError, ValueError):
            return
        if newer > self.conn.connected_at:
            await self.send_frame(
                ProtocolError(Code.SUPERSEDED, "agent %s connected again elsewhere" % self.conn.agent.agent_id).frame()
            )
            await self.close(code=CLOSE_CONFLICT)

    async def task_cancel(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            await self.send_frame({"type": "task.cancel", "task_id": int(message["task_id"])})

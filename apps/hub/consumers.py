"""WebSocket consumers of the UI hub: an editing session's events, and a task's live log.

Close codes (the socket is accepted first so that the code reaches the client; a handshake refusal
would arrive as a bare HTTP 403): 4400 bad request, 4403 not logged in or the role is too low,
4404 no such task or session (or one the user may not see: the same answer, as REST's 404),
4410 the editing session has ended, 4429 a connection cap (counted across replicas) or the connect
rate, 4503 the database was unreachable at connect (try again later). Who may connect is
apps/hub/permissions.py's socket_refusal. docs/hub.md describes the frames.

Guarantees of the log stream: a client that asks from seq N receives every stored chunk with
seq >= N, then the live ones, each seq once and in increasing order, with no gap between what was
stored and what is live. It joins ``task.<id>`` *before* reading the database, and Channels
dispatches one message at a time per consumer, so chunks published while the stored ones are
read wait in the consumer's channel (the buffer) and are then skipped when already sent. A live
chunk whose seq is beyond the next expected one (a message was lost, or the layer dropped one)
makes it re-read the database from the next expected seq. Does NOT: deliver a chunk that was never
committed, or order chunks committed out of seq order by concurrent writers (the agent writes a
task's chunks in order, one connection per task).
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from typing import Any
from urllib.parse import parse_qs
from uuid import UUID

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.db.utils import Error as DatabaseError

from apps.agents.protocol import task_group
from apps.hub import actions
from apps.hub.events import session_group
from apps.hub.models import EditingSession
from apps.hub.permissions import CLOSE_FORBIDDEN, CLOSE_NOT_FOUND, EDIT, VIEW_LOGS, socket_refusal
from apps.sockets.models import OpenSocket
from apps.workspaces.models import Task, TaskLogChunk
from iacplatform import inputs, sockets
from iacplatform.sockets import CLOSE_RATE_LIMITED, CLOSE_UNAVAILABLE, TokenBucket, client_address
from iacplatform.wsflow import LeanDispatch, Pacer

logger = logging.getLogger(__name__)

CLOSE_BAD_REQUEST = 4400
CLOSE_SESSION_ENDED = 4410
CLOSE_FRAME_TOO_BIG = 4009

LOG_BATCH = 1000
# Hub frames are flat objects; anything nested deeper is refused before it is parsed.
FRAME_MAX_DEPTH = 8
FROM_SEQ_RE = re.compile(r"^[0-9]{1,10}$")
MAX_SEQ = 2**31 - 1


class HubConsumer(LeanDispatch, AsyncJsonWebsocketConsumer):
    """Shared frame handling: malformed frames get an ``error`` frame, never a crash."""

    cap_socket: uuid.UUID | None = None
    accepted = False
    bucket: TokenBucket | None = None
    pacer: Pacer | None = None
    cut_off = False

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        address = client_address(self.scope)
        if not sockets.connect_rate.allow(
            address, rate=settings.WS_CONNECT_RATE_PER_SOURCE, burst=settings.WS_CONNECT_BURST_PER_SOURCE
        ):
            await self.refuse(CLOSE_RATE_LIMITED)
            return
        user = self.scope.get("user")
        keys = {"source:%s" % address: settings.WS_MAX_CONNECTIONS_PER_SOURCE}
        if user is not None and user.is_authenticated:
            keys["user:%d" % user.pk] = settings.WS_MAX_CONNECTIONS_PER_USER
        self.cap_socket = uuid.uuid4()
        try:
            acquire = database_sync_to_async(sockets.caps.acquire)
            if await acquire(self.cap_socket, keys, kind=OpenSocket.Kind.HUB) is not None:
                await self.refuse(CLOSE_RATE_LIMITED)
                return
            self.bucket = TokenBucket(rate=settings.HUB_FRAME_RATE, burst=settings.HUB_FRAME_BURST)
            await super().websocket_connect(message)
        except DatabaseError as exc:
            # Never admitted uncounted, never a 1011: the client is told to come back later, and
            # the error's text (hosts, users) stays in the log.
            logger.warning("hub socket refused: database unavailable (%s)", type(exc).__name__)
            await self.refuse(CLOSE_UNAVAILABLE)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        if self.cap_socket is not None:
            await database_sync_to_async(sockets.caps.release)(self.cap_socket)
            self.cap_socket = None
        await super().websocket_disconnect(message)

    async def accept(self, subprotocol: str | None = None, headers: Any = None) -> None:
        self.accepted = True
        await super().accept(subprotocol, headers)

    async def _pace(self, bucket: TokenBucket) -> bool:
        # Over the rate, a frame waits for its token (daphne stops reading the socket meanwhile,
        # iacplatform/wsflow.py); only a client kept over it for the grace period is cut off.
        if self.pacer is None:
            self.pacer = Pacer(bucket, grace=settings.WS_THROTTLE_GRACE_SECONDS)
        return await self.pacer.admit()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        if self.cut_off:
            return  # sent before the close took effect: dropped unread
        if self.bucket is not None and not await self._pace(self.bucket):
            self.cut_off = True
            await self.send_json({"type": "error", "error": "more than %g frames per second" % settings.HUB_FRAME_RATE})
            await self.close(code=CLOSE_RATE_LIMITED)
            return
        if text_data is not None and len(text_data) > settings.HUB_MAX_FRAME_BYTES:
            self.cut_off = True
            await self.send_json(
                {"type": "error", "error": "frames are limited to %d bytes" % settings.HUB_MAX_FRAME_BYTES}
            )
            await self.close(code=CLOSE_FRAME_TOO_BIG)
            return
        if text_data is None:
            await self.send_json({"type": "error", "error": "frames must be JSON text"})
            return
        try:
            content = inputs.decode_json(text_data, max_depth=FRAME_MAX_DEPTH)
        except inputs.Refused as exc:
            await self.send_json({"type": "error", "error": "frame is not valid JSON: %s" % exc})
            return
        if not isinstance(content, dict) or not isinstance(content.get("type"), str):
            await self.send_json({"type": "error", "error": "frame must be an object with a string 'type'"})
            return
        await self.receive_json(content)

    async def join(self, group: str) -> None:
        await self.channel_layer.group_add(group, self.channel_name)
        # The base class discards every group in self.groups on disconnect.
        self.groups.append(group)

    async def refuse(self, code: int) -> None:
        if not self.accepted:
            await self.accept()
        await self.close(code=code)


class SessionConsumer(HubConsumer):
    """``ws/sessions/<session_id>/``: the events of one editing session, for its owner only."""

    session_id: UUID

    async def connect(self) -> None:
        self.session_id = self.scope["url_route"]["kwargs"]["session_id"]
        session, refusal = await database_sync_to_async(self._owned_session)()
        if session is None or refusal is not None:
            await self.refuse(refusal or CLOSE_NOT_FOUND)
            return
        # Joined before the state is read: an event racing with the connect is received, maybe
        # after a state that already includes it (events are hints; the state is the truth).
        await self.join(session_group(self.session_id))
        await self.accept()
        if session.active:
            # A (re)connect is a sign of life, like a heartbeat.
            with contextlib.suppress(actions.HubError):
                await database_sync_to_async(actions.do_heartbeat)(user=self.scope["user"], session_id=self.session_id)
        state = await database_sync_to_async(self._state)()
        await self.send_json(state)
        if not state["active"]:
            await self._ended(state.get("ended_reason") or "")

    def _owned_session(self) -> tuple[EditingSession | None, int | None]:
        user = self.scope.get("user")
        session = None
        if user is not None and user.is_authenticated:
            session = EditingSession.objects.filter(session_id=self.session_id, user_id=user.pk).first()
        refusal = socket_refusal(user, workspace_id=session.workspace_id if session else None, role=EDIT)
        return session, refusal

    def _state(self) -> dict[str, Any]:
        session = EditingSession.objects.get(session_id=self.session_id)
        pending = list(
            session.takeover_requests.filter(status="pending").select_related("requester").order_by("created_at")
        )
        return {
            "type": "session.state",
            "session_id": str(session.session_id),
            "workspace_id": session.workspace_id,
            "resource_address": session.resource_address,
            "mode": session.mode,
            "active": session.active,
            "ended_reason": session.ended_reason,
            "pending_requests": [
                {
                    "request_id": r.pk,
                    "requester": {"id": r.requester_id, "username": r.requester.get_username()},
                    "message": r.message,
                    "expires_at": actions.request_expires_at(r).isoformat(),
                }
                for r in pending
            ],
        }

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if content["type"] != "heartbeat":
            await self.send_json({"type": "error", "error": "unknown frame type %r" % content["type"][:50]})
            return
        try:
            session = await database_sync_to_async(actions.do_heartbeat)(
                user=self.scope["user"], session_id=self.session_id
            )
        except actions.NotFound:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        except actions.NotAllowed:
            # The user lost the write role since connecting.
            await self.close(code=CLOSE_FORBIDDEN)
            return
        except actions.Conflict:
            state = await database_sync_to_async(self._state)()
            await self._ended(state["ended_reason"])
            return
        # Layers expire group memberships (group_expiry, a day by default); a session tab may stay
        # open longer, so each heartbeat renews the membership.
        await self.channel_layer.group_add(session_group(self.session_id), self.channel_name)
        await self.send_json({"type": "heartbeat.ack", "last_seen_at": session.last_seen_at.isoformat()})

    async def _ended(self, reason: str) -> None:
        await self.send_json({"type": "session.ended", "session_id": str(self.session_id), "reason": reason})
        await self.close(code=CLOSE_SESSION_ENDED)

    async def hub_event(self, message: dict[str, Any]) -> None:
        event = message["event"]
        await self.send_json(event)
        if event.get("type") == "session.ended":
            await self.close(code=CLOSE_SESSION_ENDED)


class TaskLogConsumer(HubConsumer):
    """``ws/tasks/<task_id>/logs/?from_seq=N``: the stored log from N, then the live chunks."""

    task_id: int
    next_seq: int

    async def connect(self) -> None:
        self.task_id = self.scope["url_route"]["kwargs"]["task_id"]
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        raw = query.get("from_seq", ["0"])[-1]
        # ASCII digits only ("²".isdigit() is true, and int() refuses it), within the seq range.
        if not FROM_SEQ_RE.match(raw) or int(raw) > MAX_SEQ:
            await self.refuse(CLOSE_BAD_REQUEST)
            return
        self.next_seq = int(raw)
        refusal = await database_sync_to_async(self._refusal)()
        if refusal is not None:
            await self.refuse(refusal)
            return
        await self.join(task_group(self.task_id))
        await self.accept()
        # The status is read before the log, so it is never newer than the chunks sent with it.
        status = await database_sync_to_async(self._status)()
        await self._send_stored()
        # Read after the stored chunks (the marker commits with the first chunks deleted): a log
        # deleted by retention is said to be, not sent as an empty or shortened one.
        pruned = await database_sync_to_async(self._pruned)()
        if pruned is not None:
            await self.send_json({"type": "task.log.pruned", "task_id": self.task_id, **pruned})
        await self.send_json({"type": "task.status", "task_id": self.task_id, "status": status})

    def _refusal(self) -> int | None:
        # The same rule as GET /api/v1/tasks/<id>/log/: read on the task's workspace; a task the
        # user may not see and one that does not exist get the same code.
        workspace_id = Task.objects.filter(pk=self.task_id).values_list("workspace_id", flat=True).first()
        return socket_refusal(self.scope.get("user"), workspace_id=workspace_id, role=VIEW_LOGS)

    def _status(self) -> str:
        return Task.objects.filter(pk=self.task_id).values_list("status", flat=True).get()

    def _pruned(self) -> dict[str, Any] | None:
        row = (
            Task.objects.filter(pk=self.task_id, log_pruned_at__isnull=False)
            .values_list("log_pruned_at", "log_pruned_chunks", "log_pruned_bytes")
            .first()
        )
        if row is None or row[0] is None:
            return None
        return {"pruned_at": row[0].isoformat(), "chunks": row[1], "bytes": row[2]}

    def _stored(self, from_seq: int) -> list[tuple[int, str]]:
        return list(
            TaskLogChunk.objects.filter(task_id=self.task_id, seq__gte=from_seq, task__log_pruned_at__isnull=True)
            .order_by("seq")
            .values_list("seq", "text")[:LOG_BATCH]
        )

    async def _send_stored(self) -> None:
        while True:
            batch = await database_sync_to_async(self._stored)(self.next_seq)
            for seq, text in batch:
                await self._send_chunk(seq, text)
            if len(batch) < LOG_BATCH:
                return

    async def _send_chunk(self, seq: int, text: str) -> None:
        await self.send_json({"type": "task.log", "task_id": self.task_id, "seq": seq, "text": text})
        self.next_seq = seq + 1

    async def task_log(self, message: dict[str, Any]) -> None:
        seq = message.get("seq")
        if not isinstance(seq, int) or seq < self.next_seq:
            return  # already sent (read from the database before this message was dispatched)
        if seq == self.next_seq and isinstance(message.get("text"), str):
            await self._send_chunk(seq, message["text"])
            return
        # A gap (a lost message) or a chunk sent without its text: the database has it, committed
        # before it was announced.
        await self._send_stored()

    async def task_status(self, message: dict[str, Any]) -> None:
        # Chunks are announced before the status change that follows them; if the layer dropped
        # the last of them, no later chunk would reveal the gap, so catch up before reporting.
        await self._send_stored()
        await self.send_json({"type": "task.status", "task_id": self.task_id, "status": message.get("status")})

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        await self.send_json({"type": "error", "error": "this socket only sends; unknown frame %r" % content["type"]})

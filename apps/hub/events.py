"""Events for UI editing sessions and how they reach the socket, on whichever replica it is.

Every event is a JSON object with a ``type`` (docs/hub.md lists them); it is sent as
``{"type": "hub.event", "event": {...}}`` to the group ``session.<session_id>``, which the
session's socket joined on its replica.

Guarantees: an event is sent only after the transaction that caused it committed (callers use
:func:`notify_on_commit`), and a failing channel layer never fails that transaction.
Does NOT guarantee delivery: the channel layer is at-most-once, so clients treat events as hints
and the database (the session's state, ``GET`` on a takeover request) as the truth.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

Event = dict[str, Any]


def session_group(session_id: UUID | str) -> str:
    return "session.%s" % session_id


def send_to_session(session_id: UUID | str, event: Event) -> None:
    layer = get_channel_layer()
    if layer is None:
        logger.warning("no channel layer configured; %s for session %s not sent", event["type"], session_id)
        return
    async_to_sync(layer.group_send)(session_group(session_id), {"type": "hub.event", "event": event})


def notify_on_commit(session_id: UUID | str, event: Event) -> None:
    """Send ``event`` to the session's group once the current transaction commits."""

    def send() -> None:
        try:
            send_to_session(session_id, event)
        except Exception:
            # A hint lost: the client sees the state on its next request or reconnect.
            logger.exception("sending %s to session %s failed", event["type"], session_id)

    transaction.on_commit(send)

"""The hub's background job: ``lock_draft_cleanup`` (every minute, on the leader only).

It ends editing sessions whose heartbeats stopped (HUB_SESSION_TIMEOUT), expires takeover
requests nobody answered (HUB_TAKEOVER_REQUEST_TIMEOUT) and deletes expired drafts, all inside the
tick's fenced transaction, so a leader that lost its term writes nothing. The affected sessions
are told after commit. Rows a user is changing at that moment are skipped (SKIP LOCKED) and picked
up by the next tick.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from apps.coordination.fencing import Tick
from apps.coordination.registry import job
from apps.hub.actions import do_expire_stale_sessions, do_expire_takeover_requests
from apps.hub.drafts import do_delete_expired_drafts

logger = logging.getLogger(__name__)


@job(name="lock_draft_cleanup", every=60)
def lock_draft_cleanup(tick: Tick) -> None:
    cleanup(tick, now=timezone.now())


def cleanup(tick: Tick, *, now: datetime) -> None:
    """One tick of lock_draft_cleanup as of ``now`` (tests pass the time)."""
    with tick.fenced():
        # Requests first: a request that is both unanswered and addressed to a stale session is
        # reported as unanswered, the more precise reason.
        requests = do_expire_takeover_requests(now=now, max_age=settings.HUB_TAKEOVER_REQUEST_TIMEOUT)
        sessions = do_expire_stale_sessions(now=now, max_age=settings.HUB_SESSION_TIMEOUT)
        drafts = do_delete_expired_drafts(now=now)
    if requests or sessions or drafts:
        logger.info(
            "lock_draft_cleanup (%s, epoch %d): expired %d sessions, %d takeover requests, %d drafts",
            tick.holder,
            tick.epoch,
            sessions,
            requests,
            drafts,
        )

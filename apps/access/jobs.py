"""``api_token_cleanup`` (hourly, on the leader): expired API tokens are deleted, so the token
table holds the live tokens only (authentication already refuses an expired one)."""

from __future__ import annotations

import logging

from django.utils import timezone

from apps.access.tokens import do_delete_expired_tokens
from apps.coordination.fencing import Tick
from apps.coordination.registry import job

logger = logging.getLogger(__name__)


@job(name="api_token_cleanup", every=3600)
def api_token_cleanup(tick: Tick) -> None:
    with tick.fenced():
        deleted = do_delete_expired_tokens(now=timezone.now())
    if deleted:
        logger.info("api_token_cleanup: deleted %d expired token(s)", deleted)

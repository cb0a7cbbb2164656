"""Background jobs of the agents app, run by the leader (apps/coordination/registry.py)."""

from __future__ import annotations

import logging

from django.conf import settings

from apps.agents.actions import cleanup_agents
from apps.coordination.fencing import Tick
from apps.coordination.registry import job
from apps.workspaces.jobs import kick_pending

logger = logging.getLogger(__name__)


@job(name="agent_cleanup", every=settings.JOB_AGENT_CLEANUP_EVERY)
def agent_cleanup(tick: Tick) -> None:
    """Agents silent past the threshold go offline; their running plans and drift checks are
    re-queued once, their running applies errored "agent lost"; long-offline agents are pruned."""
    with tick.fenced():
        offline, pruned = cleanup_agents()
    if offline or pruned:
        logger.info("agent_cleanup: %d agents offline, %d pruned", offline, pruned)
        kick_pending()

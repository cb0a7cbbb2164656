"""Background jobs of the agents app, run by the leader (apps/coordination/registry.py)."""

from __future__ import annotations

import logging

from django.conf import settings
from django.utils import timezone
from kubernetes.client import AppsV1Api

from apps.agents.actions import cleanup_agents
from apps.agents.autoscaler import ScaleError, autoscale
from apps.agents.models import AgentPool
from apps.coordination import kube
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
        kick_pending(stopping=tick.stopping)


@job(name="agent_autoscaler", every=settings.JOB_AGENT_AUTOSCALER_EVERY)
def agent_autoscaler(tick: Tick) -> None:
    """Scale each Kubernetes agent pool's Deployment to its queued + running work."""
    if not AgentPool.objects.filter(kind=AgentPool.Kind.KUBERNETES).exists():
        return
    try:
        client = kube.api_client()
    except kube.KubeConfigError as exc:
        logger.warning("agent_autoscaler: Kubernetes pools exist but %s", exc)
        return
    failures: list[str] = []
    try:
        with tick.fenced():
            decisions = autoscale(api=AppsV1Api(client), now=timezone.now(), failures=failures)
    finally:
        client.close()
    for decision in decisions:
        if decision.target is not None:
            logger.info("agent_autoscaler: %s", decision)
    if failures:
        # After the commit: the pools that could be scaled stay scaled; the tick is an error.
        raise ScaleError("; ".join(failures))

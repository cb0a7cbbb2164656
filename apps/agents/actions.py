"""An agent's connection lifecycle as the web replicas record it: auth, hello, heartbeat, disconnect.

Guarantees: a pool token is checked against its stored hash in constant time; an agent id belongs
to one pool (an agent of another pool cannot take it over); ``connected_pod`` names the replica
of the agent's newest connection: set on hello and on every heartbeat, and cleared on disconnect
only by a conditional update that still matches this pod and this connection, so the late
disconnect of an old socket never wipes an agent that already reconnected elsewhere.
Running tasks the agent no longer knows after a reconnect (its process restarted) are settled as
lost at once rather than after the offline threshold.
Does NOT: detect a silently dead agent (agent_cleanup in jobs.py does, from heartbeats).
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.agents.models import Agent, AgentPool, hash_token
from apps.agents.protocol import Code, ProtocolError
from apps.workspaces.actions import settle_lost_tasks
from apps.workspaces.models import Task

logger = logging.getLogger(__name__)


def authenticate_pool(raw_token: str) -> AgentPool | None:
    digest = hash_token(raw_token)
    pool = AgentPool.objects.filter(token_hash=digest).first()
    # The indexed lookup already matched; the constant-time comparison keeps the check honest if the
    # lookup ever becomes a prefix or case-insensitive match.
    if pool is None or not hmac.compare_digest(pool.token_hash, digest):
        return None
    return pool


@dataclass(frozen=True)
class Connection:
    agent: Agent
    connected_at: datetime


def do_hello(*, pool: AgentPool, frame: dict[str, Any], pod: str) -> Connection:
    now = timezone.now()
    draining = frame.get("draining", False)
    with transaction.atomic():
        agent = Agent.objects.select_for_update().filter(agent_id=frame["agent_id"]).first()
        if agent is not None and agent.pool_id != pool.pk:
            raise ProtocolError(Code.AGENT_CONFLICT, "agent id %s belongs to another pool" % frame["agent_id"])
        if agent is None:
            agent = Agent(agent_id=frame["agent_id"], pool=pool)
        agent.name = frame.get("name", agent.name)
        agent.version = frame.get("version", agent.version)
        agent.labels = frame.get("labels", agent.labels)
        agent.capacity = 0 if draining else frame["capacity"]
        agent.status = Agent.Status.ONLINE
        agent.connected_pod, agent.connected_at, agent.last_heartbeat = pod, now, now
        agent.save()
        known = {task_id for task_id, _ in frame.get("tasks", [])}
        forgotten = (
            Task.objects.filter(agent=agent, status=Task.Status.RUNNING).exclude(pk__in=known).select_for_update()
        )
        settle_lost_tasks(list(forgotten), reason="agent %s restarted and lost the task" % agent.agent_id)
    logger.info("agent %s (pool %s) connected to %s", agent.agent_id, pool.name, pod)
    return Connection(agent=agent, connected_at=now)


def do_heartbeat(*, conn: Connection, pod: str, draining: bool) -> None:
    updates: dict[str, Any] = {
        "last_heartbeat": timezone.now(),
        "connected_pod": pod,
        "status": Agent.Status.ONLINE,
    }
    if draining:
        updates["capacity"] = 0
    Agent.objects.filter(pk=conn.agent.pk).update(**updates)


def do_disconnect(*, conn: Connection, pod: str) -> bool:
    # Conditional: a newer connection (here or on another replica) has changed connected_at/pod.
    cleared = Agent.objects.filter(pk=conn.agent.pk, connected_pod=pod, connected_at=conn.connected_at).update(
        connected_pod=None, status=Agent.Status.OFFLINE
    )
    logger.info("agent %s disconnected from %s (cleared=%s)", conn.agent.agent_id, pod, bool(cleared))
    return cleared == 1


def dispatched_to(agent: Agent) -> list[int]:
    """Tasks dispatched to this agent but not accepted: their dispatch message may have been lost."""
    return list(Task.objects.filter(agent=agent, status=Task.Status.DISPATCHED).values_list("pk", flat=True))


def cleanup_agents() -> tuple[int, int]:
    """Agents silent past the offline threshold go offline and lose their tasks; long-offline ones
    are pruned. Returns (marked offline, pruned)."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.AGENT_OFFLINE_THRESHOLD)
    with transaction.atomic():
        silent = list(
            Agent.objects.filter(last_heartbeat__lt=cutoff)
            .exclude(status=Agent.Status.OFFLINE, connected_pod__isnull=True)
            .select_for_update(skip_locked=True)
        )
        for agent in silent:
            agent.status, agent.connected_pod = Agent.Status.OFFLINE, None
            agent.save(update_fields=["status", "connected_pod", "updated_at"])
        gone = Agent.objects.filter(status=Agent.Status.OFFLINE, last_heartbeat__lt=cutoff)
        tasks = list(Task.objects.filter(agent__in=gone, status__in=Task.ACTIVE).select_for_update(skip_locked=True))
        for task in tasks:
            logger.warning("task %d lost its agent %s", task.pk, task.agent_id)
        settle_lost_tasks(tasks, reason="agent lost")
        prune_cutoff = now - timedelta(seconds=settings.AGENT_PRUNE_AFTER)
        pruned, _ = (
            Agent.objects.filter(status=Agent.Status.OFFLINE, last_heartbeat__lt=prune_cutoff)
            .exclude(tasks__status__in=Task.ACTIVE)
            .delete()
        )
    return len(silent), pruned

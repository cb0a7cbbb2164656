"""An agent's connection lifecycle as the web replicas record it: auth, hello, heartbeat, disconnect.

Guarantees: a pool token or an agent credential is checked against its stored hash in constant
time; a pool token only registers agent ids that have no credential yet, and the hello that
registers one issues its credential; a hello for a registered agent id needs that agent's own
credential, and one without it is refused before anything is written (no task settled, no agent
touched, the agent's live connection untouched); an agent id belongs to one pool (an agent of
another pool cannot take it over); a revoked or deleted agent's connection ends at its next
heartbeat, or at once when revoked through :func:`revoke_agents`; ``connected_pod`` names the replica
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
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from apps.agents.models import Agent, AgentPool, hash_token
from apps.agents.protocol import Code, ProtocolError, agent_group
from apps.workspaces.actions import send_after_commit, settle_lost_tasks
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
class Identity:
    """Who opened a C&C connection: a pool (its token) or one agent of it (its credential)."""

    pool: AgentPool
    agent_pk: int | None = None
    credential_hash: str = ""


def authenticate(raw_token: str) -> Identity | None:
    digest = hash_token(raw_token)
    agent = Agent.objects.select_related("pool").filter(credential_hash=digest).exclude(credential_hash="").first()
    if agent is not None and hmac.compare_digest(agent.credential_hash, digest):
        return Identity(pool=agent.pool, agent_pk=agent.pk, credential_hash=digest)
    pool = authenticate_pool(raw_token)
    return Identity(pool=pool) if pool is not None else None


@dataclass(frozen=True)
class Connection:
    agent: Agent
    connected_at: datetime
    credential_hash: str
    # The credential issued by this hello (the agent registered); None on every later hello.
    new_credential: str | None = None


def _claim(identity: Identity, agent_id: str, agent: Agent | None) -> tuple[Agent, str | None]:
    """The agent this hello speaks for, and a new credential when it registers; refuses (raises)
    before any write."""
    if identity.agent_pk is not None:
        if agent is None or agent.pk != identity.agent_pk:
            raise ProtocolError(Code.CREDENTIAL_MISMATCH, "the credential is not agent %s's" % agent_id)
        if not hmac.compare_digest(agent.credential_hash, identity.credential_hash):
            raise ProtocolError(Code.REVOKED, "the credential of agent %s was revoked" % agent_id)
        return agent, None
    if agent is not None and agent.pool_id != identity.pool.pk:
        raise ProtocolError(Code.AGENT_CONFLICT, "agent id %s belongs to another pool" % agent_id)
    if agent is not None and agent.registered:
        raise ProtocolError(
            Code.CREDENTIAL_REQUIRED,
            "agent id %s is registered: connect with its credential (runagent --credential-file), "
            "or delete the agent to register it again" % agent_id,
        )
    agent = agent or Agent(agent_id=agent_id, pool=identity.pool)
    credential = agent.set_new_credential()
    agent.registered_at = timezone.now()
    return agent, credential


def do_hello(*, identity: Identity, frame: dict[str, Any], pod: str) -> Connection:
    now = timezone.now()
    draining = frame.get("draining", False)
    pool = identity.pool
    with transaction.atomic():
        agent = Agent.objects.select_for_update().filter(agent_id=frame["agent_id"]).first()
        agent, credential = _claim(identity, frame["agent_id"], agent)
        agent.name = frame.get("name", agent.name)
        agent.version = frame.get("version", agent.version)
        agent.labels = frame.get("labels", agent.labels)
        agent.capacity = 0 if draining else frame["capacity"]
        agent.status = Agent.Status.ONLINE
        agent.connected_pod, agent.connected_at, agent.last_heartbeat = pod, now, now
        try:
            with transaction.atomic():
                agent.save()
        except IntegrityError:
            # Another connection registered this new agent id first: it is that one's now.
            raise ProtocolError(Code.CREDENTIAL_REQUIRED, "agent id %s was just registered" % agent.agent_id) from None
        known = {task_id for task_id, _ in frame.get("tasks", [])}
        forgotten = (
            Task.objects.filter(agent=agent, status=Task.Status.RUNNING).exclude(pk__in=known).select_for_update()
        )
        settle_lost_tasks(list(forgotten), reason="agent %s restarted and lost the task" % agent.agent_id)
    if credential is not None:
        logger.info("agent %s registered in pool %s", agent.agent_id, pool.name)
    logger.info("agent %s (pool %s) connected to %s", agent.agent_id, pool.name, pod)
    return Connection(agent=agent, connected_at=now, credential_hash=agent.credential_hash, new_credential=credential)


def do_heartbeat(*, conn: Connection, pod: str, draining: bool) -> bool:
    """Record a heartbeat; False when the agent was deleted or its credential revoked meanwhile."""
    updates: dict[str, Any] = {
        "last_heartbeat": timezone.now(),
        "connected_pod": pod,
        "status": Agent.Status.ONLINE,
    }
    if draining:
        updates["capacity"] = 0
    return Agent.objects.filter(pk=conn.agent.pk, credential_hash=conn.credential_hash).update(**updates) == 1


def still_valid(conn: Connection) -> bool:
    """The agent still exists with the credential this connection was opened with."""
    return Agent.objects.filter(pk=conn.agent.pk, credential_hash=conn.credential_hash).exists()


def revoke_agents(agents: list[Agent]) -> int:
    """Revoke the agents' credentials and end their connections; each must register again with
    its pool's current token. Returns how many were revoked."""
    with transaction.atomic():
        count = Agent.objects.filter(pk__in=[a.pk for a in agents]).update(credential_hash="", registered_at=None)
        for agent in agents:
            send_after_commit(agent_group(agent.agent_id), {"type": "agent.revoked"})
    logger.info("revoked the credentials of %d agents", count)
    return count


class PoolRefused(Exception):
    """The pool cannot be created or rotated as asked; the message says why."""


def do_create_or_rotate_pool(
    *, name: str, capacity: int = 1, rotate: bool = False, revoke_agents_too: bool = False
) -> tuple[AgentPool, str, int]:
    """Create pool ``name`` or, with ``rotate``, give the existing one a new token (optionally
    revoking its agents' credentials too). Returns the pool, its raw token (the only time it is
    visible: only its hash is stored) and how many agents were revoked."""
    if revoke_agents_too and not rotate:
        raise PoolRefused("revoking the agents goes with rotating the token")
    if capacity < 1:
        raise PoolRefused("the capacity must be at least 1")
    with transaction.atomic():
        # The row lock serialises two rotations of one pool; a concurrent create of the same name
        # loses on the unique index instead.
        pool = AgentPool.objects.select_for_update().filter(name=name).first()
        if pool is not None and not rotate:
            raise PoolRefused("pool %r exists; rotate to give it a new token" % name)
        pool = pool or AgentPool(name=name, agent_capacity=capacity)
        token = pool.set_new_token()
        try:
            pool.full_clean(exclude=["token_hash"])
            with transaction.atomic():
                pool.save()
        except IntegrityError as exc:
            raise PoolRefused("cannot create pool %r: %s" % (name, exc)) from exc
        except ValidationError as exc:
            raise PoolRefused("invalid pool %r: %s" % (name, exc)) from exc
        revoked = revoke_agents(list(pool.agents.exclude(credential_hash=""))) if revoke_agents_too else 0
    return pool, token, revoked


def delete_agents(agents: list[Agent]) -> int:
    """Delete agents (their credentials with them) and end their connections."""
    with transaction.atomic():
        count, _ = Agent.objects.filter(pk__in=[a.pk for a in agents]).delete()
        for agent in agents:
            send_after_commit(agent_group(agent.agent_id), {"type": "agent.revoked"})
    return count


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
        tasks = list(Task.objects.active().filter(agent__in=gone).select_for_update(skip_locked=True))
        for task in tasks:
            logger.warning("task %d lost its agent %s", task.pk, task.agent_id)
        settle_lost_tasks(tasks, reason="agent lost")
        prune_cutoff = now - timedelta(seconds=settings.AGENT_PRUNE_AFTER)
        pruned, _ = (
            Agent.objects.filter(status=Agent.Status.OFFLINE, last_heartbeat__lt=prune_cutoff)
            .exclude(Exists(Task.objects.active().filter(agent=OuterRef("pk"))))
            .delete()
        )
    return len(silent), pruned

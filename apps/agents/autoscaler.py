"""Scaling Kubernetes agent pools to the queue: the ``agent_autoscaler`` job's logic.

For each pool of kind ``kubernetes``: desired = clamp(ceil((queued + running) / capacity), min,
max). Scaling up happens at once; scaling down only after the desire has stayed below the current
count for the pool's ``scale_down_delay_seconds`` (so a burst of short tasks does not make agents
flap). The Deployment's ``scale`` subresource is read and patched through ``AppsV1Api``, and
patched only when the count changes.

Guarantees: run inside ``tick.fenced()``, a deposed leader patches nothing (the fence is checked
before the patch, and a new term cannot begin until this transaction ends); one pool's API error
does not stop the others, but is reported to the caller (``failures``), so the job's tick is
recorded ``error`` with the server's explanation instead of ``ok``. Does NOT: scale pools of
kind ``static``, create Deployments, or wait for pods to become ready (an agent counts once it
connects).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Q
from kubernetes.client import AppsV1Api
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from apps.agents.models import AgentPool
from apps.coordination.kube import DEFAULT_REQUEST_TIMEOUT
from apps.workspaces.models import Task

logger = logging.getLogger(__name__)


def desired_replicas(*, queued: int, running: int, capacity: int, minimum: int, maximum: int) -> int:
    wanted = math.ceil((queued + running) / max(1, capacity))
    return max(minimum, min(maximum, wanted))


@dataclass(frozen=True)
class ScaleDecision:
    pool: str
    current: int
    desired: int
    target: int | None  # the count to patch, None: leave it
    reason: str


def decide(*, pool: AgentPool, current: int, desired: int, now: datetime) -> tuple[ScaleDecision, datetime | None]:
    """What to do with one pool, and the new ``scale_down_pending_since``."""
    if desired > current:
        return ScaleDecision(pool.name, current, desired, desired, "scale up"), None
    if desired == current:
        return ScaleDecision(pool.name, current, desired, None, "steady"), None
    since = pool.scale_down_pending_since or now
    if now - since >= timedelta(seconds=pool.scale_down_delay_seconds):
        return ScaleDecision(pool.name, current, desired, desired, "scale down"), None
    return ScaleDecision(pool.name, current, desired, None, "scale down pending"), since


def workload(pool_ids: list[int]) -> dict[int, tuple[int, int]]:
    """(queued, running) per pool: pending tasks and dispatched or running ones."""
    rows = (
        Task.objects.unfinished()
        .filter(workspace__pool_id__in=pool_ids)
        .values("workspace__pool_id")
        .annotate(
            queued=Count("pk", filter=Q(status=Task.Status.PENDING)),
            running=Count("pk", filter=Q(status__in=Task.ACTIVE)),
        )
    )
    return {row["workspace__pool_id"]: (row["queued"], row["running"]) for row in rows}


class ScaleError(Exception):
    """Some pools could not be scaled (the others were); the message names each and why."""


def api_error_text(exc: Exception) -> str:
    """An API error with the server's own explanation (the Status message: who may not do what)."""
    if isinstance(exc, ApiException):
        message = exc.reason or ""
        try:
            status = json.loads(exc.body or "")
            if isinstance(status, dict) and status.get("message"):
                message = status["message"]
        except (TypeError, ValueError):
            pass
        return "HTTP %s %s" % (exc.status, message)
    return str(exc)


def autoscale(*, api: AppsV1Api, now: datetime, failures: list[str] | None = None) -> list[ScaleDecision]:
    """Scale every Kubernetes pool; must run inside a (fenced) transaction.

    A pool whose Deployment cannot be read or patched is skipped and described in ``failures``.
    """
    pools = list(AgentPool.objects.filter(kind=AgentPool.Kind.KUBERNETES).select_for_update().order_by("pk"))
    load = workload([pool.pk for pool in pools])
    decisions = []
    for pool in pools:
        queued, running = load.get(pool.pk, (0, 0))
        desired = desired_replicas(
            queued=queued,
            running=running,
            capacity=pool.agent_capacity,
            minimum=pool.min_replicas,
            maximum=pool.max_replicas,
        )
        try:
            scale: Any = api.read_namespaced_deployment_scale(
                pool.k8s_deployment, pool.k8s_namespace, _request_timeout=DEFAULT_REQUEST_TIMEOUT
            )
            current = int(scale.spec.replicas or 0)
            decision, pending_since = decide(pool=pool, current=current, desired=desired, now=now)
            if decision.target is not None:
                api.patch_namespaced_deployment_scale(
                    pool.k8s_deployment,
                    pool.k8s_namespace,
                    {"spec": {"replicas": decision.target}},
                    _request_timeout=DEFAULT_REQUEST_TIMEOUT,
                )
                pool.scaled_at = now
                logger.info(
                    "pool %s: %s %d -> %d (queued %d, running %d)",
                    pool.name,
                    decision.reason,
                    current,
                    decision.target,
                    queued,
                    running,
                )
        except (ApiException, HTTPError, OSError) as exc:
            # One pool's Deployment missing or the API failing must not stop the others; the next
            # tick tries again.
            text = "pool %s: cannot scale %s/%s: %s" % (
                pool.name,
                pool.k8s_namespace,
                pool.k8s_deployment,
                api_error_text(exc),
            )
            logger.warning("%s", text)
            if failures is not None:
                failures.append(text)
            continue
        pool.desired_replicas, pool.scale_down_pending_since = desired, pending_since
        pool.save(update_fields=["desired_replicas", "scale_down_pending_since", "scaled_at"])
        decisions.append(decision)
    return decisions

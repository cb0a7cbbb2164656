"""The agent autoscaler against the fake Kubernetes API server (harness/fakekube.py)."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from kubernetes.client import AppsV1Api

from apps.agents.autoscaler import autoscale, desired_replicas
from apps.agents.jobs import agent_autoscaler
from apps.agents.models import AgentPool
from apps.coordination.fencing import StaleEpoch, Tick, raise_epoch
from apps.coordination.models import JobRun
from apps.coordination.registry import JobSpec
from apps.coordination.scheduler import TermContext, run_tick
from apps.workspaces.models import Task, Workspace
from harness.fakekube import FakeKube

pytestmark = pytest.mark.django_db


@pytest.fixture
def k8s_pool(db: None) -> AgentPool:
    pool = AgentPool(
        name="k8s",
        kind=AgentPool.Kind.KUBERNETES,
        k8s_namespace="agents",
        k8s_deployment="iacplatform-agent-k8s",
        min_replicas=1,
        max_replicas=5,
        agent_capacity=2,
        scale_down_delay_seconds=300,
    )
    pool.set_new_token()
    pool.save()
    return pool


def queue(pool: AgentPool, *, pending: int, running: int = 0) -> None:
    for i in range(pending + running):
        ws = Workspace.objects.create(name="%s-w%d-%d" % (pool.name, i, Task.objects.count()), pool=pool)
        Task.objects.create(workspace=ws, type="plan", status="pending" if i < pending else "running")


def replicas(fake: FakeKube) -> int:
    deployment = fake.deployment("iacplatform-agent-k8s", "agents")
    assert deployment is not None
    return int(deployment["spec"]["replicas"])


@pytest.mark.parametrize(
    ("queued", "running", "capacity", "minimum", "maximum", "expected"),
    [(0, 0, 1, 0, 3, 0), (0, 0, 1, 1, 3, 1), (3, 0, 2, 0, 9, 2), (3, 2, 2, 0, 9, 3), (100, 0, 1, 0, 4, 4)],
)
def test_desired_is_clamped_ceil_of_work_over_capacity(
    queued: int, running: int, capacity: int, minimum: int, maximum: int, expected: int
) -> None:
    assert desired_replicas(queued=queued, running=running, capacity=capacity, minimum=minimum, maximum=maximum) == (
        expected
    )


def test_scales_up_at_once_and_down_only_after_the_delay(k8s_pool: AgentPool, fakekube: FakeKube) -> None:
    fakekube.add_deployment("iacplatform-agent-k8s", "agents", replicas=1)
    api = AppsV1Api(fakekube.api_client())
    queue(k8s_pool, pending=5, running=2)  # 7 tasks, 2 per agent -> 4
    now = timezone.now()
    [decision] = autoscale(api=api, now=now)
    assert (decision.current, decision.target, decision.reason) == (1, 4, "scale up")
    assert replicas(fakekube) == 4
    patches = [r for r in fakekube.requests if r[0] == "PATCH"]
    assert len(patches) == 1
    # Unchanged: no patch.
    autoscale(api=api, now=now)
    assert len([r for r in fakekube.requests if r[0] == "PATCH"]) == 1
    Task.objects.update(status="succeeded")
    [decision] = autoscale(api=api, now=now + timedelta(seconds=10))
    assert decision.reason == "scale down pending"
    assert replicas(fakekube) == 4
    k8s_pool.refresh_from_db()
    assert k8s_pool.scale_down_pending_since == now + timedelta(seconds=10)
    [decision] = autoscale(api=api, now=now + timedelta(seconds=309))
    assert decision.reason == "scale down pending"
    [decision] = autoscale(api=api, now=now + timedelta(seconds=311))
    assert (decision.target, decision.reason) == (1, "scale down")  # min_replicas
    assert replicas(fakekube) == 1
    k8s_pool.refresh_from_db()
    assert (k8s_pool.desired_replicas, k8s_pool.scale_down_pending_since) == (1, None)


def test_a_renewed_need_cancels_a_pending_scale_down(k8s_pool: AgentPool, fakekube: FakeKube) -> None:
    fakekube.add_deployment("iacplatform-agent-k8s", "agents", replicas=3)
    api = AppsV1Api(fakekube.api_client())
    now = timezone.now()
    autoscale(api=api, now=now)
    queue(k8s_pool, pending=6)
    [decision] = autoscale(api=api, now=now + timedelta(seconds=1))
    assert decision.reason == "steady"
    k8s_pool.refresh_from_db()
    assert k8s_pool.scale_down_pending_since is None


def test_api_errors_and_missing_deployments_skip_only_that_pool(k8s_pool: AgentPool, fakekube: FakeKube) -> None:
    api = AppsV1Api(fakekube.api_client())
    assert autoscale(api=api, now=timezone.now()) == []  # no Deployment: 404, logged, skipped
    fakekube.add_deployment("iacplatform-agent-k8s", "agents", replicas=1)
    queue(k8s_pool, pending=4)
    fakekube.inject(500, method="PATCH")
    assert autoscale(api=api, now=timezone.now()) == []
    assert replicas(fakekube) == 1
    [decision] = autoscale(api=api, now=timezone.now())
    assert decision.target == 2
    assert replicas(fakekube) == 2


def test_the_job_uses_the_kubeconfig_and_a_deposed_leader_patches_nothing(
    k8s_pool: AgentPool, fakekube: FakeKube, tmp_path: Path, settings: Any
) -> None:
    settings.KUBECONFIG = str(fakekube.write_kubeconfig(tmp_path / "kubeconfig"))
    fakekube.add_deployment("iacplatform-agent-k8s", "agents", replicas=1)
    queue(k8s_pool, pending=6)
    raise_epoch(name="lease", epoch=2, holder="new")
    with pytest.raises(StaleEpoch):
        agent_autoscaler(Tick(job="agent_autoscaler", holder="old", lease="lease", epoch=1))
    assert replicas(fakekube) == 1
    agent_autoscaler(Tick(job="agent_autoscaler", holder="new", lease="lease", epoch=2))
    assert replicas(fakekube) == 3


def test_a_tick_whose_scale_calls_are_forbidden_is_recorded_as_an_error(
    k8s_pool: AgentPool, fakekube: FakeKube, tmp_path: Path, settings: Any
) -> None:
    """A Role without deployments/scale patch: the tick is `error` with the server's message, not `ok`."""
    settings.KUBECONFIG = str(fakekube.write_kubeconfig(tmp_path / "kubeconfig"))
    fakekube.add_deployment("iacplatform-agent-k8s", "agents", replicas=1)
    other = AgentPool(
        name="other",
        kind=AgentPool.Kind.KUBERNETES,
        k8s_namespace="agents",
        k8s_deployment="iacplatform-agent-other",
        min_replicas=2,
        max_replicas=5,
        agent_capacity=1,
    )
    other.set_new_token()
    other.save()
    fakekube.add_deployment("iacplatform-agent-other", "agents", replicas=1)
    queue(k8s_pool, pending=6)
    raise_epoch(name="lease", epoch=1, holder="me")
    fakekube.inject(403, method="PATCH", path="iacplatform-agent-k8s", message="deployments.apps is forbidden: nope")
    spec = JobSpec(name="agent_autoscaler", every=5, func=agent_autoscaler)
    context = TermContext(lease="lease", holder="me", epoch=1, is_leader=lambda: True, stop=threading.Event())
    assert run_tick(spec, context) == "error"
    run = JobRun.objects.get(job="agent_autoscaler")
    assert "403" in run.error and "forbidden: nope" in run.error and "pool k8s" in run.error
    # The other pool was still scaled, and that commit stands.
    assert fakekube.deployment("iacplatform-agent-other", "agents")["spec"]["replicas"] == 2  # type: ignore[index]
    assert replicas(fakekube) == 1

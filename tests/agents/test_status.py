"""The agents' clusterstatus section: connected agents per web pod, the others as offline."""

from __future__ import annotations

import pytest

from apps.agents.models import Agent
from apps.coordination.status import cluster_status
from tests.agents.fixtures import Pool

pytestmark = pytest.mark.django_db


def test_agents_section_counts_agents_per_pod_and_those_not_connected(agent_pool: Pool) -> None:
    Agent.objects.create(agent_id="a1", pool=agent_pool.pool, connected_pod="web-1")
    Agent.objects.create(agent_id="a2", pool=agent_pool.pool, connected_pod="web-1")
    Agent.objects.create(agent_id="a3", pool=agent_pool.pool, connected_pod="web-2")
    Agent.objects.create(agent_id="a4", pool=agent_pool.pool)
    Agent.objects.create(agent_id="a5", pool=agent_pool.pool, connected_pod="")
    assert cluster_status()["agents"] == {"per_pod": {"web-1": 2, "web-2": 1}, "offline": 2}

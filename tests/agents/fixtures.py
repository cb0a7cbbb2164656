"""Fixtures shared by the agent and queue tests: a pool with its raw token, a workspace in it."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from apps.agents.models import AgentPool
from apps.workspaces.models import Workspace

OUTPUTS_ONLY = {
    "main.tf": 'variable "name" {\n  default = "x"\n}\noutput "greeting" {\n  value = "hi ${var.name}"\n}\n'
}


@dataclass
class Pool:
    pool: AgentPool
    token: str
    # agent id -> the credential its registration returned (tests reconnect with it).
    credentials: dict[str, str] = field(default_factory=dict)


@pytest.fixture
def agent_pool(db: None) -> Pool:
    pool = AgentPool(name="pool-a")
    token = pool.set_new_token()
    pool.save()
    return Pool(pool=pool, token=token)


@pytest.fixture
def workspace(agent_pool: Pool) -> Workspace:
    return Workspace.objects.create(name="ws-a", pool=agent_pool.pool, terraform_files=OUTPUTS_ONLY)
